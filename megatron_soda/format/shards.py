"""Preprocessed shards, read and checked: the one validator of the shard format.

A shard is megatron's IndexedDataset pair ``PREFIX.bin``/``PREFIX.idx`` (int32 tokens, one
sequence per document), with ``PREFIX.stats.json`` recording the token layout it was made with.
Read here without megatron (the ``.idx`` format is a header and three arrays).  Preprocessing
(merge), the trainer and ``inspect_shards.py`` all call :func:`validate_shard`; every problem is
a :class:`ShardError` whose message starts with the file it is about.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from megatron_soda.format.layout import TokenLayout, layout_mismatch

IDX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, documents
# The token dtype codes of the header (megatron.core.datasets.indexed_dataset.DType).
_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_SCAN_BLOCK = 1 << 24  # tokens per block of the id scan


class ShardError(ValueError):
    """A shard that is missing, truncated, inconsistent, or made for another tokenizer."""


class ShardIndex(NamedTuple):
    """The contents of a ``.idx``: token dtype, per-sequence lengths and byte offsets into the
    ``.bin``, and the document boundaries (sequence indices, first 0, last the sequence count)."""

    dtype: np.dtype
    lengths: np.ndarray
    pointers: np.ndarray
    document_indices: np.ndarray


def read_index(idx_path: str) -> ShardIndex:
    """Read a Megatron ``.idx``, after checking its header and that the file is as long as the
    header promises."""
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size or head[:9] != IDX_MAGIC:
        raise ShardError(f"{idx_path}: not a Megatron index file (bad or truncated header)")
    _, version, code, n_seq, n_doc = _HEADER.unpack(head)
    if version != 1 or code not in _DTYPES:
        raise ShardError(f"{idx_path}: unsupported index version {version} / dtype code {code}")
    need = _HEADER.size + n_seq * (4 + 8) + n_doc * 8
    if size < need:
        raise ShardError(
            f"{idx_path}: truncated index ({size} bytes, header promises {need} for {n_seq} sequences)"
        )
    offset = _HEADER.size
    lengths = np.fromfile(idx_path, dtype=np.int32, count=n_seq, offset=offset)
    pointers = np.fromfile(idx_path, dtype=np.int64, count=n_seq, offset=offset + 4 * n_seq)
    docs = np.fromfile(idx_path, dtype=np.int64, count=n_doc, offset=offset + 12 * n_seq)
    return ShardIndex(np.dtype(_DTYPES[code]), lengths, pointers, docs)


def shard_layout(prefix: str) -> TokenLayout | None:
    """The token layout a shard was made with (``PREFIX.stats.json``); None when no stats file
    (or no layout in it) says."""
    path = prefix + ".stats.json"
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            layout = json.load(f).get("layout")
        return None if layout is None else TokenLayout.from_dict(layout)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShardError(f"{path}: unreadable token layout ({type(e).__name__}: {e})") from None


# What PREFIX.stats.json says about how a shard's tokens were made (a blend must agree on it).
PROVENANCE_FIELDS = ("codec_fingerprint", "codec", "codec_random", "num_codebooks", "layout")


def shard_provenance(prefix: str) -> dict:
    """The :data:`PROVENANCE_FIELDS` recorded in ``PREFIX.stats.json`` (those present; empty
    without a stats file).  Text shards record no codec (``codec`` None); shards made before
    codecs were fingerprinted record none either: unknown, not different."""
    path = prefix + ".stats.json"
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except ValueError as e:
        raise ShardError(f"{path}: not JSON ({e})") from None
    if not isinstance(stats, dict):
        raise ShardError(f"{path}: not a JSON object")
    return {k: stats[k] for k in PROVENANCE_FIELDS if stats.get(k) is not None}


@dataclass(frozen=True)
class ShardSummary:
    prefix: str
    documents: int
    sequences: int
    tokens: int
    min_id: int  # over the tokens scanned (0 when none was)
    max_id: int
    scanned: int  # tokens whose ids were checked


def validate_shard(
    prefix: str,
    layout: TokenLayout | None = None,
    *,
    scan_ids: bool = True,
    max_scan_gib: float | None = None,
    check_boundaries: bool = False,
    allow_empty: bool = True,
) -> ShardSummary:
    """Check a shard; raise :class:`ShardError` naming the file at the first problem.

    Always: both files exist; the ``.idx`` header, length, sequence pointers and document index
    are consistent; the ``.bin`` holds exactly the tokens the index describes (a truncated copy
    is caught).  With ``layout``: the layout recorded in ``PREFIX.stats.json`` (if any) is this
    one.  ``allow_empty=False`` refuses a shard with no documents.  ``scan_ids``: no id is
    negative or (with ``layout``) outside its vocabulary; beyond ``max_scan_gib`` of tokens only
    evenly spread blocks (head and tail included) are scanned.  ``check_boundaries`` (with
    ``layout``): every document starts with BOS and ends with EOS."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for p in (idx_path, bin_path):
        if not os.path.isfile(p):
            raise ShardError(
                f"{p}: missing (shard {prefix!r}: expected {prefix}.bin and {prefix}.idx, as "
                "written by tools/preprocess)"
            )
    index = read_index(idx_path)
    itemsize = index.dtype.itemsize
    lengths = index.lengths.astype(np.int64)
    tokens = int(lengths.sum())
    expected, actual = tokens * itemsize, os.path.getsize(bin_path)
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its index"
        raise ShardError(f"{bin_path}: {what} ({actual} bytes, {idx_path} describes {expected})")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    if (index.pointers != starts * itemsize).any():
        raise ShardError(f"{idx_path}: sequence pointers do not match the sequence lengths")
    docs = index.document_indices
    if len(docs) == 0 or docs[0] != 0 or (np.diff(docs) < 0).any() or docs[-1] != len(lengths):
        raise ShardError(f"{idx_path}: inconsistent document index")
    recorded = shard_layout(prefix) if layout is not None else None
    if recorded is not None and (why := layout_mismatch(recorded, layout, "shard")):
        raise ShardError(
            f"{prefix}.stats.json: {why} (the shard was preprocessed with another --tokenizer or "
            "--num-codebooks)"
        )
    if not allow_empty and len(lengths) == 0:
        raise ShardError(f"{idx_path}: the shard holds no documents")
    lo = hi = scanned = 0
    if tokens and (scan_ids or check_boundaries):
        data = np.memmap(bin_path, dtype=index.dtype, mode="r")
        if scan_ids:
            vocab = layout.vocab_size if layout is not None else None
            lo, hi, scanned = _scan_ids(bin_path, data, vocab, max_scan_gib)
        if check_boundaries and layout is not None:
            _check_boundaries(bin_path, data, starts, lengths, layout)
    return ShardSummary(prefix, len(docs) - 1, len(lengths), tokens, lo, hi, scanned)


def _scan_ids(
    bin_path: str, data: np.ndarray, vocab_size: int | None, max_scan_gib: float | None
) -> tuple[int, int, int]:
    """(min, max, count) of the ids scanned, in blocks; raises at the first id out of range."""
    n = len(data)
    if max_scan_gib is None or n * data.itemsize <= max_scan_gib * (1 << 30):
        starts = range(0, n, _SCAN_BLOCK)
    else:  # sample: head, tail and evenly spread blocks up to the byte budget
        k = max(2, int(max_scan_gib * (1 << 30) // (_SCAN_BLOCK * data.itemsize)))
        starts = sorted({int(x) for x in np.linspace(0, max(n - _SCAN_BLOCK, 0), k)})
    lo, hi, scanned = None, None, 0
    for s in starts:
        block = np.asarray(data[s : s + _SCAN_BLOCK])
        b_lo, b_hi = int(block.min()), int(block.max())
        bad = b_lo if b_lo < 0 else b_hi if vocab_size is not None and b_hi >= vocab_size else None
        if bad is not None:
            pos = s + int(np.flatnonzero(block == bad)[0])
            vocab = f"[0, {vocab_size})" if vocab_size is not None else "(ids are >= 0)"
            raise ShardError(
                f"{bin_path}: token id {bad} at position {pos} is outside the vocabulary {vocab} "
                "(shard made with another tokenizer or --num-codebooks?)"
            )
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
        scanned += block.size
    return (lo, hi, scanned) if lo is not None else (0, 0, 0)


def _check_boundaries(
    bin_path: str, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, layout: TokenLayout
) -> None:
    for what, where, want in (
        ("start with BOS", starts, layout.bos_id),
        ("end with EOS", starts + lengths - 1, layout.eos_id),
    ):
        wrong = np.flatnonzero(data[where] != want)
        if wrong.size:
            raise ShardError(f"{bin_path}: document {int(wrong[0])} does not {what} {want}")


def read_document(prefix: str, index: int) -> np.ndarray:
    """Document ``index`` of a shard (int64, a copy), one sequence per document."""
    idx = read_index(prefix + ".idx")
    if not 0 <= index < len(idx.lengths):
        raise IndexError(f"{prefix}: document {index} out of range 0..{len(idx.lengths) - 1}")
    count, offset = int(idx.lengths[index]), int(idx.pointers[index])
    return np.fromfile(prefix + ".bin", dtype=idx.dtype, count=count, offset=offset).astype(
        np.int64
    )
