"""``text``: web text (Nemotron-CC and the like), one document per JSON line or parquet row, the
text under ``--json-keys`` (several keys are joined by newlines).

The layout is told by content, not by name: parquet (``PAR1``), gzip (``1f 8b``), zstd
(``28 b5 2f fd``) or plain JSON lines.  Both stream: JSON lines through a decompressing reader
(:func:`~megatron_soda.data.readers.common.json_lines`), parquet a batch of rows at a time, so a
2 GB file costs a few MB.  A bad line or row (invalid UTF-8, not JSON, a text field missing or
not a string, empty text) is an :class:`InputError` at ``line N`` / ``row N`` (1-based); a
truncated or corrupt file ends with one at the line or row it stopped at, after everything
before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import json_lines
from megatron_soda.data.records import InputError, TextDocument, unexpected

PARQUET_MAGIC = b"PAR1"
_BATCH_ROWS = 1024


def read_text(
    path: str, options: ReaderOptions | None = None
) -> Iterator[TextDocument | InputError]:
    json_keys = (options or ReaderOptions()).json_keys
    with open(path, "rb") as f:
        head = f.read(4)
    if head == PARQUET_MAGIC:
        yield from _read_parquet(path, json_keys)
        return
    for lineno, obj in json_lines(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        yield _guarded(path, f"line {lineno}", obj, json_keys, lineno)


def _guarded(
    path: str, item: str, obj: dict, json_keys: Sequence[str], number: int
) -> TextDocument | InputError:
    """:func:`_document`, with an exception nobody foresaw reported as the item's error."""
    try:
        return _document(path, item, obj, json_keys, number)
    except Exception as e:
        return InputError(path, item, unexpected(e, path, item))


def _document(
    path: str, item: str, obj: dict, json_keys: Sequence[str], number: int
) -> TextDocument | InputError:
    values = [obj.get(k) for k in json_keys]
    if any(not isinstance(v, str) for v in values):
        missing = [k for k, v in zip(json_keys, values) if not isinstance(v, str)]
        return InputError(path, item, f"missing text field(s) {missing}")
    text = "\n".join(values)
    if not text.strip():
        return InputError(path, item, "empty text")
    doc_id = obj.get("id")
    return TextDocument(
        str(doc_id if doc_id is not None else f"{os.path.basename(path)}:{number}"), path, text
    )


def _read_parquet(path: str, json_keys: Sequence[str]) -> Iterator[TextDocument | InputError]:
    """Rows of a parquet file, a batch at a time (row groups are never loaded whole)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
    except Exception as e:  # pyarrow raises several types for a bad file
        yield InputError(path, "<file>", f"not a readable parquet file ({_one_line(e)})")
        return
    missing = [k for k in json_keys if k not in names]
    if missing:  # one error for the file, not one per row
        yield InputError(path, "<file>", f"no text column(s) {missing}; columns: {sorted(names)}")
        return
    columns = list(dict.fromkeys([*json_keys, *(["id"] if "id" in names else [])]))
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            for obj in batch.to_pylist():
                row += 1
                yield _guarded(path, f"row {row}", obj, json_keys, row)
    except Exception as e:  # a damaged page or row group: keep the rows before it
        yield InputError(path, f"row {row + 1}", f"parquet data unreadable ({_one_line(e)})")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
