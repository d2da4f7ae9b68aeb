"""Write a file so that readers only ever see the old or the complete new contents: write a
temporary sibling, optionally fsync it (checkpoint metadata must survive a power loss), then
rename it over the target (atomic on POSIX)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import TextIO


@contextlib.contextmanager
def atomic_open(path: str, *, durable: bool = False, tmp_suffix: str = ".tmp") -> Iterator[TextIO]:
    """A text file (UTF-8) that replaces ``path`` when the block completes; after an exception
    ``path`` is untouched (the temporary is overwritten by the next attempt)."""
    tmp = path + tmp_suffix
    with open(tmp, "w", encoding="utf-8") as f:
        yield f
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str, *, durable: bool = False, tmp_suffix: str = ".tmp") -> None:
    with atomic_open(path, durable=durable, tmp_suffix=tmp_suffix) as f:
        f.write(text)


def write_json_atomic(
    path: str,
    obj: object,
    *,
    durable: bool = False,
    tmp_suffix: str = ".tmp",
    end: str = "",
    **dump_kwargs,
) -> None:
    """``json.dump(obj, **dump_kwargs)`` (+ ``end``) into ``path``, atomically.  Streamed to the
    file: an exported ``tokenizer.json`` would be a ~40 MB str (UCS-4: its audio characters lie
    past U+FFFF) if it were built in memory first."""
    with atomic_open(path, durable=durable, tmp_suffix=tmp_suffix) as f:
        json.dump(obj, f, **dump_kwargs)
        f.write(end)


def write_jsonl_atomic(
    path: str,
    rows: Iterable[object],
    *,
    durable: bool = False,
    tmp_suffix: str = ".tmp",
    **dump_kwargs,
) -> None:
    """One ``json.dumps(row, **dump_kwargs)`` line per row into ``path``, atomically."""
    with atomic_open(path, durable=durable, tmp_suffix=tmp_suffix) as f:
        for row in rows:
            f.write(json.dumps(row, **dump_kwargs) + "\n")
