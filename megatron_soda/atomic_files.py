"""Write a file so that readers only ever see the old or the complete new contents: write a
temporary sibling, optionally fsync it (checkpoint metadata must survive a power loss), then
rename it over the target (atomic on POSIX).  A directory (a converted model or checkpoint) is
built in :func:`staging_dir` and swapped in by :func:`replace_dir`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
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


def _swap_names(target: str) -> tuple[str, str]:
    parent, base = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{base}.staging"), os.path.join(parent, f".{base}.replaced")


def recover_dir(target: str) -> None:
    """Clean up after a run killed while building or swapping in ``target``: its partial staging
    directory is removed, and an old ``target`` left set aside by a crash inside
    :func:`replace_dir` is restored (or, when the new one was already published, deleted)."""
    staged, aside = _swap_names(target)
    if os.path.lexists(aside):
        if os.path.lexists(target):
            shutil.rmtree(aside)
        else:
            os.rename(aside, target)
    if os.path.lexists(staged):
        shutil.rmtree(staged)


def staging_dir(target: str) -> str:
    """A fresh empty directory beside ``target`` to build its replacement in, published by
    :func:`replace_dir` (after :func:`recover_dir`)."""
    recover_dir(target)
    staged = _swap_names(target)[0]
    os.makedirs(staged)
    return staged


@contextlib.contextmanager
def replacing_dir(target: str) -> Iterator[str]:
    """A staging directory (:func:`staging_dir`) that replaces ``target`` when the block
    completes (:func:`replace_dir`); after an exception it is removed and ``target`` untouched."""
    staged = staging_dir(target)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    replace_dir(staged, target)


def replace_dir(staged: str, target: str) -> None:
    """Publish the complete directory ``staged`` (from :func:`staging_dir`) as ``target``: the old
    ``target`` is renamed aside, ``staged`` renamed into place, then the old one deleted, so a
    crash at any point leaves the old or the new directory whole (never a half-deleted one)."""
    expected, aside = _swap_names(target)
    if os.path.abspath(staged) != expected:
        raise ValueError(f"{staged} is not the staging directory of {target}")
    if os.path.lexists(target):
        os.rename(target, aside)
    os.rename(staged, target)
    if os.path.lexists(aside):
        shutil.rmtree(aside)


def fsync_path(path: str) -> None:
    """Flush ``path`` to stable storage: a file's contents, or a directory's entries (the names
    just created or renamed in it, which a file's own fsync does not cover).  File systems that
    cannot fsync a directory (EINVAL) are let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)
