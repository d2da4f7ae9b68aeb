"""Speech-to-speech translation (S2ST) fine-tuning documents and their loss-start sidecar.

The document is the authors' CVSS "method1" format (potsawee/tokenize-audio
``cvss-mimi/combine_cvss_mimi.py`` lines 66-72)::

    <bos><audio_start>SRC<audio_end><text_start><language>xx</language>src_text<text_end>
    <text_start><language>en</language>tgt_text<text_end><audio_start>TGT<audio_end><eos>

``<language>xx</language>`` and the text are ONE string per text span, tokenized together, as the
authors' f-string is before their Hugging Face tokenizer sees it (line 69-70); the tags are plain
text, not special tokens.

Where the instruction ends (the loss start) is our decision.  The authors train with Levanter's
``ChatLmDatasetFormat(mask_user_turns=True)`` (marin ``experiments/audio/tokenize_sft_cvss.py``:
``<|begin_of_text|>instruction+response<|end_of_text|>``, "Only the response portion (+
<|end_of_text|> token) is used for training loss"), over the rma9248/cvss_method1 instruction /
response columns, which are not published as code.  We choose:

* ``prompt_end="source_audio"`` (default): the instruction is ``<bos><audio_start>SRC<audio_end>``
  (the user turn is the source speech, as in an S2ST request); the response, which is trained, is
  everything from the source text span's ``<text_start>`` to ``<eos>`` inclusive, so the model
  learns to transcribe, translate and speak (the cascade inside one sequence);
* ``prompt_end="source_text"``: the instruction also holds the source text span; the response
  starts at the target text span's ``<text_start>``.

Both boundaries sit on marker tokens, so they are exact whatever the BPE does: a boundary right
after ``</language>`` would fall inside a BPE pre-token (Llama-3's regex joins ``>`` with the next
word).  The generator's S2ST prompt is the document prefix up to the loss start
(:func:`s2st_prompt_ids`).

The trained targets are ``ids[loss_start:]``: the loss at input position ``t - 1`` (predicting
``ids[t]``) counts iff ``t >= loss_start``.  Shards carry one loss start per document in the
sidecar ``PREFIX.loss_start.npy`` (int64, ``np.save``; read with ``allow_pickle=False``), whose
size and sha256 are in the stats' ``files`` identity.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from megatron_soda.format.layout import TokenLayout
from megatron_soda.format.shard_verify import LOSS_START_SUFFIX, ShardError
from megatron_soda.format.shards import read_index

PROMPT_ENDS = ("source_audio", "source_text")
DEFAULT_PROMPT_END = "source_audio"
SFT_FORMAT = "s2st"

__all__ = [
    "DEFAULT_PROMPT_END",
    "LOSS_START_SUFFIX",
    "PROMPT_ENDS",
    "SFT_FORMAT",
    "is_sft_shard",
    "language_tag",
    "read_loss_starts",
    "s2st_document",
    "s2st_ids",
    "s2st_prompt_ids",
    "save_loss_starts",
    "text_span",
    "write_loss_starts",
]


class _TextTokenizer(Protocol):  # what SodaTokenizer offers (format/ sits below tokenizer/)
    layout: TokenLayout

    def encode_text(self, text: str) -> list[int]: ...


def language_tag(lang: str) -> str:
    """``<language>xx</language>`` (plain text, combine_cvss_mimi.py line 69)."""
    return f"<language>{lang}</language>"


def text_span(lang: str, text: str) -> str:
    """The one string a text span's ids are tokenized from: the language tag and the text."""
    return language_tag(lang) + text


def _check_prompt_end(prompt_end: str) -> None:
    if prompt_end not in PROMPT_ENDS:
        raise ValueError(f"unknown prompt end {prompt_end!r}; expected one of {PROMPT_ENDS}")


def _audio_ids(layout: TokenLayout, codes: np.ndarray, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0 or codes.shape[0] < layout.num_codebooks:
        raise ValueError(
            f"{what} codes must be [>= {layout.num_codebooks} codebooks, frames > 0], got shape "
            f"{codes.shape}"
        )
    return layout.codes_to_ids(codes[: layout.num_codebooks]).astype(np.int64).reshape(-1)


def s2st_ids(
    layout: TokenLayout,
    src_codes: np.ndarray,
    src_span: np.ndarray | list[int],
    tgt_span: np.ndarray | list[int],
    tgt_codes: np.ndarray,
    prompt_end: str = DEFAULT_PROMPT_END,
) -> tuple[np.ndarray, int]:
    """The document from already tokenized text spans (ids of :func:`text_span`): what the
    preprocessing token stage calls with batch-tokenized spans.  Returns ``(ids int64, loss_start)``."""
    _check_prompt_end(prompt_end)
    ts, te, a_s, a_e = layout.marker_ids
    src = _audio_ids(layout, src_codes, "source")
    tgt = _audio_ids(layout, tgt_codes, "target")
    src_span = np.asarray(src_span, dtype=np.int64).reshape(-1)
    tgt_span = np.asarray(tgt_span, dtype=np.int64).reshape(-1)
    parts = [
        [layout.bos_id, a_s], src, [a_e],
        [ts], src_span, [te],
        [ts], tgt_span, [te],
        [a_s], tgt, [a_e, layout.eos_id],
    ]
    ids = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    loss_start = 3 + src.size  # the source text span's <text_start>
    if prompt_end == "source_text":
        loss_start += src_span.size + 2  # the target text span's <text_start>
    return ids, loss_start


def s2st_document(
    tok: _TextTokenizer,
    src_codes: np.ndarray,
    src_lang: str,
    src_text: str,
    tgt_text: str,
    tgt_codes: np.ndarray,
    tgt_lang: str = "en",
    prompt_end: str = DEFAULT_PROMPT_END,
) -> tuple[np.ndarray, int]:
    """One S2ST document (int64 ids) and its loss start; codes are ``[codebooks, frames]`` as
    :class:`megatron_soda.audio.codec.MimiCodec` encodes them."""
    return s2st_ids(
        tok.layout,
        src_codes,
        tok.encode_text(text_span(src_lang, src_text)),
        tok.encode_text(text_span(tgt_lang, tgt_text)),
        tgt_codes,
        prompt_end,
    )


def s2st_prompt_ids(
    tok: _TextTokenizer,
    src_codes: np.ndarray,
    src_lang: str,
    src_text: str | None = None,
    prompt_end: str = DEFAULT_PROMPT_END,
) -> np.ndarray:
    """The instruction of :func:`s2st_document` (``ids[:loss_start]``), for inference:
    ``<bos><audio_start>SRC<audio_end>`` by default; with ``prompt_end="source_text"`` also the
    source text span (``src_text`` required)."""
    _check_prompt_end(prompt_end)
    lay = tok.layout
    src = _audio_ids(lay, src_codes, "source")
    parts = [[lay.bos_id, lay.audio_start_id], src, [lay.audio_end_id]]
    if prompt_end == "source_text":
        if src_text is None:
            raise ValueError("prompt_end='source_text' needs the source text")
        parts += [[lay.text_start_id], tok.encode_text(text_span(src_lang, src_text)),
                  [lay.text_end_id]]
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


# ------------------------------------------------------------------------------------ sidecar


def _as_starts(starts: np.ndarray | list[int]) -> np.ndarray:
    arr = np.asarray(starts)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"loss starts must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def save_loss_starts(path: str, starts: np.ndarray | list[int]) -> None:
    """``np.save`` the int64 loss starts to exactly ``path`` (no ``.npy`` appended) and flush it
    to disk: the shard writer's temporary, renamed with the shards."""
    arr = _as_starts(starts)
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_loss_starts(prefix: str, starts: np.ndarray | list[int]) -> None:
    """Write ``PREFIX.loss_start.npy`` atomically (a temporary renamed into place)."""
    path = prefix + LOSS_START_SUFFIX
    tmp = path + ".tmp"
    save_loss_starts(tmp, starts)
    os.replace(tmp, path)


def is_sft_shard(prefix: str) -> bool:
    """Whether a shard carries a loss-start sidecar (is an SFT shard)."""
    return os.path.isfile(prefix + LOSS_START_SUFFIX)


def read_loss_starts(prefix: str) -> np.ndarray:
    """``PREFIX.loss_start.npy`` (int64 ``[documents]``), validated against ``PREFIX.idx``: a 1-D
    integer array, one start per document, each ``1 <= start < document length``.  Problems are
    :class:`ShardError` naming the file."""
    path = prefix + LOSS_START_SUFFIX
    if not os.path.isfile(path):
        raise ShardError(f"{path}: missing (an SFT shard needs its loss-start sidecar)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ShardError(f"{path}: not a numpy .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ShardError(f"{path}: expected a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    index = read_index(prefix + ".idx")
    docs = np.asarray(index.document_indices, dtype=np.int64)
    if arr.size != len(docs) - 1:
        raise ShardError(f"{path}: holds {arr.size} loss starts, {prefix}.idx holds {len(docs) - 1} "
                         "documents")
    seq_ends = np.concatenate([[0], np.cumsum(np.asarray(index.lengths, dtype=np.int64))])
    doc_lengths = seq_ends[docs[1:]] - seq_ends[docs[:-1]]
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 1) | (arr >= doc_lengths))
    if bad.size:
        i = int(bad[0])
        raise ShardError(f"{path}: document {i} has loss start {int(arr[i])}, outside 1..{int(doc_lengths[i]) - 1} "
                         f"(its length is {int(doc_lengths[i])})")
    return arr
