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
from megatron_soda.format.shard_verify import (
    ShardError,
    check_index,
    check_stats_current,
    read_stats,
    scan_tokens,
)

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
    offset = _HEADER.size  # memory-mapped: the checks read a terabyte shard's index in chunks

    def array(dtype: type, count: int, at: int) -> np.ndarray:
        return np.memmap(idx_path, dtype=dtype, mode="r", offset=at, shape=(count,))

    lengths = array(np.int32, n_seq, offset)
    pointers = array(np.int64, n_seq, offset + 4 * n_seq)
    docs = array(np.int64, n_doc, offset + 12 * n_seq)
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
    stats = read_stats(path)
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
    loss_starts: bool = False  # an SFT shard: PREFIX.loss_start.npy checked (format/sft.py)


def validate_shard(
    prefix: str,
    layout: TokenLayout | None = None,
    *,
    scan_ids: bool = True,
    max_scan_gib: float | None = None,
    check_boundaries: bool = False,
    allow_empty: bool = True,
    check_stats: bool = False,
) -> ShardSummary:
    """Check a shard; raise :class:`ShardError` naming the file at the first problem.

    Always: both files exist; the ``.idx`` header, length, every sequence pointer and the
    document index are consistent; the ``.bin`` holds exactly the tokens the index describes (a
    truncated copy is caught); an SFT shard's ``PREFIX.loss_start.npy`` (present, or required by
    the stats' ``sft`` record) holds one valid loss start per document.  ``check_stats``: ``PREFIX.stats.json`` (if any) describes these
    shards, not ones they replaced (:func:`~megatron_soda.format.shard_verify.check_stats_current`).  With ``layout``: the layout recorded in ``PREFIX.stats.json`` (if any) is this
    one.  ``allow_empty=False`` refuses a shard with no documents.  ``scan_ids``: no id is
    negative or (with ``layout``) outside its vocabulary; beyond ``max_scan_gib`` of tokens only
    evenly spread blocks (head and tail included) are scanned.  ``check_boundaries`` (with
    ``layout``): every document starts with BOS, ends with EOS and holds neither inside (in the
    blocks scanned).  Blocks are bounded; :func:`~megatron_soda.format.shard_verify.scan_tokens`
    says how long the scan takes per GB."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for p in (idx_path, bin_path):
        if not os.path.isfile(p):
            raise ShardError(
                f"{p}: missing (shard {prefix!r}: expected {prefix}.bin and {prefix}.idx, as "
                "written by tools/preprocess)"
            )
    index = read_index(idx_path)
    tokens = check_index(idx_path, bin_path, index)
    if check_stats:
        check_stats_current(prefix, len(index.document_indices) - 1, tokens)
    recorded = shard_layout(prefix) if layout is not None else None
    if recorded is not None and (why := layout_mismatch(recorded, layout, "shard")):
        raise ShardError(
            f"{prefix}.stats.json: {why} (the shard was preprocessed with another --tokenizer or "
            "--num-codebooks)"
        )
    sft = _check_loss_starts(prefix)
    if not allow_empty and len(index.lengths) == 0:
        raise ShardError(f"{idx_path}: the shard holds no documents")
    lo = hi = scanned = 0
    if scan_ids or (check_boundaries and layout is not None):
        marks = (layout.bos_id, layout.eos_id) if check_boundaries and layout is not None else (None, None)
        vocab = layout.vocab_size if scan_ids and layout is not None else None
        lo, hi, scanned = scan_tokens(bin_path, index, tokens, vocab_size=vocab, bos=marks[0],
                                      eos=marks[1], block=_SCAN_BLOCK,
                                      max_scan_gib=max_scan_gib if scan_ids else None)
    return ShardSummary(prefix, len(index.document_indices) - 1, len(index.lengths), tokens, lo, hi,
                        scanned, sft)


def _check_loss_starts(prefix: str) -> bool:
    """An SFT shard's sidecar, when there is one (or its stats say there must be): one valid loss
    start per document.  Returns whether the shard is an SFT shard."""
    from megatron_soda.format.sft import LOSS_START_SUFFIX, read_loss_starts  # sft reads indexes

    stats_path = prefix + ".stats.json"
    wants = os.path.isfile(stats_path) and read_stats(stats_path).get("sft") is not None
    if not wants and not os.path.isfile(prefix + LOSS_START_SUFFIX):
        return False
    read_loss_starts(prefix)  # raises ShardError naming the sidecar when missing or invalid
    return True


def read_document(prefix: str, index: int) -> np.ndarray:
    """Document ``index`` of a shard (int64, a copy), one sequence per document."""
    idx = read_index(prefix + ".idx")
    if not 0 <= index < len(idx.lengths):
        raise IndexError(f"{prefix}: document {index} out of range 0..{len(idx.lengths) - 1}")
    count, offset = int(idx.lengths[index]), int(idx.pointers[index])
    return np.fromfile(prefix + ".bin", dtype=idx.dtype, count=count, offset=offset).astype(
        np.int64
    )
