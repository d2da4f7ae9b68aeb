"""Minimal pairs in Hugging Face parquet: sWUGGY, sBLIMP, SALMon (audio) and tWUGGY, tBLIMP (the
same pairs' text), read from a local snapshot of the dataset the authors load.

Columns as the authors' harness reads them (potsawee/blueberry-eval):

- ``speed/sWUGGY``, split ``train``: ``positive``/``negative`` audio
  (sWUGGY/inference_speech_0shot.py lines 78, 111-112, 178), ``positive_word``/``negative_word``
  as text (sWUGGY/inference_text_0shot.py lines 91-92), ``id`` (line 192 of the speech script).
- ``speed/sBLIMP``, split ``train``: ``positive``/``negative`` audio
  (sBLIMP/inference_speech_0shot.py lines 111-112), ``positive_transcription``/
  ``negative_transcription`` lower-cased as text (sBLIMP/inference_text_0shot.py lines 91-92).
- ``slprl/SALMon`` config ``all`` (salmon/inference_0shot.py line 78), split ``train``:
  ``positive_audio``/``negative_audio`` (lines 111-112), sub-task ``task`` and its index ``ind``
  (lines 186, 199-200).  The repository has one folder per sub-task
  (``bg_alignment/train-00000-of-00001.parquet``, ...); config ``all`` is all of them, so a
  snapshot directory is read whole.  ``ind`` counts within a sub-task: the item id is
  ``<task>/<ind>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from megatron_soda.tasks.items import PairItem
from megatron_soda.tasks.readers.common import (
    ItemError,
    audio_member,
    check_columns,
    parquet_columns,
    parquet_items,
    split_parquet_files,
    text_member,
    where,
)


@dataclass(frozen=True)
class PairLayout:
    repo: str  # the Hugging Face dataset
    split: str
    positive: str  # column of the member that should score higher
    negative: str
    modality: str  # "audio" | "text"
    id_column: str | None = "id"  # optional: the row position stands in when absent
    subtask_column: str | None = None  # optional: the config folder stands in when absent
    lower: bool = False  # text lower-cased, as the authors' tBLIMP does


LAYOUTS: dict[str, PairLayout] = {
    "swuggy": PairLayout("speed/sWUGGY", "train", "positive", "negative", "audio"),
    "sblimp": PairLayout("speed/sBLIMP", "train", "positive", "negative", "audio"),
    "twuggy": PairLayout("speed/sWUGGY", "train", "positive_word", "negative_word", "text"),
    "tblimp": PairLayout(
        "speed/sBLIMP",
        "train",
        "positive_transcription",
        "negative_transcription",
        "text",
        lower=True,
    ),
    "salmon": PairLayout(
        "slprl/SALMon",
        "train",
        "positive_audio",
        "negative_audio",
        "audio",
        id_column="ind",
        subtask_column="task",
    ),
}


def read_hf_pairs(task: str, path: str) -> Iterator[PairItem | ItemError]:
    """The pairs of ``task`` from ``path`` (a snapshot directory or one parquet file).  Files
    and columns are checked before the first item: a missing column raises ValueError."""
    layout = LAYOUTS[task]
    plan = []
    files = split_parquet_files(path, layout.split)
    if layout.subtask_column:  # SALMon's converted branch also has pooled copies: all*/
        own = [f for f in files if not _folder(f, layout.split).startswith("all")]
        files = own or files
    for f in files:
        names = parquet_columns(f)
        check_columns(f, names, [layout.positive, layout.negative])
        extra = [c for c in (layout.id_column, layout.subtask_column) if c and c in names]
        plan.append((f, extra + [layout.positive, layout.negative]))
    return parquet_items(plan, partial(_pair, layout))


def _folder(path: str, split: str) -> str:
    """The folder naming a file's config: ``bg_alignment/train-*.parquet`` or the converted
    branch's ``bg_alignment/train/0000.parquet``."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.basename(parent) == split:
        parent = os.path.dirname(parent)
    return os.path.basename(parent)


def _config_folder(path: str, split: str) -> str:
    """The sub-task a file's folder names ("" for a pooled or plain data folder)."""
    name = _folder(path, split)
    return "" if name in ("data", "all") else name


def _pair(layout: PairLayout, f: str, row: int, rec: dict) -> PairItem:
    subtask = ""
    if layout.subtask_column is not None:
        value = rec.get(layout.subtask_column)
        subtask = str(value) if value is not None else _config_folder(f, layout.split)
    raw_id = rec.get(layout.id_column) if layout.id_column else None
    item_id = str(raw_id) if raw_id is not None else f"{os.path.basename(f)}:{row}"
    if layout.subtask_column is not None and subtask:
        item_id = f"{subtask}/{item_id}"
    name = where(f, row)
    if layout.modality == "audio":
        base = os.path.dirname(os.path.abspath(f))
        pos = audio_member(rec.get(layout.positive), base, f"{name} {layout.positive}")
        neg = audio_member(rec.get(layout.negative), base, f"{name} {layout.negative}")
    else:
        pos = text_member(rec.get(layout.positive), f"{name} {layout.positive}", layout.lower)
        neg = text_member(rec.get(layout.negative), f"{name} {layout.negative}", layout.lower)
    return PairItem(id=item_id, positive=pos, negative=neg, subtask=subtask)
