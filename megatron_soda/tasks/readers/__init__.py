"""Benchmark readers: one module per published layout, and the registry of task names.

``read_task(task, path)`` yields the task's items (:class:`~megatron_soda.tasks.items.PairItem`
or :class:`~megatron_soda.tasks.items.ChoiceItem`) or, for an item that cannot be read, an
:class:`ItemError` naming the file, the row or line, and why; the other items are still read.
Problems with the input as a whole (no such path, no file of the evaluated split, a missing
column) raise before the first item.  Ids are checked unique across the task.

=============  ======  ==================================  ===========================
task           kind    data (local copy)                   module
=============  ======  ==================================  ===========================
swuggy         pairs   HF ``speed/sWUGGY`` (audio)         ``hf_pairs``
sblimp         pairs   HF ``speed/sBLIMP`` (audio)         ``hf_pairs``
salmon         pairs   HF ``slprl/SALMon``, all sub-tasks  ``hf_pairs``
twuggy         pairs   HF ``speed/sWUGGY`` (text columns)  ``hf_pairs``
tblimp         pairs   HF ``speed/sBLIMP`` (text columns)  ``hf_pairs``
sstorycloze    pairs   sSC WAV folder (slp-rl release)     ``storycloze``
tstorycloze    pairs   tSC WAV folder (slp-rl release)     ``storycloze``
hellaswag      choice  HF ``Rowan/hellaswag``              ``hellaswag``
jsonl          pairs   generic JSONL pairs                 ``jsonl``
=============  ======  ==================================  ===========================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from megatron_soda.tasks.items import ChoiceItem, PairItem
from megatron_soda.tasks.readers.common import ItemError
from megatron_soda.tasks.readers.hellaswag import read_hellaswag
from megatron_soda.tasks.readers.hf_pairs import LAYOUTS, read_hf_pairs
from megatron_soda.tasks.readers.jsonl import read_jsonl
from megatron_soda.tasks.readers.storycloze import read_storycloze

Item = PairItem | ChoiceItem


@dataclass(frozen=True)
class TaskReader:
    name: str
    kind: str  # "pairs" | "choice"
    read: Callable[[str], Iterator[Item | ItemError]]
    source: str  # where the data comes from, for messages and docs


def _hf(task: str) -> TaskReader:
    layout = LAYOUTS[task]
    source = f"huggingface.co/datasets/{layout.repo} (split {layout.split})"
    return TaskReader(task, "pairs", partial(read_hf_pairs, task), source)


TASKS: dict[str, TaskReader] = {
    **{t: _hf(t) for t in ("swuggy", "sblimp", "salmon", "twuggy", "tblimp")},
    "sstorycloze": TaskReader(
        "sstorycloze", "pairs", read_storycloze, "github.com/slp-rl/SpokenStoryCloze (sSC)"
    ),
    "tstorycloze": TaskReader(
        "tstorycloze", "pairs", read_storycloze, "github.com/slp-rl/SpokenStoryCloze (tSC)"
    ),
    "hellaswag": TaskReader(
        "hellaswag",
        "choice",
        read_hellaswag,
        "huggingface.co/datasets/Rowan/hellaswag (split validation)",
    ),
    "jsonl": TaskReader("jsonl", "pairs", read_jsonl, "generic JSONL pairs"),
}


def _reader(task: str) -> TaskReader:
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}") from None


def task_kind(task: str) -> str:
    """``"pairs"`` (minimal pairs, accuracy) or ``"choice"`` (multiple choice)."""
    return _reader(task).kind


def read_task(task: str, path: str) -> Iterator[Item | ItemError]:
    """The items of ``task`` read from ``path`` (a dataset snapshot directory or one file)."""
    return _unique(_reader(task).read(path))


def _unique(items: Iterator[Item | ItemError]) -> Iterator[Item | ItemError]:
    """Pass items on; a repeated id becomes an ItemError (a snapshot holding two copies of a
    split must not count its items twice)."""
    seen: dict[str, str] = {}
    for item in items:
        if not isinstance(item, ItemError):
            if item.id in seen:
                first = seen[item.id]
                item = ItemError(_origin(item), f"duplicate id {item.id!r} (first read at {first})")
            else:
                seen[item.id] = _origin(item)
        yield item


def _origin(item: Item) -> str:
    if isinstance(item, PairItem) and item.positive.name:
        return item.positive.name
    return f"item {item.id}"


__all__ = ["TASKS", "ItemError", "TaskReader", "read_task", "task_kind"]
