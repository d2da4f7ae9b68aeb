"""What the readers share: JSON lines with per-line errors, and checked numeric fields."""

from __future__ import annotations

import json
from collections.abc import Iterator

from megatron_soda.data.records import InputError


def json_lines(path: str) -> Iterator[tuple[int, dict | InputError]]:
    """(line number, parsed object or error) for each non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            item = f"line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, InputError(path, item, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, InputError(path, item, f"not JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield (
                    lineno,
                    InputError(path, item, f"expected a JSON object, got {type(obj).__name__}"),
                )
                continue
            yield lineno, obj


def number(obj: dict, key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key!r} must be a number of seconds, got {v!r}")
    if v < 0:
        raise ValueError(f"{key!r} must be >= 0, got {v}")
    return float(v)
