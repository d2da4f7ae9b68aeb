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

import numpy as np

from megatron_soda.data.shards import ShardError, read_index
from megatron_soda.tokenizer import SodaTokenizer, TokenLayout


class DataError(ValueError):
    """A data shard that cannot be trained on."""


def check_prefix(prefix: str, tokenizer: SodaTokenizer, mode: str = "full", max_scan_gib: float = 4.0) -> dict:
    """Validate one shard; returns a small summary.  ``mode``: full | quick | none."""
    if mode == "none":
        return {}
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for p in (idx_path, bin_path):
        if not os.path.isfile(p):
            raise DataError(f"{p}: missing (data prefix {prefix!r}; expected {prefix}.bin and {prefix}.idx "
                            "from tools/preprocess)")
    try:
        dtype, lengths, pointers, _ = read_index(idx_path)
    except ShardError as e:
        raise DataError(str(e)) from None
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
