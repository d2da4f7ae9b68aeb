"""Spoken StoryCloze (Hassid et al. 2023, "Textually Pretrained Speech Language Models"): the
StoryCloze 2016 test stories synthesised by one TTS voice, each story twice, with its true fifth
sentence and with a wrong one.  Both variants are speech pairs:

- ``sstorycloze`` (sSC): the original StoryCloze wrong ending (fine causal/temporal sense);
- ``tstorycloze`` (tSC, "topic" StoryCloze): a wrong ending drawn at random from other stories.

No Hugging Face parquet copy was found; the release is the authors' two zip files of WAV files
(links in github.com/slp-rl/SpokenStoryCloze README.md), unpacked into one folder per variant.
Files pair up by the integer before the first ``_`` of their name, as slamkit reads them
(slamkit/metric/modelling_metric.py ``ModellingMetricDataset``, ``sep="_"``).  Which file of a
pair is the true ending is read from the rest of the name (``correct``/``positive``/``pos``
against ``incorrect``/``negative``/``neg``/``wrong``); a pair whose names do not say is
reported, never guessed.  The same pairs in any other form go through the generic JSONL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from megatron_soda.tasks.items import Member, PairItem
from megatron_soda.tasks.readers.common import ItemError

AUDIO_EXTENSIONS = (".wav", ".flac")
_POSITIVE = {"correct", "positive", "pos", "true"}
_NEGATIVE = {"incorrect", "negative", "neg", "wrong", "false"}
_NAME = re.compile(r"^(\d+)_(.+)$")


def read_storycloze(path: str) -> Iterator[PairItem | ItemError]:
    """The pairs of one unpacked sSC or tSC folder (searched recursively)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory of Spoken StoryCloze audio files")
    groups: dict[tuple[str, int], list[str]] = {}
    stray: list[str] = []
    for dirpath, dirnames, files in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.lower().endswith(AUDIO_EXTENSIONS) or name.startswith("."):
                continue
            m = _NAME.match(os.path.splitext(name)[0])
            full = os.path.join(dirpath, name)
            if m is None:
                stray.append(full)
            else:
                groups.setdefault((dirpath, int(m.group(1))), []).append(full)
    if not groups and not stray:
        raise FileNotFoundError(f"{path}: no {'/'.join(AUDIO_EXTENSIONS)} files found")
    return _items(path, groups, stray)


def _label(file: str) -> str | None:
    rest = _NAME.match(os.path.splitext(os.path.basename(file))[0]).group(2)
    words = set(re.split(r"[^a-z]+", rest.lower()))
    if words & _NEGATIVE:
        return "negative"
    if words & _POSITIVE:
        return "positive"
    return None


def _items(
    root: str, groups: dict[tuple[str, int], list[str]], stray: list[str]
) -> Iterator[PairItem | ItemError]:
    for file in stray:
        yield ItemError(file, "name does not start with '<number>_'")
    multi_dir = len({d for d, _ in groups}) > 1
    for (dirpath, index), files in sorted(groups.items()):
        item_id = str(index)
        if multi_dir:
            item_id = f"{os.path.relpath(dirpath, root)}/{index}"
        labels = {f: _label(f) for f in files}
        pos = [f for f in files if labels[f] == "positive"]
        neg = [f for f in files if labels[f] == "negative"]
        if len(files) != 2 or len(pos) != 1 or len(neg) != 1:
            names = ", ".join(os.path.basename(f) for f in files)
            yield ItemError(
                os.path.join(dirpath, f"{index}_*"),
                f"expected one true-ending and one wrong-ending file, found: {names}",
            )
            continue
        yield PairItem(
            id=item_id,
            positive=Member(audio=pos[0], name=pos[0]),
            negative=Member(audio=neg[0], name=neg[0]),
        )
