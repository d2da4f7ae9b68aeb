"""Validate a shard pair and show its stats and readable renderings of chosen documents."""

from __future__ import annotations

import argparse
import json
import os
import sys

from megatron_soda.format import KIND_NAMES, ShardError, read_document, shard_layout, validate_shard
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError


def inspect_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Validate P.idx/P.bin and print stats and documents.")
    p.add_argument("prefix")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="base tokenizer.json or a saved tokenizer directory, to render text (and check "
        "the layout)",
    )
    p.add_argument("--docs", type=int, nargs="*", default=[0], help="document indices to render")
    p.add_argument("--max-codes", type=int, default=8, help="codes shown per audio span")
    args = p.parse_args(argv)

    stats_path = args.prefix + ".stats.json"
    stats = None
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
    tok = None
    try:
        layout = shard_layout(args.prefix)
        if args.tokenizer:  # a base tokenizer.json takes the shard's codebook count
            base = layout is not None and not os.path.isdir(args.tokenizer)
            tok = SodaTokenizer.load(args.tokenizer, layout.num_codebooks if base else None)
            if layout is not None:
                tok.check_layout(layout, where=f"{stats_path} vs --tokenizer {args.tokenizer}")
            layout = tok.layout
    except (TokenizerError, ShardError) as e:
        print(f"inspect_shards: error: {e}", file=sys.stderr)
        return 2
    try:
        summary = validate_shard(args.prefix, layout, check_boundaries=True)
    except ShardError as e:
        print(f"inspect_shards: invalid: {e}", file=sys.stderr)
        return 1
    print(
        f"OK {summary.prefix}: {summary.documents} documents, {summary.tokens} tokens, ids in [{summary.min_id}, {summary.max_id}]"
    )
    if stats:
        keys = (
            "format",
            "interleave",
            "codec",
            "codec_random",
            "codec_fingerprint",
            "documents",
            "recordings",
            "utterances",
            "audio_hours",
            "errors",
            "error_rate",
        )
        print(json.dumps({k: stats[k] for k in keys if k in stats}))
        print("tokens: " + ", ".join(f"{k}={stats['tokens'].get(k, 0)}" for k in KIND_NAMES))
        if stats.get("codec_random"):
            print(
                f"note: codes from a random-weight codec ({stats.get('codec')}): for tests and demos, "
                "not for training a model"
            )
    for i in args.docs:
        if not 0 <= i < summary.documents:
            print(f"(document {i} out of range 0..{summary.documents - 1})")
            continue
        doc = read_document(args.prefix, i)
        print(f"--- document {i}: {doc.size} tokens")
        print(
            tok.render(doc, max_codes=args.max_codes)
            if tok
            else " ".join(map(str, doc[:64])) + (" ..." if doc.size > 64 else "")
        )
    return 0
