"""HellaSwag (``Rowan/hellaswag``, split ``validation``: 10,042 items; the test split has no
labels) as multiple-choice items, with the text preprocessing of EleutherAI's
lm-evaluation-harness (``lm_eval/tasks/hellaswag/utils.py``: ``preprocess`` and
``process_docs``):

- context = ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``
- endings = ``[preprocess(e) for e in endings]``, label = ``int(label)``
- ``preprocess``: strip; ``" [title]"`` -> ``". "``; drop every ``[...]`` (WikiHow artifacts,
  non-greedy); one ``"  "`` -> ``" "`` pass.

The harness joins context and ending with one space (``target_delimiter``); the endings here
carry no leading space, the sequence builder adds the delimiter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from megatron_soda.tasks.items import ChoiceItem
from megatron_soda.tasks.readers.common import (
    ItemError,
    check_columns,
    parquet_columns,
    parquet_items,
    split_parquet_files,
)

REPO = "Rowan/hellaswag"
SPLIT = "validation"
_REQUIRED = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
_BRACKETS = re.compile("\\[.*?\\]")


def preprocess(text: str) -> str:
    """lm-evaluation-harness ``hellaswag/utils.py::preprocess``, the same four steps."""
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of the WikiHow part
    text = _BRACKETS.sub("", text)
    return text.replace("  ", " ")


def read_hellaswag(path: str) -> Iterator[ChoiceItem | ItemError]:
    """The validation items under ``path`` (snapshot directory or one parquet file)."""
    plan = []
    for f in split_parquet_files(path, SPLIT):
        names = parquet_columns(f)
        check_columns(f, names, _REQUIRED)
        plan.append((f, (["ind"] if "ind" in names else []) + list(_REQUIRED)))
    return parquet_items(plan, _choice)


def _choice(f: str, row: int, rec: dict) -> ChoiceItem:
    for col in ("activity_label", "ctx_a", "ctx_b"):
        if not isinstance(rec.get(col), str):
            raise ValueError(f"{col} is {type(rec.get(col)).__name__}, not a string")
    endings = rec.get("endings")
    if not isinstance(endings, list) or len(endings) < 2:
        raise ValueError(f"endings must be a list of at least 2 strings, got {endings!r}")
    if not all(isinstance(e, str) and e.strip() for e in endings):
        raise ValueError("an ending is empty or not a string")
    label = rec.get("label")
    try:
        gold = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"label {label!r} is not an integer (the test split has none)") from None
    if not 0 <= gold < len(endings):
        raise ValueError(f"label {gold} out of range for {len(endings)} endings")
    ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize()
    ind = rec.get("ind")
    return ChoiceItem(
        id=str(ind) if ind is not None else f"{os.path.basename(f)}:{row}",
        context=preprocess(rec["activity_label"] + ": " + ctx),
        endings=tuple(preprocess(e) for e in endings),
        label=gold,
    )
