"""The trainer's checks on its data shards before any model is built: the format's validator
(:func:`megatron_soda.format.validate_shard`, messages that name the file) with the training
tokenizer's layout, plus the check that ``--split`` leaves no split empty.

``DataError`` is the format's :class:`~megatron_soda.format.ShardError`: one error type for a
shard that cannot be used, whoever finds it.
"""

from __future__ import annotations

from megatron_soda.format import ShardError, validate_shard
from megatron_soda.tokenizer import SodaTokenizer

DataError = ShardError


def check_prefix(prefix: str, tokenizer: SodaTokenizer, mode: str = "full", max_scan_gib: float = 4.0) -> dict:
    """Validate one shard for training with ``tokenizer``; returns a small summary.  ``mode``:
    full (every id checked against the vocabulary, sampled beyond ``max_scan_gib``) | quick
    (structure and recorded layout only) | none."""
    if mode == "none":
        return {}
    s = validate_shard(prefix, tokenizer.layout, scan_ids=mode == "full", max_scan_gib=max_scan_gib,
                       allow_empty=False)
    return {"prefix": prefix, "sequences": s.sequences, "tokens": s.tokens}


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
