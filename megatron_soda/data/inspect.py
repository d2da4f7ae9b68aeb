"""Validate a shard pair and show its stats and readable renderings of chosen documents."""

from __future__ import annotations

import argparse
import json
import os
import sys

from megatron_soda.data.shards import ShardError, read_document, validate_shard
from megatron_soda.tokenizer import KIND_NAMES, SodaTokenizer, TokenizerError, TokenLayout


def inspect_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Validate P.idx/P.bin and print stats and documents.")
    p.add_argument("prefix")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="base tokenizer.json, to render text (and check the layout)",
    )
    p.add_argument("--docs", type=int, nargs="*", default=[0], help="document indices to render")
    p.add_argument("--max-codes", type=int, default=8, help="codes shown per audio span")
    args = p.parse_args(argv)

    stats_path = args.prefix + ".stats.json"
    stats = None
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
    layout = TokenLayout.from_dict(stats["layout"]) if stats and "layout" in stats else None
    tok = None
    if args.tokenizer:
        tok = SodaTokenizer.load(
            args.tokenizer, num_codebooks=layout.num_codebooks if layout else 8
        )
        if layout is not None:
            try:
                tok.check_layout(layout, where=f"{stats_path} vs --tokenizer {args.tokenizer}")
            except TokenizerError as e:
                print(f"inspect_shards: error: {e}", file=sys.stderr)
                return 2
        layout = tok.layout
    try:
        summary = validate_shard(
            args.prefix,
            vocab_size=layout.vocab_size if layout else None,
            bos_id=layout.bos_id if layout else None,
            eos_id=layout.eos_id if layout else None,
        )
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
            "documents",
            "recordings",
            "utterances",
            "audio_hours",
            "errors",
            "error_rate",
        )
        print(json.dumps({k: stats[k] for k in keys if k in stats}))
        print("tokens: " + ", ".join(f"{k}={stats['tokens'].get(k, 0)}" for k in KIND_NAMES))
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
