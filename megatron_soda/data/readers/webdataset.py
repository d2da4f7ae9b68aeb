"""``webdataset``: Emilia tars, ``<key>.mp3`` + ``<key>.json`` (``id``, ``text``, ``duration``,
``speaker``); consecutive members of one speaker form a recording."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance

AUDIO_EXTENSIONS = ("mp3", "wav", "flac", "ogg", "opus", "m4a")


def _speaker_of(meta: dict, key: str) -> str:
    spk = meta.get("speaker")
    if isinstance(spk, str) and spk:
        return spk
    return key.rsplit("_W", 1)[0] if "_W" in key else key


def read_webdataset(path: str, options: ReaderOptions | None = None) -> Iterator[Recording | InputError]:
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
