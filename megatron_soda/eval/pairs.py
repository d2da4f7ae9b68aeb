"""The likelihood tasks.

``pairs``: one task straight from its data (``--data FILE --format jsonl|<task>``): items are
read, encoded and tokenized in memory (each rank its share under torchrun), then scored.
``likelihood``: every task of a prepared directory (``eval prepare``), SODA's likelihood table in
one run.  Both score with :func:`megatron_soda.tasks.likelihood.score_sequences` and summarise
with :mod:`megatron_soda.tasks.prepared`, the rules the trainer's in-training evaluation uses.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from megatron_soda.eval.common import (
    add_model_args,
    add_output_args,
    add_span_arg,
    count_arg,
    log,
    make_codec,
    steer_context,
)
from megatron_soda.eval.distributed import EvalWorld

EXIT_BAD_ITEMS = 2


def add_pairs_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="the task's data: a file or a local dataset copy")
    p.add_argument("--format", required=True,
                   help="jsonl (one pair per line: id, positive, negative) or a task name "
                        "(swuggy, sblimp, salmon, sstorycloze, tstorycloze, twuggy, tblimp, hellaswag)")
    p.add_argument("--limit", type=count_arg, default=None, help="score the first N items only")
    p.add_argument("--max-error-rate", type=float, default=0.0,
                   help="fraction of unreadable items tolerated (exit 2 above it)")
    add_span_arg(p)
    add_output_args(p)
    _add_steer_args(p)


def add_likelihood_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prepared", required=True, help="a directory written by `eval prepare`")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    add_span_arg(p)
    p.add_argument("--output", required=True, help="RESULT.json (every task's metrics)")
    p.add_argument("--items-dir", default=None, help="write <task>.items.jsonl here")
    _add_steer_args(p)


def _add_steer_args(p: argparse.ArgumentParser) -> None:
    """--steer flags (docs/steering.md); scoring is one forward, so there is no time scope."""
    from megatron_soda.steer.cli_args import add_steer_args

    add_steer_args(p, scope=False)


def score_task(model: Any, task: Any, world: EvalWorld, batch_size: int) -> list[dict[str, Any]]:
    """Item records of ``task`` (sequences scored data-parallel, gathered in order)."""
    from megatron_soda.tasks.likelihood import score_sequences
    from megatron_soda.tasks.prepared import item_results

    seqs = task.sequences()
    scores = world.gather(score_sequences(model, world.shard(seqs), batch_size))
    return item_results(task, scores)


def drop_too_long(task: Any, model: Any) -> tuple[Any, list[str]]:
    """``task`` without the items that have a sequence longer than the model's positions (the
    trainer refuses those too, so both score the same items), and one message per item left out."""
    from megatron_soda.tasks.prepared import drop_longer_than

    return drop_longer_than(task, getattr(model.config, "max_position_embeddings", None))


def _load(args: argparse.Namespace, world: EvalWorld) -> Any:
    from megatron_soda.convert.in_memory import load_model

    return load_model(args.model, world.device, args.dtype, args.iteration)


def run_pairs(args: argparse.Namespace) -> int:
    from megatron_soda.eval.results import run_record, write_results
    from megatron_soda.tasks.build import ItemFailure, codec_encoder, item_records
    from megatron_soda.tasks.prepared import parse_task, summarize
    from megatron_soda.tasks.readers import read_task, task_kind

    world = EvalWorld(args.device)
    try:
        start = time.perf_counter()
        loaded = _load(args, world)
        tok = loaded.tokenizer
        items = list(read_task(args.format, args.data))[: args.limit]
        codec = make_codec(args.codec, tok, world.device)
        encode = codec_encoder(codec) if codec is not None else None
        mine = list(item_records(world.shard(items), tok, encode))
        records = world.gather(mine)
        errors = [str(r) for r in records if isinstance(r, ItemFailure)]
        good = [r for r in records if not isinstance(r, ItemFailure)]
        for e in errors:
            log(f"skipped: {e}")
        task = parse_task(args.format, task_kind(args.format),
                          ((f"item {r['id']}", r) for r in good), tok, args.score_span)
        task, too_long = drop_too_long(task, loaded.model)
        errors += too_long
        prepared_s = time.perf_counter() - start
        steer, steer_info = steer_context(args, loaded)
        with steer():
            item_rows = score_task(loaded.model, task, world, args.batch_size)
        seconds = time.perf_counter() - start
        metrics = summarize(task, item_rows)
        too_many = len(errors) > args.max_error_rate * max(len(items), 1) or not task.items
        if world.is_main:
            result = {**metrics, "score_span": args.score_span, "errors": errors,
                      "seconds": seconds, "prepare_seconds": prepared_s,
                      "items_per_second": len(good) / max(seconds - prepared_s, 1e-9),
                      **run_record(args, loaded, world_size=world.world), **steer_info}
            write_results(args.output, result, args.items, item_rows)
            log(f"{args.format}: accuracy {metrics['accuracy']:.4f} over {metrics['n']} items "
                f"({len(errors)} skipped) -> {args.output}")
        return EXIT_BAD_ITEMS if too_many else 0
    finally:
        world.close()


def run_likelihood(args: argparse.Namespace) -> int:
    from megatron_soda.eval.results import run_record, write_results
    from megatron_soda.tasks.prepared import read_prepared, summarize

    world = EvalWorld(args.device)
    try:
        loaded = _load(args, world)
        names = args.tasks.split(",") if args.tasks else None
        tasks = read_prepared(args.prepared, loaded.tokenizer, args.score_span, names)
        results: dict[str, Any] = {}
        steer, steer_info = steer_context(args, loaded)
        for name, task in tasks.items():
            start = time.perf_counter()
            task, too_long = drop_too_long(task, loaded.model)
            for e in too_long if world.is_main else ():
                log(f"{name}: skipped: {e}")
            with steer():
                rows = score_task(loaded.model, task, world, args.batch_size)
            seconds = time.perf_counter() - start
            results[name] = {**summarize(task, rows), "skipped": too_long, "seconds": seconds,
                             "items_per_second": len(rows) / max(seconds, 1e-9)}
            if world.is_main:
                log(f"{name}: accuracy {results[name]['accuracy']:.4f} over {len(rows)} items")
                if args.items_dir:
                    write_results(None, {}, os.path.join(args.items_dir, f"{name}.items.jsonl"), rows)
        if world.is_main:
            write_results(args.output, {"tasks": results, "score_span": args.score_span,
                                        **run_record(args, loaded, world_size=world.world),
                                        **steer_info})
        return 0
    finally:
        world.close()
