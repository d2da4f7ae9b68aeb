"""What every benchmark reader shares: the per-item error, finding a split's parquet files in a
Hugging Face dataset snapshot, reading rows with the columns checked once, and turning a cell
into a :class:`~megatron_soda.tasks.items.Member`.

A dataset snapshot is what ``hf download REPO --repo-type dataset --local-dir DIR`` leaves: the
repository's files as published, parquet shards named ``<split>-NNNNN-of-NNNNN.parquet``
(``data/`` or one folder per config), or, for the Hub's converted branch
(``--revision refs/convert/parquet``), ``<config>/<split>/NNNN.parquet``.  Audio columns are the
``datasets`` Audio feature as stored: a struct ``{"bytes": <encoded file>, "path": <name>}``.
Rows are numbered from 0 within their file, as the dataset viewer shows them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from megatron_soda.tasks.items import Member

_BATCH_ROWS = 16  # audio rows are large: a small batch keeps memory bounded


@dataclass(frozen=True)
class ItemError:
    """One item that could not be read: where (file and row or line) and why.  The other items
    of the file are still read."""

    where: str
    reason: str

    def to_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason}

    def __str__(self) -> str:
        return self.reason if self.reason.startswith(self.where) else f"{self.where}: {self.reason}"


def split_parquet_files(path: str, split: str) -> list[str]:
    """The parquet files of ``split`` under ``path`` (a snapshot directory), sorted; ``path``
    itself when it is a file.  A file belongs to the split when its name starts with
    ``<split>-`` or one of its folders (below ``path``) is named ``<split>``.  Hidden folders
    (``.cache/`` of the Hub client) are skipped."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    found, chosen = [], []
    for dirpath, dirnames, files in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dirs = os.path.relpath(dirpath, path).split(os.sep)
        for name in sorted(files):
            if not name.endswith(".parquet"):
                continue
            full = os.path.join(dirpath, name)
            found.append(os.path.relpath(full, path))
            if name.startswith(f"{split}-") or split in rel_dirs:
                chosen.append(full)
    if not chosen:
        listed = ", ".join(found[:10]) + (" ..." if len(found) > 10 else "")
        raise FileNotFoundError(
            f"{path}: no parquet file of split {split!r} (named '{split}-*.parquet' or in a "
            f"folder '{split}/'); parquet files found: {listed or 'none'}"
        )
    return chosen


def check_columns(path: str, names: Sequence[str], required: Sequence[str]) -> None:
    """Raise ValueError naming the file, the expected and the found columns when one is missing."""
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {list(required)}, found {sorted(names)}"
        )


def parquet_columns(path: str) -> list[str]:
    """The column names of a parquet file (ValueError when it is not a readable parquet file)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: not a readable parquet file ({e})") from e


def parquet_rows(path: str, columns: Sequence[str]) -> Iterator[tuple[int, dict] | ItemError]:
    """``(row, record)`` for each row of the file, reading only ``columns`` (text tasks never
    load the audio).  Data that becomes unreadable midway ends the file with one ItemError."""
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=list(columns)):
            for rec in batch.to_pylist():
                yield row, rec
                row += 1
    except Exception as e:
        yield ItemError(f"{path} row {row}", f"parquet data unreadable from here on ({e})")


def where(path: str, row: int) -> str:
    return f"{path} row {row}"


def audio_member(cell: object, base: str, name: str) -> Member:
    """A Member from an audio cell: the ``datasets`` struct ``{"bytes", "path"}`` (the bytes
    when present, else the path), raw bytes, or a path string; a relative path is resolved
    against ``base``.  ValueError says why a cell cannot be used."""
    data, apath = None, None
    if isinstance(cell, dict):
        data, apath = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, (bytes, bytearray)):
        data = cell
    elif isinstance(cell, str):
        apath = cell
    elif cell is not None:
        raise ValueError(f"{name}: audio is {type(cell).__name__}, not a struct, bytes or path")
    if data:
        return Member(audio=bytes(data), name=name)
    if isinstance(apath, str) and apath:
        full = apath if os.path.isabs(apath) else os.path.join(base, apath)
        if os.path.isfile(full):
            return Member(audio=full, name=name)
        raise ValueError(f"{name}: no audio bytes, and audio file {full} not found")
    raise ValueError(f"{name}: no audio (neither bytes nor a path)")


def text_member(value: object, name: str, lower: bool = False) -> Member:
    """A Member from a text cell; ValueError for a missing, empty or non-string value."""
    if not isinstance(value, str):
        raise ValueError(f"{name}: text is {type(value).__name__}, not a string")
    if not value.strip():
        raise ValueError(f"{name}: text is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name}: text is not encodable as UTF-8 ({e.reason})") from None
    return Member(text=value.lower() if lower else value, name=name)


def parquet_items(plan: Sequence[tuple[str, Sequence[str]]],
                  make: Callable[[str, int, dict], Any]) -> Iterator[Any]:
    """``make(file, row, record)`` for every row of every ``(file, columns)`` in ``plan``; a
    row that raises becomes that row's :class:`ItemError` and the rest are still read."""
    for f, columns in plan:
        for got in parquet_rows(f, columns):
            if isinstance(got, ItemError):
                yield got
                continue
            row, rec = got
            try:
                yield make(f, row, rec)
            except ValueError as e:
                yield ItemError(where(f, row), str(e))
            except Exception as e:  # one row's surprise is that row's error
                yield ItemError(where(f, row), f"unexpected {type(e).__name__}: {e}")
