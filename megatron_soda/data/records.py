"""Plain records passed between the readers, the codec stage and the tokenizing stage, and
the checks every record passes on its way out of a reader (:func:`checked_items`).

The checks live here, once, rather than in each reader: whatever layout an input has, a
value that would break a later stage (a NaN or infinite time, a negative one, a lone UTF-16
surrogate, which JSON's ``"\\ud800"`` escape produces and UTF-8 cannot encode) becomes a
per-item :class:`InputError` before any stage sees it, and an exception a reader did not
foresee ends only that file, reported under the last item read, never the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class AudioRef:
    """Where an utterance's audio lives: a file or in-memory file bytes, optionally a span."""

    path: str | None = None
    data: bytes | None = None
    start: float | None = None
    end: float | None = None
    name: str = ""  # how errors refer to it (file path, tar member, parquet row)
    expected_duration: float | None = None  # from metadata, to catch truncated files

    def source_key(self) -> str:
        """Utterances with the same key are decoded from one pass over one source."""
        return self.path if self.path is not None else f"bytes:{id(self.data)}"


@dataclass
class Utterance:
    id: str
    text: str
    audio: AudioRef


@dataclass
class Recording:
    """One source recording = one training document (all its utterances, in order)."""

    id: str
    source: str  # the input file it came from
    utterances: list[Utterance] = field(default_factory=list)


@dataclass
class TextDocument:
    id: str
    source: str
    text: str


def printable(s: str) -> str:
    """``s`` with any lone surrogate written as an escape (``\\ud800``), so that it can be
    encoded as UTF-8 in a report; other text unchanged."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class InputError:
    """One rejected input: the file, which item (id or line number), and why.  Its strings
    are made encodable (:func:`printable`): an id with a lone surrogate is still reported."""

    file: str
    item: str
    reason: str
    stage: str = "read"

    def __post_init__(self) -> None:
        self.file, self.item = printable(str(self.file)), printable(str(self.item))
        self.reason = printable(str(self.reason))

    def to_dict(self) -> dict:
        return {"file": self.file, "item": self.item, "reason": self.reason, "stage": self.stage}


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(printable(str(e)).split())[:limit] or type(e).__name__


def unexpected(e: BaseException, file: str, item: str) -> str:
    """The reason reported for an exception nobody foresaw in one item (``unexpected
    <Type>: <message>``); logged as a warning, with the traceback at debug level."""
    reason = f"unexpected {type(e).__name__}: {one_line(e)}"
    logger.warning("%s: %s: %s (item skipped)", printable(file), printable(item), reason)
    logger.debug("traceback of the failure in %s", printable(item), exc_info=e)
    return reason


def text_problem(value: object, what: str) -> str | None:
    """Why a string field cannot be used (not a string, or not encodable as UTF-8), or None."""
    if not isinstance(value, str):
        return f"{what} is {type(value).__name__}, not a string"
    if value.isascii():  # the usual case, without copying the text
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{what} holds a lone UTF-16 surrogate U+{ord(value[e.start]):04X} at character {e.start}"
    return None


def time_problem(value: object, what: str) -> str | None:
    """Why a time in seconds cannot be used (not a number, NaN, infinite, negative), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{what} must be a number of seconds, got {value!r}"
    if not math.isfinite(value):
        return f"{what} must be a finite number of seconds, got {value}"
    if value < 0:
        return f"{what} must be >= 0, got {value}"
    return None


def _utterance_problem(u: Utterance) -> str | None:
    a = u.audio
    for problem in (
        text_problem(u.id, "utterance id"),
        text_problem(u.text, "transcript"),
        None if a.path is None else text_problem(a.path, "audio path"),
        time_problem(a.start, "'start'"),
        time_problem(a.end, "'end'"),
        time_problem(a.expected_duration, "duration"),
    ):
        if problem:
            return problem
    if a.start is not None and a.end is not None and a.end <= a.start:
        return f"'end' ({a.end}) must be after 'start' ({a.start})"
    if a.expected_duration is not None and a.expected_duration <= 0:
        return f"duration must be positive, got {a.expected_duration}"
    return None


def check_record(
    path: str, item: Recording | TextDocument | InputError
) -> tuple[Recording | TextDocument | None, list[InputError]]:
    """A reader's item as the stages may use it, and the errors of what was taken out: an
    utterance with a bad value is dropped (its recording keeps the others), a document or a
    recording whose own id or source is bad is dropped whole (one error per utterance)."""
    if isinstance(item, InputError):
        return None, [item]
    if isinstance(item, TextDocument):
        problem = (
            text_problem(item.id, "document id")
            or text_problem(item.source, "file name")
            or text_problem(item.text, "text")
        )
        return (None, [InputError(path, str(item.id), problem)]) if problem else (item, [])
    if not isinstance(item, Recording):
        return None, [InputError(path, "<item>", f"reader produced a {type(item).__name__}")]
    shared = text_problem(item.id, "recording id") or text_problem(item.source, "file name")
    errors: list[InputError] = []
    kept: list[Utterance] = []
    for u in item.utterances:
        problem = shared or _utterance_problem(u)
        if problem:
            errors.append(InputError(path, str(u.id), problem))
        else:
            kept.append(u)
    if not kept:
        return None, errors
    item.utterances = kept
    return item, errors


def checked_items(path: str, items: Iterator) -> Iterator[Recording | TextDocument | InputError]:
    """``items`` (a reader's output for the file ``path``) through :func:`check_record`; an
    exception raised by the reader itself ends this file with one error after the last item
    read (a generator cannot go on after raising), and the run goes on with the next file."""
    last = "<start>"
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception as e:  # a reader bug or a failure it did not foresee: this file only
            where = f"after {last}"
            yield InputError(path, where, f"{unexpected(e, path, where)}; rest of the file skipped")
            return
        rec, errors = check_record(path, item)
        yield from errors
        if rec is not None:
            last = printable(str(rec.id))
            yield rec
