"""The trainer's checks on its data shards before any model is built: the format's validator
(:func:`megatron_soda.format.validate_shard`, messages that name the file) with the training
tokenizer's layout, plus the check that ``--split`` leaves no split empty.

``DataError`` is the format's :class:`~megatron_soda.format.ShardError`: one error type for a
shard that cannot be used, whoever finds it.
"""

from __future__ import annotations

import json

from megatron_soda.format import ShardError, shard_provenance, validate_shard
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


# Fields two prefixes of one run must share: speech prefixes the codec (its fingerprint
# identifies the codes), every prefix the token layout (text shards have one too).
_CODEC_FIELDS = ("codec_fingerprint", "num_codebooks")
_LAYOUT_FIELDS = ("layout",)


def check_blend_provenance(prefixes: list[str]) -> dict:
    """Refuse a run whose prefixes were made with different codecs, codebook counts or token
    layouts, naming two prefixes and the field; returns what they share (``codec``,
    ``codec_fingerprint``, ``codec_random``: the data facts a checkpoint records).  A field a
    shard does not record (text shards: no codec; shards from before fingerprints) is unknown
    and never refused."""
    first: dict[str, tuple[str, object]] = {}  # field -> (prefix, value) of the first to record it
    shared: dict = {}
    for prefix in prefixes:
        prov = shard_provenance(prefix)
        speech = prov.get("codec") is not None or "codec_fingerprint" in prov
        for field in (_CODEC_FIELDS if speech else ()) + _LAYOUT_FIELDS:
            if field not in prov:
                continue
            value = prov[field]
            seen = first.setdefault(field, (prefix, value))
            if json.dumps(seen[1], sort_keys=True) != json.dumps(value, sort_keys=True):
                shown = (seen[1], value) if field != "layout" else ("(see its stats.json)", "(another)")
                raise DataError(
                    f"the data blend mixes shards made differently: {seen[0]} has {field} {shown[0]}, "
                    f"{prefix} has {field} {shown[1]} ({prefix}.stats.json); preprocess them with the "
                    "same --codec, --num-codebooks and --tokenizer")
        if speech and not shared:
            shared = {k: prov[k] for k in ("codec", "codec_fingerprint", "codec_random") if k in prov}
    return shared


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
