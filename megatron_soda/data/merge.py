"""Merging preprocessing outputs: ``tools/preprocess/merge_shards.py`` (the slices of a
``--num-shards`` run, or any finished outputs of one tokenizer and codec) into one prefix."""

from __future__ import annotations

import json
import os

from megatron_soda.data.preprocess import (
    PreprocessError,
    output_locked,
    summarize_splits,
    write_report_files,
)
from megatron_soda.data.shards import ShardWriter
from megatron_soda.data.tokenize_stage import SplitStats
from megatron_soda.format import shard_layout, validate_shard

# What describes how a shard was made (its header in P.stats.json); merging keeps these.
HEADER_KEYS = (
    "codec_precision",
    "format",
    "interleave",
    "codec",
    "codec_random",
    "codec_fingerprint",
    "num_codebooks",
    "layout",
    "tokenizer_sha256",
    "split_fraction",
    "sft",
)



def merge_outputs(prefixes: list[str], output_prefix: str) -> dict:
    """Combine shard outputs (in the order given) into one prefix, splits kept apart; holds the
    output prefix's lock (:func:`output_locked`) meanwhile."""
    if not prefixes:
        raise PreprocessError("merge: no input prefixes")
    with output_locked(output_prefix):
        return _merge_locked(prefixes, output_prefix)


def _merge_locked(prefixes: list[str], output_prefix: str) -> dict:
    stats = []
    for p in prefixes:
        path = p + ".stats.json"
        if not os.path.isfile(path):
            raise PreprocessError(
                f"merge: {path} missing (is {p} a finished preprocessing output?)"
            )
        with open(path) as f:
            stats.append(json.load(f))
    layouts = {json.dumps(s["layout"], sort_keys=True) for s in stats}
    if len(layouts) > 1:
        raise PreprocessError(
            "merge: the shards were made with different tokenizers / codebook counts"
        )
    if len({"sft" in s for s in stats}) > 1:
        raise PreprocessError("merge: some shards are SFT (S2ST pairs with loss starts), some not")
    codecs = {s.get("codec_fingerprint") for s in stats} - {None}
    if len(codecs) > 1:
        raise PreprocessError(
            "merge: the shards were made with different codecs (codec_fingerprint)"
        )
    split_names = sorted(stats[0].get("splits", {}).keys()) or ["all"]
    suffixes = {name: "" if name == "all" else f"_{name}" for name in split_names}
    layout = shard_layout(prefixes[0])
    for p in prefixes:  # a truncated or foreign input would make a corrupt merged shard
        for suffix in suffixes.values():
            validate_shard(p + suffix, layout, scan_ids=False)
    merged: dict[str, SplitStats] = {}
    writers: dict[str, ShardWriter] = {}
    try:
        for name, suffix in suffixes.items():
            w = writers[name] = ShardWriter(output_prefix + suffix, sft="sft" in stats[0])
            merged[name] = SplitStats()
            for p, s in zip(prefixes, stats):
                w.add_prefix(p + suffix)
                merged[name].merge(SplitStats.from_dict(s["splits"][name] if name != "all" else s))
        files = {name: w.close() for name, w in writers.items()}
        summary = _merge_reports(prefixes, output_prefix, stats, merged, files)
        for w in writers.values():
            w.publish()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return summary


def _merge_reports(
    prefixes: list[str], output_prefix: str, stats: list[dict], merged: dict[str, SplitStats],
    files: dict[str, dict],
) -> dict:
    header = {k: v for k, v in stats[0].items() if k in HEADER_KEYS}
    header["merged_from"] = [os.path.basename(p) for p in prefixes]
    errors: list[dict] = []
    for p in prefixes:
        with open(p + ".errors.jsonl", encoding="utf-8") as f:
            errors.extend(json.loads(line) for line in f if line.strip())
    attempted = sum(s["attempted"] for s in stats)
    collisions = sum(s.get("text_audio_char_collisions", 0) for s in stats)
    summary = summarize_splits(header, merged, len(errors), attempted, collisions)
    write_report_files(output_prefix, header, merged, summary, errors, files)
    return summary
