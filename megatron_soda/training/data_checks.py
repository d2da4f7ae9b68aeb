"""The trainer's checks on its data shards before any model is built: the format's validator
(:func:`megatron_soda.format.validate_shard`, messages that name the file) with the training
tokenizer's layout (every index entry, BOS/EOS placement and id range, stats that describe the
shards beside them), the blend's provenance (one comparison of what the shards record, which also
gives the tokenizer its codebook count), plus the check that ``--split`` leaves no split empty
(the default's validation split may be: the run then trains without validation).

``DataError`` is the format's :class:`~megatron_soda.format.ShardError`: one error type for a
shard that cannot be used, whoever finds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from megatron_soda.config.data import DEFAULT_SPLIT
from megatron_soda.format import ShardError, shard_provenance, validate_shard
from megatron_soda.tokenizer import SodaTokenizer

DataError = ShardError


def check_prefix(prefix: str, tokenizer: SodaTokenizer, mode: str = "full", max_scan_gib: float = 4.0) -> dict:
    """Validate one shard for training with ``tokenizer``; returns a small summary.  ``mode``:
    full (structure, stats and every id against the vocabulary, every document's BOS/EOS placement;
    sampled beyond ``max_scan_gib``) | quick (structure: every index entry, the ``.bin`` size,
    ``PREFIX.stats.json`` describing these shards and recording this layout) | none.  The full
    scan's cost per GB: :func:`megatron_soda.format.shard_verify.scan_tokens`."""
    if mode == "none":
        return {}
    full = mode == "full"
    s = validate_shard(prefix, tokenizer.layout, scan_ids=full, check_boundaries=full,
                       max_scan_gib=max_scan_gib, allow_empty=False, check_stats=True)
    return {"prefix": prefix, "sequences": s.sequences, "tokens": s.tokens}


def check_prefixes(prefixes: list[str], tokenizer: SodaTokenizer, mode: str = "full",
                   max_scan_gib: float = 4.0) -> tuple[dict, dict[str, dict]]:
    """Every check of a run's shards, cheapest first, so that a bad blend is refused before any
    token is scanned: each shard's files and whether its stats describe them (stale stats would
    make the next comparison meaningless), then what the blend's stats record
    (:func:`check_blend_provenance`: a mixed blend is named as such), then each shard against
    ``tokenizer`` (:func:`check_prefix` in ``mode``).  Returns the codec the shards share and each
    prefix's summary."""
    if mode != "none":
        for p in prefixes:
            validate_shard(p, None, scan_ids=False, check_stats=True)
    shared = check_blend_provenance(prefixes)
    return shared, {p: check_prefix(p, tokenizer, mode, max_scan_gib) for p in prefixes}


# Fields two prefixes of one run must share: speech prefixes the codec (its fingerprint
# identifies the codes), every prefix the token layout (text shards have one too).
_CODEC_FIELDS = ("codec_fingerprint", "num_codebooks")
_LAYOUT_FIELDS = ("layout",)


@dataclass(frozen=True)
class BlendMismatch:
    """Two prefixes of a blend that record different values of ``field``."""

    field: str
    first: tuple[str, object]  # (prefix, value) of the first prefix to record the field
    other: tuple[str, object]

    def codebook_counts(self) -> tuple[object, object] | None:
        """The two codebook counts, when they are what differs (directly or in the layouts)."""
        a, b = self.first[1], self.other[1]
        if self.field == "layout" and isinstance(a, dict) and isinstance(b, dict):
            a, b = a.get("num_codebooks"), b.get("num_codebooks")
        elif self.field != "num_codebooks":
            return None
        return (a, b) if a != b else None

    def message(self) -> str:
        (pa, a), (pb, b) = self.first, self.other
        shown = (a, b) if self.field != "layout" else _differing_layout_fields(a, b)
        return (f"the data blend mixes shards made differently: {pa} has {self.field} {shown[0]}, "
                f"{pb} has {self.field} {shown[1]} ({pb}.stats.json); preprocess them with the "
                "same --codec, --num-codebooks and --tokenizer")


def blend_provenance(prefixes: list[str]) -> tuple[dict[str, tuple[str, object]], dict, BlendMismatch | None]:
    """The one comparison of what a blend's shards record (``PREFIX.stats.json``): the fields
    they agree on (field -> (first prefix recording it, value)), the codec of the first speech
    prefix, and the first disagreement (None if none).  Speech prefixes must share the codec
    (fingerprint) and codebook count, every prefix the token layout; a field a shard does not
    record (text shards: no codec; shards from before fingerprints) is unknown, never different."""
    first: dict[str, tuple[str, object]] = {}
    shared: dict = {}
    for prefix in prefixes:
        prov = shard_provenance(prefix)
        speech = prov.get("codec") is not None or "codec_fingerprint" in prov
        for field in (_CODEC_FIELDS if speech else ()) + _LAYOUT_FIELDS:
            if field not in prov:
                continue
            seen = first.setdefault(field, (prefix, prov[field]))
            if json.dumps(seen[1], sort_keys=True) != json.dumps(prov[field], sort_keys=True):
                return first, shared, BlendMismatch(field, seen, (prefix, prov[field]))
        if speech and not shared:
            shared = {k: prov[k] for k in ("codec", "codec_fingerprint", "codec_random") if k in prov}
    return first, shared, None


def check_blend_provenance(prefixes: list[str]) -> dict:
    """Refuse a run whose prefixes were made with different codecs, codebook counts or token
    layouts, naming two prefixes and the field; returns what they share (``codec``,
    ``codec_fingerprint``, ``codec_random``: the data facts a checkpoint records)."""
    _, shared, mismatch = blend_provenance(prefixes)
    if mismatch is not None:
        raise DataError(mismatch.message())
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
