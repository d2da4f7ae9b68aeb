"""``yodas-parquet``: the YODAS parquet conversion, one utterance per row.

Columns, as the ``espnet/yodas`` loading script declares them (``yodas.py`` at 70db5c5,
``_info``: ``id``, ``utt_id``, ``audio`` = ``Audio(sampling_rate=16_000)``, ``text``) and as
the hub's parquet conversion (``refs/convert/parquet``, ``<lang>/partial-train/NNNN.parquet``)
stores them: ``audio`` is the struct ``{bytes, path}`` of the clip itself.  ``utt_id`` is a
YODAS segment id ``<video id>-<index:05d>-<start_cs:08d>-<end_cs:08d>`` (the same scheme as
YODAS2's, see :mod:`.yodas2`), from which the recording (video) and the segment's start time
come; a ``video_id``/``recording_id`` column and ``start``/``end`` columns, when present, are
used instead.

Grouping, streaming: consecutive rows of one recording form one document, utterances ordered
by segment start time (row order among equal or unknown times).  A recording id that comes
back after another recording starts a new document, ``<id>#2``, and nothing is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import audio_cell, number
from megatron_soda.data.readers.yodas2 import split_segment_id
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance, unexpected

_UTT_COLUMNS = ("utt_id", "id")
_REC_COLUMNS = ("video_id", "recording_id")


def _split_segment_id(utt_id: str) -> tuple[str, float] | None:
    """(recording id, start seconds) of a YODAS segment id, None if it is not one."""
    try:
        audio_id, _, start, _ = split_segment_id(utt_id)
    except ValueError:
        return None
    return (audio_id, start) if audio_id else None


class _Grouper:
    """Consecutive rows of one recording -> a Recording (sorted by start on flush)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rec: Recording | None = None
        self.key: str | None = None
        self.starts: list[tuple[float, int]] = []
        self.visits: dict[str, int] = {}

    def add(self, rec_id: str, start: float | None, utt: Utterance) -> Iterator[Recording]:
        if rec_id != self.key:
            yield from self.flush()
            n = self.visits[rec_id] = self.visits.get(rec_id, 0) + 1
            self.rec, self.key = Recording(rec_id if n == 1 else f"{rec_id}#{n}", self.path), rec_id
        k = len(self.rec.utterances)
        self.starts.append((float("inf") if start is None else start, k))
        self.rec.utterances.append(utt)

    def flush(self) -> Iterator[Recording]:
        if self.rec is not None:
            self.rec.utterances = [self.rec.utterances[k] for _, k in sorted(self.starts)]
            yield self.rec
        self.rec, self.key, self.starts = None, None, []


def read_yodas_parquet(
    path: str, options: ReaderOptions | None = None
) -> Iterator[Recording | InputError]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        yield InputError(path, "<file>", f"not a readable parquet file ({e})")
        return
    names = pf.schema_arrow.names
    utt_col = next((c for c in _UTT_COLUMNS if c in names), None)
    if "audio" not in names or "text" not in names or utt_col is None:
        yield InputError(
            path,
            "<file>",
            "expected YODAS columns 'utt_id' (or 'id'), 'audio', 'text' (and optionally "
            f"'video_id'/'recording_id', 'start', 'end', 'duration'), found {sorted(names)}",
        )
        return
    rec_col = next((c for c in _REC_COLUMNS if c in names), None)
    extra = [c for c in ("start", "end", "duration") if c in names]
    columns = [c for c in (utt_col, rec_col, "audio", "text", *extra) if c]
    base = os.path.dirname(os.path.abspath(path))
    groups = _Grouper(path)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=16, columns=columns):
            for obj in batch.to_pylist():
                row += 1
                try:
                    item = _row(path, base, row, obj, utt_col, rec_col)
                except Exception as e:  # one row's surprise is that row's error
                    item = InputError(path, f"row {row}", unexpected(e, path, f"row {row}"))
                if isinstance(item, InputError):
                    yield item
                else:
                    yield from groups.add(*item)
    except Exception as e:
        yield InputError(path, f"row {row + 1}", f"parquet data unreadable ({e})")
    yield from groups.flush()


def _num(obj: dict, key: str) -> float | None:
    """A time column's value in seconds, None if absent or not a number; ValueError if NaN,
    infinite or negative (a NaN start would also scramble the utterance order)."""
    v = obj.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    return number(obj, key)


def _row(
    path: str, base: str, row: int, obj: dict, utt_col: str, rec_col: str | None
) -> tuple[str, float | None, Utterance] | InputError:
    raw_id = obj.get(utt_col)
    uid = str(raw_id) if raw_id not in (None, "") else f"{os.path.basename(path)}:row{row}"
    parsed = _split_segment_id(uid)
    rec_id = obj.get(rec_col) if rec_col else None
    if rec_id in (None, ""):
        if parsed is None:
            return InputError(
                path, uid, f"no recording id: {utt_col} is not <video>-<index>-<start>-<end>"
            )
        rec_id = parsed[0]
    text = obj.get("text")
    if not isinstance(text, str):
        return InputError(path, uid, "row has no 'text'")
    data, apath = audio_cell(obj.get("audio"), base)
    if not data and not apath:
        return InputError(path, uid, "row has no audio bytes or path")
    try:
        start, duration = _num(obj, "start"), _num(obj, "duration")
    except ValueError as e:
        return InputError(path, uid, str(e))
    if start is None and parsed is not None:
        start = parsed[1]
    ref = AudioRef(
        path=None if data else apath,
        data=data or None,
        name=f"{os.path.basename(path)}:{uid}",
        expected_duration=duration,
    )
    return str(rec_id), start, Utterance(uid, text, ref)
