"""Checks on preprocessed shards before any model is built, with messages that name the file.

A shard is megatron's IndexedDataset pair ``PREFIX.bin``/``PREFIX.idx`` (one sequence per
document), optionally with ``PREFIX.stats.json`` holding the tokenizer layout it was made with.
Checked: both files exist; the .idx header and length are consistent; the .bin holds exactly the
tokens the .idx points at (a truncated copy is caught); the recorded layout matches the training
tokenizer; and no token id is outside the tokenizer's vocabulary.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from megatron_soda.tokenizer import SodaTokenizer, TokenLayout

_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8


class DataError(ValueError):
    """A data shard that cannot be trained on."""


def read_index(idx_path: str) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """dtype, sequence lengths and byte pointers of an .idx file (validated against its size)."""
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[:9] != _INDEX_HEADER:
        raise DataError(f"{idx_path}: not a megatron IndexedDataset index (bad or truncated header)")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1 or code not in _DTYPES:
        raise DataError(f"{idx_path}: unsupported index version {version} / dtype code {code}")
    body = n_seq * (4 + 8) + n_doc * 8
    if size < _HEADER_BYTES + body:
        raise DataError(f"{idx_path}: truncated index ({size} bytes, header promises "
                        f"{_HEADER_BYTES + body} for {n_seq} sequences)")
    lengths = np.fromfile(idx_path, dtype=np.int32, count=n_seq, offset=_HEADER_BYTES)
    pointers = np.fromfile(idx_path, dtype=np.int64, count=n_seq, offset=_HEADER_BYTES + 4 * n_seq)
    return np.dtype(_DTYPES[code]), lengths, pointers


def check_prefix(prefix: str, tokenizer: SodaTokenizer, mode: str = "full", max_scan_gib: float = 4.0) -> dict:
    """Validate one shard; returns a small summary.  ``mode``: full | quick | none."""
    if mode == "none":
        return {}
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for p in (idx_path, bin_path):
        if not os.path.isfile(p):
            raise DataError(f"{p}: missing (data prefix {prefix!r}; expected {prefix}.bin and {prefix}.idx "
                            "from tools/preprocess)")
    dtype, lengths, pointers = read_index(idx_path)
    expected = int(lengths.astype(np.int64).sum()) * dtype.itemsize
    actual = os.path.getsize(bin_path)
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its index"
        raise DataError(f"{bin_path}: {what} ({actual} bytes, {idx_path} describes {expected})")
    if len(pointers) and (pointers[0] != 0 or int(pointers[-1]) + int(lengths[-1]) * dtype.itemsize != expected):
        raise DataError(f"{idx_path}: sequence pointers do not match the sequence lengths")
    stats_path = prefix + ".stats.json"
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            layout = json.load(f).get("layout")
        if layout is not None:
            try:
                tokenizer.check_layout(TokenLayout.from_dict(layout), where=stats_path)
            except ValueError as e:
                raise DataError(f"{e}; preprocess with the same --tokenizer/--num-codebooks as training") from None
    if len(lengths) == 0:
        raise DataError(f"{idx_path}: the shard holds no documents")
    summary = {"prefix": prefix, "sequences": len(lengths), "tokens": expected // dtype.itemsize}
    if mode == "full" and expected:
        _check_ids(bin_path, dtype, tokenizer.vocab_size, max_scan_gib)
    return summary


def check_split(prefix: str, num_sequences: int, split: str) -> None:
    """megatron's GPTDataset loops forever on a split that received no documents: refuse first."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    names = ("train", "valid", "test")
    for name, bounds in zip(names, convert_split_vector_to_split_matrix(parse_and_normalize_split(split))):
        if bounds is None:
            continue
        begin, end = (int(round(b * num_sequences)) for b in bounds)
        if end <= begin:
            raise DataError(f"{prefix}: --split {split} gives its {name} split no documents (the shard has "
                            f"{num_sequences}); use more data, another --split, or held-out prefixes via "
                            "--valid-data-path")


def _check_ids(bin_path: str, dtype: np.dtype, vocab_size: int, max_scan_gib: float) -> None:
    data = np.memmap(bin_path, dtype=dtype, mode="r")
    chunk = 1 << 24
    n = len(data)
    if n * dtype.itemsize <= max_scan_gib * (1 << 30):
        starts = range(0, n, chunk)
    else:  # sample: head, tail and evenly spread chunks up to the byte budget
        k = max(2, int(max_scan_gib * (1 << 30) // (chunk * dtype.itemsize)))
        starts = sorted({int(x) for x in np.linspace(0, max(n - chunk, 0), k)})
    for s in starts:
        block = np.asarray(data[s : s + chunk])
        lo, hi = int(block.min()), int(block.max())
        if lo < 0 or hi >= vocab_size:
            bad = hi if hi >= vocab_size else lo
            pos = s + int(np.flatnonzero(block == bad)[0])
            raise DataError(f"{bin_path}: token id {bad} at position {pos} is outside the tokenizer's "
                            f"vocabulary [0, {vocab_size}) (shard made with another tokenizer or "
                            "--num-codebooks?)")
