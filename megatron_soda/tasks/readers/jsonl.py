"""The generic pair format: one JSON object a line,
``{"id": ..., "positive": SIDE, "negative": SIDE, "subtask": ...}`` (``subtask`` optional), where
a SIDE is an audio file path (a string; relative paths are resolved against the JSONL file's
folder), ``{"audio": path}``, or ``{"text": ...}``.  Blank lines are skipped; lines are numbered
from 1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from megatron_soda.tasks.items import Member, PairItem
from megatron_soda.tasks.readers.common import ItemError, audio_member, text_member


def read_jsonl(path: str) -> Iterator[PairItem | ItemError]:
    """The pairs of one JSONL file (FileNotFoundError when it is absent)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    return _items(path)


def _items(path: str) -> Iterator[PairItem | ItemError]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            at = f"{path} line {lineno}"
            try:
                yield _pair(json.loads(raw), base, at, lineno, path)
            except json.JSONDecodeError as e:
                yield ItemError(at, f"not valid JSON ({e.msg})")
            except UnicodeDecodeError:
                yield ItemError(at, "not valid UTF-8")
            except ValueError as e:
                yield ItemError(at, str(e))
            except Exception as e:  # one line's surprise is that line's error
                yield ItemError(at, f"unexpected {type(e).__name__}: {e}")


def _side(value: object, base: str, name: str) -> Member:
    if isinstance(value, dict):
        if "text" in value and "audio" not in value:
            return text_member(value["text"], name)
        if "audio" in value and "text" not in value:
            value = value["audio"]
            if not isinstance(value, str):
                raise ValueError(f"{name}: 'audio' must be a file path")
        else:
            raise ValueError(f"{name}: give either {{'text': ...}} or {{'audio': path}}")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be an audio file path or {{'text': ...}}")
    return audio_member(value, base, name)


def _pair(rec: object, base: str, at: str, lineno: int, path: str) -> PairItem:
    if not isinstance(rec, dict):
        raise ValueError(f"a line must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in ("positive", "negative") if k not in rec]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    raw_id = rec.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        raise ValueError(f"'id' must be a string or an integer, got {type(raw_id).__name__}")
    subtask = rec.get("subtask", "")
    if not isinstance(subtask, str):
        raise ValueError(f"'subtask' must be a string, got {type(subtask).__name__}")
    pos = _side(rec["positive"], base, f"{at} positive")
    neg = _side(rec["negative"], base, f"{at} negative")
    if pos.modality != neg.modality:
        raise ValueError(f"positive is {pos.modality} but negative is {neg.modality}")
    return PairItem(
        id=str(raw_id) if raw_id is not None else f"{os.path.basename(path)}:{lineno}",
        positive=pos,
        negative=neg,
        subtask=subtask,
    )
