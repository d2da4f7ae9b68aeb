"""The trainer's checks on its data shards before any model is built: the format's validator
(:func:`megatron_soda.format.validate_shard`, messages that name the file) with the training
tokenizer's layout, plus the check that ``--split`` leaves no split empty (the default's
validation split may be: the run then trains without validation).

``DataError`` is the format's :class:`~megatron_soda.format.ShardError`: one error type for a
shard that cannot be used, whoever finds it.
"""

from __future__ import annotations

import json

from megatron_soda.config.data import DEFAULT_SPLIT
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
                shown = (seen[1], value) if field != "layout" else _differing_layout_fields(seen[1], value)
                raise DataError(
                    f"the data blend mixes shards made differently: {seen[0]} has {field} {shown[0]}, "
                    f"{prefix} has {field} {shown[1]} ({prefix}.stats.json); preprocess them with the "
                    "same --codec, --num-codebooks and --tokenizer")
        if speech and not shared:
            shared = {k: prov[k] for k in ("codec", "codec_fingerprint", "codec_random") if k in prov}
    return shared


def _differing_layout_fields(a: dict, b: dict) -> tuple[str, str]:
    """Two recorded layouts shown by the fields they differ in only: ``(num_codebooks 8;
    vocab_size 16900)`` and ``(num_codebooks 4; vocab_size 8708)``."""
    keys = [k for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)]

    def show(side: dict) -> str:
        return "(" + "; ".join(f"{k} {side.get(k)}" for k in keys) + ")"

    return show(a), show(b)


def empty_splits(num_sequences: int, split: str) -> list[str]:
    """The splits (train, valid, test) that ``split`` gives none of ``num_sequences`` documents,
    with megatron's own arithmetic; a split of weight 0 is absent, not empty."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    out = []
    for name, bounds in zip(("train", "valid", "test"), matrix):
        if bounds is not None and int(round(bounds[1] * num_sequences)) <= int(round(bounds[0] * num_sequences)):
            out.append(name)
    return out


def check_split(prefix: str, num_sequences: int, split: str | None) -> bool:
    """megatron's GPTDataset loops forever on a split that received no documents: a ``--split``
    the user gave that leaves one empty is refused.  The default (``split`` None, i.e.
    :data:`DEFAULT_SPLIT`) only ever empties the validation split of a small shard: then this
    returns False and the run trains without validation (:func:`without_validation`)."""
    empty = empty_splits(num_sequences, split or DEFAULT_SPLIT)
    if split is None and empty == ["valid"]:
        return False
    if empty:
        raise DataError(f"{prefix}: --split {split or DEFAULT_SPLIT} gives its {empty[0]} split no documents (the "
                        f"shard has {num_sequences}); use more data, another --split, or held-out prefixes via "
                        "--valid-data-path")
    return True


def without_validation(split: str) -> str:
    """``split`` with the validation weight set to 0 (megatron then builds no validation set)."""
    weights = split.replace("/", ",").split(",")
    return ",".join(w if i != 1 else "0" for i, w in enumerate(weights))
