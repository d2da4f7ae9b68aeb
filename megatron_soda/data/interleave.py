"""SODA's document formats (SODA_SPEC section 3), built from token ids.

* text-first:  <bos> (<text_start> T <text_end> <audio_start> A <audio_end>)* <eos>
* audio-first: <bos> (<audio_start> A <audio_end> <text_start> T <text_end>)* <eos>
* audio-only:  <bos> (<audio_start> A <audio_end>)* <eos>
* text-only documents (web text): <bos> T <eos>, no text markers

``both`` yields the text-first and the audio-first variant of every recording, as SODA
trains on both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_soda.tokenizer.layout import TokenLayout

INTERLEAVE_MODES = ("text-first", "audio-first", "both", "audio-only")


def variants(mode: str) -> tuple[str, ...]:
    if mode not in INTERLEAVE_MODES:
        raise ValueError(f"unknown interleave mode {mode!r}; expected one of {INTERLEAVE_MODES}")
    return ("text-first", "audio-first") if mode == "both" else (mode,)


def interleaved_document(
    layout: TokenLayout,
    texts: Sequence[Sequence[int]],
    audios: Sequence[np.ndarray],
    variant: str,
) -> np.ndarray:
    """One document from per-utterance text ids and audio ids (already offset)."""
    if len(texts) != len(audios):
        raise ValueError(f"{len(texts)} transcripts for {len(audios)} audio spans")
    ts, te, as_, ae = layout.marker_ids
    parts: list[np.ndarray | list[int]] = [[layout.bos_id]]
    for text, audio in zip(texts, audios):
        text_span = [[ts], text, [te]]
        audio_span = [[as_], audio, [ae]]
        if variant == "text-first":
            parts += text_span + audio_span
        elif variant == "audio-first":
            parts += audio_span + text_span
        elif variant == "audio-only":
            parts += audio_span
        else:
            raise ValueError(f"unknown document variant {variant!r}")
    parts.append([layout.eos_id])
    return np.concatenate([np.asarray(p, dtype=np.int32) for p in parts])


def text_document(layout: TokenLayout, text: Sequence[int]) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray([layout.bos_id], np.int32),
            np.asarray(text, np.int32),
            np.asarray([layout.eos_id], np.int32),
        ]
    )
