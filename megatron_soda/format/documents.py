"""SODA's documents (SODA_SPEC section 3), built from token ids and codec codes.

* text-first:  <bos> (<text_start> T <text_end> <audio_start> A <audio_end>)* <eos>
* audio-first: <bos> (<audio_start> A <audio_end> <text_start> T <text_end>)* <eos>
* audio-only:  <bos> (<audio_start> A <audio_end>)* <eos>
* text-only documents (web text): <bos> T <eos>, no text markers

``both`` yields the text-first and the audio-first variant of every recording, as SODA
trains on both.  A is the utterance's codes as audio ids (:meth:`TokenLayout.codes_to_ids`:
frame-major, codebook-offset).  These are the only document builders: the token stage of
preprocessing writes what they return.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_soda.format.layout import TokenLayout

INTERLEAVE_MODES = ("text-first", "audio-first", "both", "audio-only")
VARIANTS = ("text-first", "audio-first", "audio-only")


def variants(mode: str) -> tuple[str, ...]:
    """The document variants an ``--interleave`` mode writes per recording."""
    if mode not in INTERLEAVE_MODES:
        raise ValueError(f"unknown interleave mode {mode!r}; expected one of {INTERLEAVE_MODES}")
    return ("text-first", "audio-first") if mode == "both" else (mode,)


def _check(texts: Sequence, codes: Sequence[np.ndarray], variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown document variant {variant!r}")
    if len(texts) != len(codes):
        raise ValueError(f"{len(texts)} transcripts for {len(codes)} audio spans")


def interleaved_document(
    layout: TokenLayout,
    texts: Sequence[np.ndarray | Sequence[int]],
    codes: Sequence[np.ndarray],
    variant: str,
) -> np.ndarray:
    """One recording's document (int32) from its utterances' text ids and codes
    ``[>= num_codebooks, frames]`` (the first ``num_codebooks`` rows are used).

    Filled into one preallocated array straight from the (int16) codes: offset, frame-major
    transpose and int32 cast are one numpy pass per audio span."""
    _check(texts, codes, variant)
    n_cb = layout.num_codebooks
    offsets = layout.audio_offset + np.arange(n_cb, dtype=np.int32) * layout.codebook_size
    ts, te, a_s, a_e = layout.marker_ids
    with_text = variant != "audio-only"
    total = 2 + sum(c.shape[1] * n_cb + 2 for c in codes)
    if with_text:
        total += sum(len(t) + 2 for t in texts)
    doc = np.empty(total, np.int32)
    doc[0] = layout.bos_id
    pos = 1

    def put_text(pos: int, t: np.ndarray | Sequence[int]) -> int:
        doc[pos] = ts
        doc[pos + 1 : pos + 1 + len(t)] = t
        doc[pos + 1 + len(t)] = te
        return pos + len(t) + 2

    def put_audio(pos: int, c: np.ndarray) -> int:
        n = c.shape[1] * n_cb
        doc[pos] = a_s
        np.add(c[:n_cb].T, offsets, out=doc[pos + 1 : pos + 1 + n].reshape(-1, n_cb))
        doc[pos + 1 + n] = a_e
        return pos + n + 2

    for t, c in zip(texts, codes):
        if variant == "text-first":
            pos = put_audio(put_text(pos, t), c)
        elif variant == "audio-first":
            pos = put_text(put_audio(pos, c), t)
        else:
            pos = put_audio(pos, c)
    doc[pos] = layout.eos_id
    return doc


def interleaved_kind_counts(
    layout: TokenLayout,
    texts: Sequence[np.ndarray | Sequence[int]],
    codes: Sequence[np.ndarray],
    variant: str,
) -> dict[str, int]:
    """``layout.count_kinds`` of :func:`interleaved_document`, by arithmetic instead of a scan
    (base-tokenizer text ids never collide with markers, BOS/EOS or audio ids)."""
    _check(texts, codes, variant)
    frames = sum(c.shape[1] for c in codes)
    audio_only = variant == "audio-only"
    return {
        "text": 0 if audio_only else sum(len(t) for t in texts),
        "semantic": frames,
        "acoustic": frames * (layout.num_codebooks - 1),
        "markers": 2 + len(codes) * (2 if audio_only else 4),
    }


def text_document(layout: TokenLayout, text: Sequence[int]) -> np.ndarray:
    """``<bos> text <eos>`` (int32)."""
    doc = np.empty(len(text) + 2, np.int32)
    doc[0], doc[-1] = layout.bos_id, layout.eos_id
    doc[1:-1] = text
    return doc
