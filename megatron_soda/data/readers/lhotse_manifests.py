"""``lhotse``: Lhotse manifests, read with the ``lhotse`` library (optional: ``pip install
lhotse``, imported here only).

* a CutSet (``*cuts*.jsonl[.gz]``): each ``MonoCut`` is one document, its supervisions (in
  start order) the utterances, cut from the cut's recording at ``cut.start + sup.start``;
* a recordings manifest (``<corpus>_recordings_<split>.jsonl[.gz]``, lhotse's recipe naming)
  with its supervisions manifest (the same name with ``supervisions``): one document per
  recording, its supervisions in start order.  The supervisions manifest is the unit's
  companion; naming either file of the pair gives one unit.

Lines are parsed here and each object is built by lhotse (``deserialize_item``, what
``from_jsonl_lazy`` uses), so one bad line is one error instead of the end of the file.
Supervisions are joined to recordings streaming: recipes write both in the same order, so
only supervisions that arrive ahead of their recording are held (metadata, never audio; a
recording without any supervision makes the reader look through the rest of the file).  A
supervision that turns up after its recording's document was written is reported.
Audio sources: ``file`` (relative paths resolve against the manifest's directory), ``memory``
(bytes); ``url``, ``command``, ``shar`` and multi-source recordings are reported unsupported.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance, unexpected

_SUP = re.compile(r"supervisions")
_REC = re.compile(r"recordings")


def _require_lhotse():
    try:
        import lhotse
    except ImportError as e:
        raise RuntimeError(
            "--input-format lhotse needs the lhotse library: pip install lhotse "
            "(or pip install -e '.[lhotse]')"
        ) from e
    return lhotse


def is_supervisions_manifest(path: str) -> bool:
    return bool(_SUP.search(os.path.basename(path)))


def is_skipped_manifest(path: str) -> bool:
    """Manifests that are no unit of their own (features; lhotse's own bookkeeping)."""
    return "features" in os.path.basename(path)


def recordings_path(supervisions: str) -> str:
    d, name = os.path.split(supervisions)
    return os.path.join(d, _SUP.sub("recordings", name, count=1))


def supervisions_path(path: str) -> str | None:
    """The supervisions manifest paired with a recordings manifest (None for cuts)."""
    d, name = os.path.split(path)
    if not _REC.search(name):
        return None
    return os.path.join(d, _REC.sub("supervisions", name, count=1))


def _lines(path: str) -> Iterator[tuple[int, dict | InputError]]:
    """(line number, object or error); a broken gzip stream ends with one error."""
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    yield lineno, InputError(path, f"line {lineno}", f"not a JSON line ({e})")
                    continue
                if not isinstance(obj, dict):
                    yield lineno, InputError(path, f"line {lineno}", "not a JSON object")
                    continue
                yield lineno, obj
    except (OSError, EOFError) as e:
        yield lineno + 1, InputError(path, f"line {lineno + 1}", f"file unreadable ({e})")


def _items(path: str, kind: type) -> Iterator:
    """lhotse objects of ``kind`` built from each line, or InputErrors."""
    from lhotse.serialization import deserialize_item

    for lineno, obj in _lines(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        item_id = str(obj.get("id", f"line {lineno}"))
        try:
            item = deserialize_item(dict(obj))
        except Exception as e:  # lhotse raises assorted types for a malformed manifest
            yield InputError(path, item_id, f"not a lhotse manifest item ({type(e).__name__}: {e})")
            continue
        if not isinstance(item, kind):
            yield InputError(
                path, item_id, f"expected a {kind.__name__}, got {type(item).__name__}"
            )
            continue
        yield item


def _source(path: str, rec) -> tuple[str | None, bytes | None]:
    """(file path, bytes) of a lhotse Recording's audio; ValueError if unsupported."""
    if len(rec.sources) != 1:
        raise ValueError(f"{len(rec.sources)} audio sources (one per channel) are not supported")
    src = rec.sources[0]
    if src.type == "file":
        p = str(src.source)
        return (
            p if os.path.isabs(p) else os.path.join(os.path.dirname(os.path.abspath(path)), p)
        ), None
    if src.type == "memory" and isinstance(src.source, (bytes, bytearray)):
        return None, bytes(src.source)
    raise ValueError(f"audio source of type {src.type!r} is not supported (file or memory only)")


def to_document(path: str, rec, sups: list, offset: float = 0.0, doc_id: str | None = None):
    """A lhotse Recording and its supervisions (times relative to ``offset`` in it) -> a
    Recording, plus an InputError per unusable supervision."""
    errors: list[InputError] = []
    try:
        apath, data = _source(path, rec)
        if getattr(rec, "transforms", None):
            raise ValueError("recordings with transforms (speed, volume, ...) are not supported")
    except ValueError as e:
        return None, [InputError(path, doc_id or rec.id, str(e))]
    doc = Recording(doc_id or rec.id, path)
    name = apath if apath is not None else f"{os.path.basename(path)}:{rec.id}"
    for s in sorted(sups, key=lambda s: (s.start, s.id)):
        start, end = offset + s.start, offset + s.start + s.duration
        if not isinstance(s.text, str):
            errors.append(InputError(path, s.id, "supervision has no text"))
        elif not (math.isfinite(start) and math.isfinite(end)) or s.duration <= 0 or start < 0:
            errors.append(InputError(path, s.id, f"bad span [{start:.2f}s, {end:.2f}s]"))
        else:
            ref = AudioRef(
                path=apath,
                data=data,
                start=start,
                end=end,
                name=name,
                expected_duration=rec.duration,
            )
            doc.utterances.append(Utterance(s.id, s.text, ref))
    if not doc.utterances:
        errors.append(InputError(path, doc.id, "no usable supervisions"))
        return None, errors
    return doc, errors


def read_lhotse(
    path: str, options: ReaderOptions | None = None
) -> Iterator[Recording | InputError]:
    _require_lhotse()
    sup_path = supervisions_path(path)
    if sup_path is not None:
        yield from _read_pair(path, sup_path)
    else:
        yield from _read_cuts(path)


def _read_cuts(path: str) -> Iterator[Recording | InputError]:
    from lhotse.cut import Cut, MonoCut

    for cut in _items(path, Cut):
        if isinstance(cut, InputError):
            yield cut
            continue
        if not isinstance(cut, MonoCut) or cut.recording is None:
            yield InputError(
                path, cut.id, f"{type(cut).__name__} without a recording: not supported"
            )
            continue
        try:
            doc, errors = to_document(path, cut.recording, list(cut.supervisions), cut.start, cut.id)
        except Exception as e:  # one cut's surprise is that cut's error
            doc, errors = None, [InputError(path, cut.id, unexpected(e, path, cut.id))]
        yield from errors
        if doc is not None:
            yield doc


def _read_pair(path: str, sup_path: str) -> Iterator[Recording | InputError]:
    from lhotse import Recording as LhotseRecording
    from lhotse import SupervisionSegment

    if not os.path.isfile(sup_path):
        yield InputError(path, "<file>", f"no supervisions manifest {sup_path}")
        return
    sups = _items(sup_path, SupervisionSegment)
    ahead: dict[str, list] = {}  # supervisions read before their recording
    exhausted = False

    def supervisions_of(rec_id: str) -> Iterator[InputError]:
        """Read supervisions until ``rec_id``'s run is over (the manifests share an order):
        through its first one, then until one of another recording."""
        nonlocal exhausted
        found = rec_id in ahead
        while not exhausted:
            s = next(sups, None)
            if s is None:
                exhausted = True
            elif isinstance(s, InputError):
                yield s
            else:
                ahead.setdefault(s.recording_id, []).append(s)
                if s.recording_id == rec_id:
                    found = True
                elif found:
                    break

    done: set[str] = set()  # recording ids written (ids only: to explain late supervisions)
    for rec in _items(path, LhotseRecording):
        if isinstance(rec, InputError):
            yield rec
            continue
        if rec.id in done:
            yield InputError(path, rec.id, "recording repeated in the manifest")
            continue
        yield from supervisions_of(rec.id)
        done.add(rec.id)
        try:
            doc, errors = to_document(path, rec, ahead.pop(rec.id, []))
        except Exception as e:  # one recording's surprise is that recording's error
            doc, errors = None, [InputError(path, rec.id, unexpected(e, path, rec.id))]
        yield from errors
        if doc is not None:
            yield doc
    yield from supervisions_of("\0")  # drain: report supervisions of unknown recordings
    for rec_id, orphans in ahead.items():
        why = (
            "comes after its recording's other supervisions were used (the two manifests are "
            "not in the same order)"
            if rec_id in done
            else f"its recording {rec_id!r} is not in {path}"
        )
        for s in orphans:
            yield InputError(sup_path, s.id, f"supervision not used: {why}")
