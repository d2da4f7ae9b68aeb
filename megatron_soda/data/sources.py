"""Readers for the public input formats.  Each yields records in file order, and an
:class:`InputError` (never an exception) for an item it cannot use, so one bad line or
member never costs the rest of the file.

* ``jsonl``      manifest lines ``{"id", "audio", "text", "recording_id"?, "start"?, "end"?}``
                 (``audio`` may be relative to the manifest's directory)
* ``webdataset`` Emilia tars: ``<key>.mp3`` + ``<key>.json`` (``id``, ``text``, ``duration``,
                 ``speaker``); consecutive members of one speaker form a recording
* ``parquet``    YODAS rows: one long recording each, ``audio`` (bytes or path) + a list of
                 utterances (``text``, ``start``, ``end``)
* ``text``       JSONL with the text under ``--json-keys`` (Megatron's convention)
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from megatron_soda.data.records import AudioRef, InputError, Recording, TextDocument, Utterance

SPEECH_FORMATS = ("jsonl", "webdataset", "parquet")
INPUT_FORMATS = SPEECH_FORMATS + ("text",)
AUDIO_EXTENSIONS = ("mp3", "wav", "flac", "ogg", "opus", "m4a")


def _json_lines(path: str) -> Iterator[tuple[int, dict | InputError]]:
    """(line number, parsed object or error) for each non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            item = f"line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, InputError(path, item, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, InputError(path, item, f"not JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield (
                    lineno,
                    InputError(path, item, f"expected a JSON object, got {type(obj).__name__}"),
                )
                continue
            yield lineno, obj


def _number(obj: dict, key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key!r} must be a number of seconds, got {v!r}")
    if v < 0:
        raise ValueError(f"{key!r} must be >= 0, got {v}")
    return float(v)


def read_jsonl_manifest(path: str) -> Iterator[Recording | InputError]:
    base = os.path.dirname(os.path.abspath(path))
    groups: OrderedDict[str, Recording] = OrderedDict()
    for lineno, obj in _json_lines(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        uid = str(obj.get("id", f"{os.path.basename(path)}:{lineno}"))
        item = f"{uid} (line {lineno})"
        try:
            audio, text = obj.get("audio"), obj.get("text")
            if not isinstance(audio, str) or not audio:
                raise ValueError("missing 'audio' path")
            if not isinstance(text, str):
                raise ValueError("missing 'text'")
            start, end = _number(obj, "start"), _number(obj, "end")
            if start is not None and end is not None and end <= start:
                raise ValueError(f"'end' ({end}) must be after 'start' ({start})")
        except ValueError as e:
            yield InputError(path, item, str(e))
            continue
        audio_path = audio if os.path.isabs(audio) else os.path.join(base, audio)
        default_rec = audio if (start is not None or end is not None) else uid
        rec_id = str(obj.get("recording_id") or default_rec)
        ref = AudioRef(path=audio_path, start=start, end=end, name=f"{audio} ({uid})")
        rec = groups.setdefault(rec_id, Recording(rec_id, path))
        rec.utterances.append(Utterance(uid, text, ref))
    yield from groups.values()


def _speaker_of(meta: dict, key: str) -> str:
    spk = meta.get("speaker")
    if isinstance(spk, str) and spk:
        return spk
    return key.rsplit("_W", 1)[0] if "_W" in key else key


def read_webdataset(path: str) -> Iterator[Recording | InputError]:
    """Emilia-style tar (also .tar.gz); members are paired by key, grouped by speaker."""
    try:
        tar = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as e:
        yield InputError(path, "<file>", f"not a readable tar archive ({e})")
        return
    pending: dict[str, dict] = {}  # key -> {"audio": (ext, bytes), "json": dict}
    current: Recording | None = None
    current_spk: str | None = None  # the speaker of `current` (its id may carry a #n suffix)
    spk_seen: dict[str, int] = {}

    def flush_key(key: str) -> Iterator[Recording | InputError]:
        nonlocal current, current_spk
        parts = pending.pop(key)
        if "audio" not in parts:
            yield InputError(path, key, "metadata json without an audio member")
            return
        meta = parts.get("json")
        if meta is None:
            yield InputError(path, key, "audio member without a metadata json")
            return
        if isinstance(meta, InputError):
            yield meta
            return
        text = meta.get("text")
        if not isinstance(text, str):
            yield InputError(path, key, "metadata has no 'text'")
            return
        ext, data = parts["audio"]
        dur = meta.get("duration")
        ref = AudioRef(
            data=data,
            name=f"{os.path.basename(path)}:{key}.{ext}",
            expected_duration=float(dur)
            if isinstance(dur, (int, float)) and not isinstance(dur, bool)
            else None,
        )
        spk = _speaker_of(meta, key)
        if spk != current_spk:
            if current is not None:
                yield current
            n = spk_seen.get(spk, 0) + 1
            spk_seen[spk] = n
            current = Recording(spk if n == 1 else f"{spk}#{n}", path)
            current_spk = spk
        current.utterances.append(Utterance(str(meta.get("id", key)), text, ref))

    last_key = None
    try:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            key, _, ext = base.partition(".")
            ext = ext.lower()
            if last_key is not None and key != last_key and last_key in pending:
                yield from flush_key(last_key)
            last_key = key
            data = tar.extractfile(member).read()
            slot = pending.setdefault(key, {})
            if ext == "json":
                try:
                    slot["json"] = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    slot["json"] = InputError(path, key, f"metadata json unreadable ({e})")
            elif ext in AUDIO_EXTENSIONS:
                slot["audio"] = (ext, data)
    except (tarfile.TarError, OSError, EOFError) as e:
        yield InputError(path, f"after {last_key}", f"tar archive truncated or corrupt ({e})")
    for key in list(pending):
        yield from flush_key(key)
    if current is not None:
        yield current


_ID_COLUMNS = ("id", "recording_id", "video_id")
_UTT_COLUMNS = ("utterances", "utts", "segments")


def read_parquet(path: str) -> Iterator[Recording | InputError]:
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
                yield _parquet_row(path, base, row, rec, id_col, utt_col)
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
    data, apath = None, None
    if isinstance(audio, dict):
        data, apath = audio.get("bytes"), audio.get("path")
    elif isinstance(audio, (bytes, bytearray)):
        data = bytes(audio)
    elif isinstance(audio, str):
        apath = audio
    if not data and apath:
        apath = apath if os.path.isabs(apath) else os.path.join(base, apath)
    elif not data:
        return InputError(path, rid, "row has no audio bytes or path")
    utts = rec.get(utt_col) or []
    if not isinstance(utts, list) or not utts:
        return InputError(path, rid, f"row has no {utt_col}")
    recording = Recording(rid, path)
    for k, u in enumerate(utts):
        if not isinstance(u, dict) or not isinstance(u.get("text"), str):
            return InputError(path, rid, f"utterance {k} has no text")
        try:
            start, end = _number(u, "start"), _number(u, "end")
        except ValueError as e:
            return InputError(path, rid, f"utterance {k}: {e}")
        uid = str(u.get("utt_id") or u.get("id") or f"{rid}_{k:05d}")
        name = f"{os.path.basename(path)}:{rid}"
        ref = AudioRef(
            path=None if data else apath, data=data or None, start=start, end=end, name=name
        )
        recording.utterances.append(Utterance(uid, u["text"], ref))
    return recording


def read_text_jsonl(
    path: str, json_keys: Sequence[str] = ("text",)
) -> Iterator[TextDocument | InputError]:
    for lineno, obj in _json_lines(path):
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


def read_source(path: str, fmt: str, json_keys: Sequence[str] = ("text",)) -> Iterator:
    if fmt == "jsonl":
        return read_jsonl_manifest(path)
    if fmt == "webdataset":
        return read_webdataset(path)
    if fmt == "parquet":
        return read_parquet(path)
    if fmt == "text":
        return read_text_jsonl(path, json_keys)
    raise ValueError(f"unknown input format {fmt!r}; expected one of {INPUT_FORMATS}")
