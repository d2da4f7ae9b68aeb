"""Results files: ``RESULT.json`` (metrics + the run's settings and provenance) and
``ITEMS.jsonl`` (one line per item), both written atomically."""

from __future__ import annotations

import datetime
import math
import os
import socket
from collections.abc import Iterable
from typing import Any

from megatron_soda.atomic_files import write_json_atomic, write_jsonl_atomic


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def run_record(args: Any, loaded: Any = None, **extra: Any) -> dict[str, Any]:
    """Settings and provenance for a results file."""
    skip = {"func"}
    record: dict[str, Any] = {
        "settings": {k: v for k, v in sorted(vars(args).items()) if k not in skip},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }
    if loaded is not None:
        record["model"] = {
            "source": os.path.abspath(loaded.source),
            "kind": loaded.kind,
            **{k: v for k, v in loaded.info.items() if not k.startswith("_")},
        }
    record.update(extra)
    return record


def write_results(
    output: str | None, result: dict[str, Any], items_path: str | None = None,
    items: Iterable[dict[str, Any]] = (),
) -> None:
    if items_path:
        os.makedirs(os.path.dirname(os.path.abspath(items_path)), exist_ok=True)
        write_jsonl_atomic(items_path, (_finite(r) for r in items), ensure_ascii=False)
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        write_json_atomic(output, _finite(result), indent=2, ensure_ascii=False, end="\n")
