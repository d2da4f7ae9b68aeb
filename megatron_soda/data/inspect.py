"""Validate a shard pair and show its stats and readable renderings of chosen documents."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from megatron_soda.format import KIND_NAMES, ShardError, read_document, shard_layout, validate_shard
from megatron_soda.format.layout import FRAME_RATE, TokenLayout
from megatron_soda.format.sft import LOSS_START_SUFFIX, read_loss_starts
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
    p.add_argument("--to-wav", default=None, metavar="DIR",
                   help="decode the audio spans of document --doc to DIR/doc<N>_span<K>.wav "
                   "(24 kHz, Mimi; needs --codec)")
    p.add_argument("--doc", type=int, default=0, help="the document --to-wav decodes")
    p.add_argument("--codec", default=None, help="codec spec for --to-wav (the shard's codec)")
    args = p.parse_args(argv)
    if args.to_wav and not args.codec:
        p.error("--to-wav needs --codec SPEC (the codec the shard was encoded with)")

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
    starts = read_loss_starts(args.prefix) if summary.loss_starts else None
    if starts is not None:
        prompt = int(starts.sum())
        print(f"SFT shard ({summary.prefix}{LOSS_START_SUFFIX}, prompt end "
              f"{((stats or {}).get('sft') or {}).get('prompt_end', '?')}): {prompt} prompt (unscored) "
              f"tokens, {summary.tokens - prompt} trained")
    if args.to_wav:
        if layout is None:
            print("inspect_shards: error: --to-wav needs the shard's layout (PREFIX.stats.json) "
                  "or --tokenizer", file=sys.stderr)
            return 2
        if not 0 <= args.doc < summary.documents:
            print(f"inspect_shards: error: --doc {args.doc} out of range 0..{summary.documents - 1}",
                  file=sys.stderr)
            return 2
        return _to_wav(args, layout, stats)
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
        where = "" if starts is None else f", loss from token {int(starts[i])}"
        print(f"--- document {i}: {doc.size} tokens{where}")
        print(
            tok.render(doc, max_codes=args.max_codes)
            if tok
            else " ".join(map(str, doc[:64])) + (" ..." if doc.size > 64 else "")
        )
    return 0


def audio_spans(doc: np.ndarray, layout: TokenLayout) -> list[np.ndarray]:
    """Codes ``[n_cb, frames]`` of each ``<audio_start> ... <audio_end>`` span (whole frames)."""
    spans, start = [], None
    for pos, tid in enumerate(doc.tolist()):
        if tid == layout.audio_start_id:
            start = pos + 1
        elif tid == layout.audio_end_id and start is not None:
            ids = doc[start:pos]
            ids = ids[: ids.size - ids.size % layout.num_codebooks]
            spans.append(layout.ids_to_codes(ids))
            start = None
    return spans


def _to_wav(args: argparse.Namespace, layout: TokenLayout, stats: dict | None) -> int:
    from megatron_soda.audio.codec import CodecError, MimiCodec, codec_fingerprint
    from megatron_soda.audio.synthesis import codes_to_wave, write_wav

    try:
        recorded = (stats or {}).get("codec_fingerprint")
        if recorded and recorded != codec_fingerprint(args.codec, with_location=False) \
                and recorded != codec_fingerprint(args.codec):
            print(f"warning: --codec {args.codec} is not the codec the shard records "
                  f"({(stats or {}).get('codec')}): the sound will be wrong", file=sys.stderr)
        codec = MimiCodec(args.codec, num_codebooks=layout.num_codebooks, decoder=True)
    except CodecError as e:
        print(f"inspect_shards: error: {e}", file=sys.stderr)
        return 2
    doc = read_document(args.prefix, args.doc)
    spans = audio_spans(np.asarray(doc, dtype=np.int64), layout)
    os.makedirs(args.to_wav, exist_ok=True)
    for k, codes in enumerate(spans):
        path = os.path.join(args.to_wav, f"doc{args.doc}_span{k}.wav")
        write_wav(path, codes_to_wave(codec, codes))
        print(f"{path}: {codes.shape[1]} frames = {codes.shape[1] / FRAME_RATE:.2f} s")
    if not spans:
        print(f"document {args.doc} has no audio span")
    return 0
