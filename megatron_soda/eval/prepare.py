"""``python -m megatron_soda.eval prepare``: read benchmark items from their public layouts,
encode the audio and tokenize the text once, and write a prepared-task directory
(:mod:`megatron_soda.tasks.prepared`) that ``likelihood`` and the trainer's ``--eval-tasks-data``
read.  Tasks already prepared with the same tokenizer layout, codec and source are kept, so an
interrupted run resumes task by task; each task's files are written atomically."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from megatron_soda.eval.common import count_arg, log, make_codec

EXIT_ERROR_RATE = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="the model (or any directory with its tokenizer) the items are for")
    p.add_argument("--codec", default=None, help="Mimi codec spec (needed for audio tasks)")
    p.add_argument("--task", action="append", required=True, metavar="NAME=PATH[:FORMAT]",
                   help="a task to prepare: its name in the prepared directory = the local copy "
                        "of its data (FORMAT defaults to NAME: swuggy, sblimp, salmon, ...; jsonl "
                        "for the generic pair format); repeat the flag")
    p.add_argument("--output", required=True, help="the prepared directory")
    p.add_argument("--limit", type=count_arg, default=None, help="at most N items per task")
    p.add_argument("--max-error-rate", type=float, default=0.0,
                   help="fraction of bad items tolerated per task (exit 3 above it)")
    p.add_argument("--device", default="cpu", help="codec device")
    p.add_argument("--force", action="store_true", help="prepare tasks again even if present")


def parse_task_flag(value: str) -> tuple[str, str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--task {value!r}: expected NAME=PATH[:FORMAT]")
    path, fmt = rest, name
    head, colon, tail = rest.rpartition(":")
    if colon and tail and "/" not in tail and not os.path.exists(rest):
        path, fmt = head, tail
    return name, path, fmt


def source_identity(path: str) -> str:
    """Size and modification time of the data (every file under a directory, hidden folders
    such as the hub client's ``.cache/`` left out): a task is prepared again when its data
    changed."""
    import hashlib

    files = [path]
    if os.path.isdir(path):
        files = []
        for d, dirs, names in os.walk(path):
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            files += [os.path.join(d, n) for n in sorted(names)]
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def prepare_task(name: str, path: str, fmt: str, tok: Any, codec: Any, out: str,
                 limit: int | None) -> tuple[dict[str, Any], list[str]]:
    """Write ``out/<name>.jsonl`` (+ ``.errors.jsonl``); returns (task info, error messages)."""
    from megatron_soda.atomic_files import write_jsonl_atomic
    from megatron_soda.tasks.build import ItemFailure, codec_encoder, item_records
    from megatron_soda.tasks.readers import read_task, task_kind

    items = read_task(fmt, path)
    if limit is not None:
        items = (it for i, it in enumerate(items) if i < limit)
    encode = codec_encoder(codec) if codec is not None else None
    good, errors = [], []
    for rec in item_records(items, tok, encode):
        if isinstance(rec, ItemFailure):
            errors.append(str(rec))
            log(f"{name}: skipped: {rec}")
        else:
            good.append(rec)
    write_jsonl_atomic(os.path.join(out, f"{name}.jsonl"), good)
    write_jsonl_atomic(os.path.join(out, f"{name}.errors.jsonl"), ({"error": e} for e in errors))
    info = {"kind": task_kind(fmt), "format": fmt, "n": len(good), "errors": len(errors),
            "source": os.path.abspath(path), "source_identity": source_identity(path),
            "limit": limit}
    return info, errors


def run(args: argparse.Namespace) -> int:
    from megatron_soda.audio.codec import codec_fingerprint
    from megatron_soda.convert.in_memory import load_tokenizer
    from megatron_soda.tasks.prepared import (
        META,
        PreparedError,
        check_compatible,
        read_meta,
        write_meta,
    )

    tok = load_tokenizer(args.model)
    os.makedirs(args.output, exist_ok=True)
    fingerprint = codec_fingerprint(args.codec) if args.codec else None
    tasks: dict[str, Any] = {}
    if os.path.isfile(os.path.join(args.output, META)):
        try:
            meta = read_meta(args.output)
            check_compatible(meta, tok, args.output)
            if meta.get("codec_fingerprint") in (None, fingerprint):
                tasks = meta["tasks"]
        except PreparedError as e:
            log(f"{args.output}: starting afresh ({e})")
    codec, status = None, 0
    for flag in args.task:
        name, path, fmt = parse_task_flag(flag)
        old = tasks.get(name)
        same = old and all(old.get(k) == v for k, v in (
            ("source", os.path.abspath(path)), ("format", fmt), ("limit", args.limit),
            ("source_identity", source_identity(path))))
        if not args.force and same and os.path.isfile(os.path.join(args.output, f"{name}.jsonl")):
            log(f"{name}: already prepared ({old['n']} items), kept")
            continue
        if codec is None and args.codec:
            codec = make_codec(args.codec, tok, args.device)
        info, errors = prepare_task(name, path, fmt, tok, codec, args.output, args.limit)
        tasks[name] = info
        total = info["n"] + info["errors"]
        log(f"{name}: {info['n']} items prepared, {len(errors)} skipped")
        if total == 0 or len(errors) > args.max_error_rate * total:
            status = EXIT_ERROR_RATE
            log(f"{name}: {len(errors)} of {total} items failed (--max-error-rate {args.max_error_rate})")
        write_meta(args.output, tok, args.codec, fingerprint, tasks)
    print(json.dumps({"prepared": args.output, "tasks": tasks}, indent=2))
    return status
