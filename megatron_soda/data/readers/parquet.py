"""``parquet``: one recording per row, ``audio`` (struct ``{bytes, path}``, bytes or a path) and
a list of timed utterances (``utterances``/``utts``/``segments``: ``{utt_id, text, start, end}``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import audio_cell, number
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance, unexpected

_ID_COLUMNS = ("id", "recording_id", "video_id")
_UTT_COLUMNS = ("utterances", "utts", "segments")


def read_parquet(path: str, options: ReaderOptions | None = None) -> Iterator[Recording | InputError]:
    """YODAS-style rows: one long recording each, with its list of timed utterances."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        yield InputError(path, "<file>", f"not a readable parquet file ({e})")
        return
    names = set(pf.schema_arrow.names)
    id_col = next((c for c in _ID_COLUMNS if c in names), None)
    utt_col = next((c for c in _UTT_COLUMNS if c in names), None)
    if "audio" not in names or utt_col is None:
        yield InputError(
            path,
            "<file>",
            f"expected columns 'audio' and one of {_UTT_COLUMNS}, found {sorted(names)}",
        )
        return
    base = os.path.dirname(os.path.abspath(path))
    row = 0
    columns = [c for c in (id_col, "audio", utt_col) if c]
    try:
        for batch in pf.iter_batches(batch_size=8, columns=columns):
            for rec in batch.to_pylist():
                row += 1
                try:
                    yield _parquet_row(path, base, row, rec, id_col, utt_col)
                except Exception as e:  # one row's surprise is that row's error
                    yield InputError(path, f"row {row}", unexpected(e, path, f"row {row}"))
    except Exception as e:
        yield InputError(path, f"row {row + 1}", f"parquet data unreadable ({e})")


def _parquet_row(
    path: str, base: str, row: int, rec: dict, id_col: str | None, utt_col: str
) -> Recording | InputError:
    rid = str(
        rec.get(id_col)
        if id_col and rec.get(id_col) is not None
        else f"{os.path.basename(path)}:{row}"
    )
    audio = rec.get("audio")
    data, apath = audio_cell({"path": audio} if isinstance(audio, str) else audio, base)
    if not data and not apath:
        return InputError(path, rid, "row has no audio bytes or path")
    utts = rec.get(utt_col) or []
    if not isinstance(utts, list) or not utts:
        return InputError(path, rid, f"row has no {utt_col}")
    recording = Recording(rid, path)
    for k, u in enumerate(utts):
        if not isinstance(u, dict) or not isinstance(u.get("text"), str):
            return InputError(path, rid, f"utterance {k} has no text")
        try:
            start, end = number(u, "start"), number(u, "end")
        except ValueError as e:
            return InputError(path, rid, f"utterance {k}: {e}")
        uid = str(u.get("utt_id") or u.get("id") or f"{rid}_{k:05d}")
        name = f"{os.path.basename(path)}:{rid}"
        ref = AudioRef(
            path=None if data else apath, data=data or None, start=start, end=end, name=name
        )
        recording.utterances.append(Utterance(uid, u["text"], ref))
    return recording
