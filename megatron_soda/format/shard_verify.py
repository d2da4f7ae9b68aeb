"""The shard checks behind :func:`megatron_soda.format.validate_shard`, each cheap and vectorised:

* :func:`check_index`: every ``.idx`` entry (not only the first and last pointer) agrees with the
  sequence lengths, the ``.bin`` size and the document index, in chunks of the memory-mapped
  index, naming the first bad sequence;
* :func:`scan_tokens`: one pass over the ``.bin`` in bounded blocks checks the id range and, with
  BOS/EOS ids, that every document starts with BOS, ends with EOS and holds neither inside (an
  EOS inside a document would silently split it: the trainer's masks are derived from EOS);
* :func:`check_stats_current`: ``PREFIX.stats.json`` describes these shards, not older ones.

Every problem is a :class:`ShardError` whose message starts with the file it is about.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any

import numpy as np

_INDEX_CHUNK = 1 << 22  # index entries per chunk of the index checks (~100 MB of temporaries)


class ShardError(ValueError):
    """A shard that is missing, truncated, inconsistent, or made for another tokenizer."""


def check_index(idx_path: str, bin_path: str, index: Any) -> int:
    """Check a read ``.idx`` (a :class:`~megatron_soda.format.shards.ShardIndex`) against itself
    and the ``.bin``; returns the number of tokens.  Lengths are non-negative, each pointer is
    the byte offset its predecessors' lengths give, the ``.bin`` holds exactly those tokens, and
    the document index runs from 0 to the sequence count without going back."""
    itemsize = index.dtype.itemsize
    n = len(index.lengths)
    tokens = 0  # tokens before the current chunk
    for s in range(0, n, _INDEX_CHUNK):
        lengths = np.asarray(index.lengths[s : s + _INDEX_CHUNK], dtype=np.int64)
        neg = np.flatnonzero(lengths < 0)
        if neg.size:
            i = int(neg[0])
            raise ShardError(f"{idx_path}: sequence {s + i} has a negative length {int(lengths[i])}")
        ends = tokens + np.cumsum(lengths)
        expected = (ends - lengths) * itemsize
        pointers = np.asarray(index.pointers[s : s + _INDEX_CHUNK])
        bad = np.flatnonzero(pointers != expected)
        if bad.size:
            i = int(bad[0])
            raise ShardError(
                f"{idx_path}: sequence pointers do not match the sequence lengths: sequence {s + i} "
                f"points at byte {int(pointers[i])}, the lengths before it place it at byte "
                f"{int(expected[i])}"
            )
        tokens = int(ends[-1])
    expected_bytes, actual = tokens * itemsize, os.path.getsize(bin_path)
    if actual != expected_bytes:
        what = "truncated" if actual < expected_bytes else "longer than its index"
        raise ShardError(f"{bin_path}: {what} ({actual} bytes, {idx_path} describes {expected_bytes})")
    _check_document_index(idx_path, index.document_indices, n)
    return tokens


def _check_document_index(idx_path: str, docs: np.ndarray, n: int) -> None:
    bad = "inconsistent document index"
    if len(docs) == 0:
        raise ShardError(f"{idx_path}: {bad}: it is empty (it must hold at least 0)")
    if docs[0] != 0:
        raise ShardError(f"{idx_path}: {bad}: entry 0 is {int(docs[0])}, not 0")
    for s in range(0, len(docs) - 1, _INDEX_CHUNK):
        chunk = np.asarray(docs[s : s + _INDEX_CHUNK + 1])
        back = np.flatnonzero(np.diff(chunk) < 0)
        if back.size:
            i = s + int(back[0]) + 1
            raise ShardError(f"{idx_path}: {bad}: entry {i} ({int(docs[i])}) is below entry {i - 1} "
                             f"({int(docs[i - 1])})")
    if docs[-1] != n:
        raise ShardError(f"{idx_path}: {bad}: its last entry is {int(docs[-1])}, the index holds {n} "
                         "sequences")


def scan_tokens(
    bin_path: str,
    index: Any,
    tokens: int,
    *,
    vocab_size: int | None,
    bos: int | None = None,
    eos: int | None = None,
    block: int = 1 << 24,
    max_scan_gib: float | None = None,
) -> tuple[int, int, int]:
    """(min, max, count) of the ids scanned; raises at the first block with an id outside
    ``[0, vocab_size)`` (negative ids always), or with ``bos``/``eos`` given, a document that does
    not start with BOS or end with EOS, an empty one, or a BOS/EOS inside one.

    Reads ``block`` tokens at a time from the memory-mapped ``.bin`` (64 MiB of int32 by default,
    plus a few boolean temporaries), so memory stays bounded whatever the shard's size.  Beyond
    ``max_scan_gib`` only evenly spread blocks (head and tail included) are scanned, and only the
    documents that start or end in them are checked.  Cost, measured on a 0.54 GB int32 shard of
    ~2,000-token documents in the page cache (one core of a shared 2-core VM): about 0.1 s per
    GB for the id range alone, 0.35 s per GB with the BOS/EOS checks; a shard not in the page
    cache adds the time to read it (1 s per GB at 1 GB/s).  :func:`check_index` takes about
    0.2 s per 10 million sequences."""
    if tokens == 0:
        return 0, 0, 0
    data = np.memmap(bin_path, dtype=index.dtype, mode="r", shape=(tokens,))
    itemsize = data.itemsize
    if max_scan_gib is None or tokens * itemsize <= max_scan_gib * (1 << 30):
        starts = range(0, tokens, block)
    else:  # sample: head, tail and evenly spread blocks up to the byte budget
        k = max(2, int(max_scan_gib * (1 << 30) // (block * itemsize)))
        starts = sorted({int(x) for x in np.linspace(0, max(tokens - block, 0), k)})
    boundaries = bos is not None and eos is not None
    if boundaries:
        _refuse_empty_documents(bin_path, index.lengths)
    lo, hi, scanned = None, None, 0
    for s in starts:
        arr = np.asarray(data[s : s + block])
        b_lo, b_hi = int(arr.min()), int(arr.max())
        bad = b_lo if b_lo < 0 else b_hi if vocab_size is not None and b_hi >= vocab_size else None
        if bad is not None:
            pos = s + int(np.flatnonzero(arr == bad)[0])
            vocab = f"[0, {vocab_size})" if vocab_size is not None else "(ids are >= 0)"
            raise ShardError(
                f"{bin_path}: token id {bad} at position {pos} is outside the vocabulary {vocab} "
                "(shard made with another tokenizer or --num-codebooks?)"
            )
        if boundaries:
            _check_block_boundaries(bin_path, arr, s, index, bos, eos)
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
        scanned += arr.size
    return lo, hi, scanned


def _refuse_empty_documents(bin_path: str, lengths: np.ndarray) -> None:
    for s in range(0, len(lengths), _INDEX_CHUNK):
        empty = np.flatnonzero(np.asarray(lengths[s : s + _INDEX_CHUNK]) == 0)
        if empty.size:
            raise ShardError(f"{bin_path}: document {s + int(empty[0])} is empty (a document is at "
                             "least BOS and EOS)")


def _check_block_boundaries(bin_path: str, arr: np.ndarray, s: int, index: Any, bos: int, eos: int) -> None:
    """BOS exactly at the starts and EOS exactly at the ends of the documents that start/end in
    the block ``arr`` = tokens ``[s, s + len(arr))``; sequences are documents (one per document,
    none empty: checked before)."""
    e = s + arr.size
    pointers, itemsize = index.pointers, arr.itemsize
    i0, i1 = (int(x) for x in np.searchsorted(pointers, [s * itemsize, e * itemsize], side="left"))
    seq = np.arange(max(i0 - 1, 0), i1)  # the documents that start or end in the block
    first = np.asarray(pointers[seq]) // itemsize
    last = first + np.asarray(index.lengths[seq], dtype=np.int64) - 1
    for what, marker, pos in (("start with BOS", bos, first), ("end with EOS", eos, last)):
        inside = (pos >= s) & (pos < e)
        docs, pos = seq[inside], pos[inside]
        wrong = np.flatnonzero(arr[pos - s] != marker)
        if wrong.size:
            j = int(wrong[0])
            raise ShardError(f"{bin_path}: document {int(docs[j])} does not {what} {marker} (position "
                             f"{int(pos[j])} holds {int(arr[pos[j] - s])})")
        at = np.flatnonzero(arr == marker)
        if at.size != pos.size:  # markers besides the boundaries (which hold theirs: checked)
            p = s + int(at[~np.isin(at + s, pos)][0])
            doc = int(np.searchsorted(pointers, p * itemsize, side="right")) - 1
            name = "BOS" if marker == bos else "EOS"
            raise ShardError(f"{bin_path}: token {p} inside document {doc} is {name} {marker} (only a "
                             f"document's {'first' if name == 'BOS' else 'last'} token may be; an EOS "
                             "inside a document would split it in training)")


def read_stats(path: str) -> dict:
    """A ``PREFIX.stats.json`` as a dict; anything else is a :class:`ShardError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except ValueError as e:
        raise ShardError(f"{path}: not JSON ({e})") from None
    if not isinstance(stats, dict):
        raise ShardError(f"{path}: not a JSON object")
    return stats


def check_stats_current(prefix: str, documents: int, tokens: int) -> None:
    """Refuse a ``PREFIX.stats.json`` that describes other shards than ``PREFIX.bin``/``.idx``
    (``documents`` and ``tokens`` as the index says), naming both files and what differs.  Stats
    that record which files they describe (sizes, checksum) are compared with those; older stats
    by the counts they record and by modification time: preprocessing writes the stats after the
    shard files' contents, so stats older than the shards mean the shards were rewritten after
    them (or copied without their times: ``cp -p``/``rsync -t`` keep them).  No stats file: nothing
    to check."""
    path = prefix + ".stats.json"
    if not os.path.isfile(path):
        return
    stats = read_stats(path)
    record = stats.get(IDENTITY_KEY)
    if record is not None:
        why = _identity_differences(prefix, record)
    else:
        why = _count_differences(prefix, stats, documents, tokens) or _mtime_difference(prefix, path)
    if why:
        raise ShardError(f"{path}: describes other shards than {prefix}.bin/.idx ({why}); the shards "
                         "were rewritten or replaced after their stats: preprocess them again (or "
                         "restore the stats that came with them)")


# The stats' record of the files they describe: {".idx": {"bytes": N, "sha256": HEX}, ".bin": {...}}.
# Sizes are compared, and the .idx checksum (the .bin's would mean reading terabytes: its size,
# its pointers in the checksummed .idx and the token scan cover it).
IDENTITY_KEY = "files"
_HASH_BLOCK = 1 << 22
# The per-document loss starts of an SFT shard (format/sft.py), checksummed like the .idx.
LOSS_START_SUFFIX = ".loss_start.npy"
_IDENTITY_SUFFIXES = (".idx", ".bin", LOSS_START_SUFFIX)
_CHECKSUMMED = (".idx", LOSS_START_SUFFIX)


def _identity_differences(prefix: str, record: object) -> str:
    if not isinstance(record, dict):
        return f"its {IDENTITY_KEY!r} record is not an object"
    out = []
    for suffix, want in sorted(record.items()):
        path = prefix + suffix
        if suffix not in _IDENTITY_SUFFIXES or not isinstance(want, dict):
            return f"its {IDENTITY_KEY!r} record has an unexpected entry {suffix!r}"
        if not os.path.isfile(path):
            out.append(f"{path} is missing")
            continue
        size = os.path.getsize(path)
        if "bytes" in want and want["bytes"] != size:
            out.append(f"{path} has {size} bytes, the stats record {want['bytes']}")
        elif suffix in _CHECKSUMMED and "sha256" in want and want["sha256"] != (have := _sha256(path)):
            out.append(f"{path} has sha256 {have[:16]}..., the stats record {str(want['sha256'])[:16]}...")
    return "; ".join(out)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_BLOCK):
            h.update(chunk)
    return h.hexdigest()


def _count_differences(prefix: str, stats: dict, documents: int, tokens: int) -> str:
    recorded_tokens = stats.get("total_tokens", stats.get("tokens"))  # tokens: a by-kind dict, or a count
    out = []
    for what, recorded, actual in (("documents", stats.get("documents"), documents),
                                   ("tokens", recorded_tokens, tokens)):
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != actual:
            out.append(f"the stats record {recorded} {what}, {prefix}.idx holds {actual}")
    return "; ".join(out)


def _mtime_difference(prefix: str, stats_path: str) -> str:
    stats_time = os.stat(stats_path).st_mtime_ns
    newest = max((prefix + s for s in (".bin", ".idx")), key=lambda p: os.stat(p).st_mtime_ns)
    if os.stat(newest).st_mtime_ns <= stats_time:
        return ""

    def when(p: str) -> str:
        t = datetime.fromtimestamp(os.stat(p).st_mtime_ns / 1e9, tz=UTC)
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return (f"{newest} was modified at {when(newest)}, after the stats ({when(stats_path)}); if the files "
            "were only copied without their times, copy them again with cp -p or rsync -t")
