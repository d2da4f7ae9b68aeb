"""``webdataset``: Emilia tars, ``<key>.mp3`` + ``<key>.json`` (``id``, ``text``, ``duration``,
``speaker``); consecutive items of one speaker form a recording.

Members are paired by key (the member path up to the first dot of its base name).  WebDataset
writers keep a key's members together, but a tar made with ``tar`` over a sorted listing may
hold all ``.flac`` members, then all ``.json`` ones: a key's members are therefore matched
within a window of :data:`WINDOW_MEMBERS` members (and :data:`WINDOW_BYTES` of held audio),
and an item is emitted as soon as both its members have arrived.  A key still incomplete
when the window moves past it, or at the end of the tar, is a per-item error that says what
ordering is required.  Link, device and FIFO members are refused, each with an error naming it
(a tar is data, never a pointer to other files).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import refused_member
from megatron_soda.data.records import (
    AudioRef,
    InputError,
    Recording,
    Utterance,
    time_problem,
    unexpected,
)

AUDIO_EXTENSIONS = ("mp3", "wav", "flac", "ogg", "opus", "m4a")
WINDOW_MEMBERS = 1024  # a key's members must lie within this many members of each other
WINDOW_BYTES = 512 << 20  # most audio bytes held while waiting for the other member of a key


def order_hint() -> str:
    return (
        f"a webdataset tar must keep each key's members within {WINDOW_MEMBERS} members of each "
        "other (e.g. <key>.flac next to <key>.json, as webdataset writers and `tar --sort=name` do)"
    )


def _speaker_of(meta: dict, key: str) -> str:
    spk = meta.get("speaker")
    if isinstance(spk, str) and spk:
        return spk
    return key.rsplit("_W", 1)[0] if "_W" in key else key


@dataclass
class _Slot:
    """What has arrived of one key: the audio member, the metadata json, their position."""

    name: str  # the key as errors and default ids show it (the base name's stem)
    first: int  # member index of the first of its members
    audio: tuple[str, bytes] | None = None
    meta: dict | InputError | None = None


class _Documents:
    """Complete items -> Recordings, consecutive items of one speaker forming one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.current: Recording | None = None
        self.current_spk: str | None = None  # the speaker of `current` (its id may carry #n)
        self.spk_seen: dict[str, int] = {}

    def add(self, slot: _Slot) -> Iterator[Recording | InputError]:
        path, key, meta = self.path, slot.name, slot.meta
        if isinstance(meta, InputError):
            yield meta
            return
        if not isinstance(meta, dict):
            yield InputError(path, key, f"metadata json is {type(meta).__name__}, not an object")
            return
        text = meta.get("text")
        if not isinstance(text, str):
            yield InputError(path, key, "metadata has no 'text'")
            return
        ext, data = slot.audio
        dur = meta.get("duration")
        if isinstance(dur, (int, float)) and not isinstance(dur, bool):
            problem = time_problem(dur, "metadata 'duration'")
            if problem or dur <= 0:
                yield InputError(path, key, problem or f"metadata 'duration' must be > 0, got {dur}")
                return
        ref = AudioRef(
            data=data,
            name=f"{os.path.basename(path)}:{key}.{ext}",
            expected_duration=float(dur)
            if isinstance(dur, (int, float)) and not isinstance(dur, bool)
            else None,
        )
        spk = _speaker_of(meta, key)
        if spk != self.current_spk:
            yield from self.flush()
            n = self.spk_seen[spk] = self.spk_seen.get(spk, 0) + 1
            self.current = Recording(spk if n == 1 else f"{spk}#{n}", path)
            self.current_spk = spk
        self.current.utterances.append(Utterance(str(meta.get("id", key)), text, ref))

    def flush(self) -> Iterator[Recording]:
        if self.current is not None:
            yield self.current
        self.current = None


def _incomplete(path: str, slot: _Slot, why: str) -> InputError:
    if slot.audio is None:
        return InputError(path, slot.name, f"metadata json without an audio member {why}; {order_hint()}")
    return InputError(path, slot.name, f"audio member without a metadata json {why}; {order_hint()}")


def read_webdataset(path: str, options: ReaderOptions | None = None) -> Iterator[Recording | InputError]:
    """Emilia-style tar (also .tar.gz); members are paired by key, grouped by speaker."""
    try:
        tar = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as e:
        yield InputError(path, "<file>", f"not a readable tar archive ({e})")
        return
    pending: OrderedDict[str, _Slot] = OrderedDict()  # incomplete keys, oldest first
    held = 0  # audio bytes in `pending`
    gone: set[str] = set()  # keys reported incomplete: their late members are not reported again
    docs = _Documents(path)
    index, last = 0, "<start>"

    def complete(key: str) -> Iterator[Recording | InputError]:
        nonlocal held
        slot = pending.pop(key)
        held -= len(slot.audio[1])
        try:
            yield from docs.add(slot)
        except Exception as e:  # one item's surprise is that item's error
            yield InputError(path, slot.name, unexpected(e, path, slot.name))

    def evict() -> Iterator[InputError]:
        """Keys the window has moved past: they can no longer be completed."""
        nonlocal held
        while pending and (index - next(iter(pending.values())).first > WINDOW_MEMBERS or held > WINDOW_BYTES):
            key, slot = pending.popitem(last=False)
            held -= len(slot.audio[1]) if slot.audio else 0
            gone.add(key)
            yield _incomplete(path, slot, "within the window")

    try:
        with tar:
            for member in tar:
                index += 1
                refused = refused_member(member)
                if refused:
                    yield InputError(path, member.name, refused)
                    continue
                if not member.isfile():
                    continue  # directories
                stem, _, ext = os.path.basename(member.name).partition(".")
                ext = ext.lower()
                if ext != "json" and ext not in AUDIO_EXTENSIONS:
                    continue
                key = os.path.join(os.path.dirname(member.name), stem)
                last = member.name
                if key in gone:
                    continue
                data = tar.extractfile(member).read()
                slot = pending.get(key)
                if slot is None or (ext == "json" and slot.meta is not None) or (
                    ext != "json" and slot.audio is not None
                ):
                    if slot is not None:  # a second member of the same kind: the first is alone
                        pending.pop(key)
                        held -= len(slot.audio[1]) if slot.audio else 0
                        yield _incomplete(path, slot, f"before another {ext} member of its key")
                    slot = pending[key] = _Slot(stem, index)
                if ext == "json":
                    try:
                        slot.meta = json.loads(data.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        slot.meta = InputError(path, stem, f"metadata json unreadable ({e})")
                else:
                    slot.audio = (ext, data)
                    held += len(data)
                if slot.audio is not None and slot.meta is not None:
                    yield from complete(key)
                yield from evict()
    except (tarfile.TarError, OSError, EOFError) as e:
        yield InputError(path, f"after {last}", f"tar archive truncated or corrupt ({e})")
    for slot in pending.values():
        yield _incomplete(path, slot, "in the tar")
    yield from docs.flush()
