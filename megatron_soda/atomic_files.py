"""Write a file so that readers only ever see the old or the complete new contents: write a
temporary sibling, optionally fsync it (checkpoint metadata must survive a power loss), then
rename it over the target (atomic on POSIX)."""

from __future__ import annotations

import json
import os


def write_text_atomic(path: str, text: str, *, durable: bool = False, tmp_suffix: str = ".tmp") -> None:
    tmp = path + tmp_suffix
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(
    path: str,
    obj: object,
    *,
    durable: bool = False,
    tmp_suffix: str = ".tmp",
    end: str = "",
    **dump_kwargs,
) -> None:
    """``json.dump(obj, **dump_kwargs)`` (+ ``end``) into ``path``, atomically."""
    text = json.dumps(obj, **dump_kwargs) + end
    write_text_atomic(path, text, durable=durable, tmp_suffix=tmp_suffix)
