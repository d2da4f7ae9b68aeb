"""``text``: web text, one document per JSON line, the text under ``--json-keys``."""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import json_lines
from megatron_soda.data.records import InputError, TextDocument


def read_text(path: str, options: ReaderOptions | None = None) -> Iterator[TextDocument | InputError]:
    json_keys = (options or ReaderOptions()).json_keys
    for lineno, obj in json_lines(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        values = [obj.get(k) for k in json_keys]
        if any(not isinstance(v, str) for v in values):
            missing = [k for k, v in zip(json_keys, values) if not isinstance(v, str)]
            yield InputError(path, f"line {lineno}", f"missing text field(s) {missing}")
            continue
        text = "\n".join(values)
        if not text.strip():
            yield InputError(path, f"line {lineno}", "empty text")
            continue
        yield TextDocument(str(obj.get("id", f"{os.path.basename(path)}:{lineno}")), path, text)
