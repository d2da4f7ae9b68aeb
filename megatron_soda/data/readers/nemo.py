"""``nemo``: NeMo ASR manifests, JSON lines ``{"audio_filepath", "text", "duration",
"offset"?}`` (NVIDIA/NeMo ``docs/source/asr/datasets.rst``, "Preparing Custom ASR Data":
``duration`` in seconds is required, ``offset`` optional; relative paths resolve against the
manifest's directory here).

Grouping, streaming: consecutive lines with the same ``audio_filepath`` form one recording
(one document), so memory stays at one recording whatever the manifest's size; a file that
comes back after another one starts a new document, ``<audio_filepath>#2`` (the jsonl reader
instead groups a whole file in memory by ``recording_id``).  A line with ``offset`` is the
segment ``[offset, offset + duration]`` of its file; a line without one is the whole file,
and its ``duration`` is checked against the decoded length (a truncated file is rejected).
Utterance ids: the line's ``id``/``utt_id`` if present, else ``<manifest name>:<line>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import json_lines, number
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance, unexpected


def _utterance(path: str, base: str, lineno: int, obj: dict) -> tuple[str, Utterance]:
    """(audio_filepath as written, utterance); ValueError for a line that cannot be used."""
    audio, text = obj.get("audio_filepath"), obj.get("text")
    if not isinstance(audio, str) or not audio:
        raise ValueError("missing 'audio_filepath'")
    if not isinstance(text, str):
        raise ValueError("missing 'text'")
    duration = number(obj, "duration")
    if duration is None or duration <= 0:
        raise ValueError(f"'duration' must be a positive number of seconds, got {duration!r}")
    offset = number(obj, "offset")
    uid = obj.get("id", obj.get("utt_id"))
    uid = str(uid) if uid is not None else f"{os.path.basename(path)}:{lineno}"
    full = audio if os.path.isabs(audio) else os.path.join(base, audio)
    if offset is None:
        ref = AudioRef(path=full, name=f"{audio} ({uid})", expected_duration=duration)
    else:
        ref = AudioRef(path=full, start=offset, end=offset + duration, name=f"{audio} ({uid})")
    return audio, Utterance(uid, text, ref)


def read_nemo_manifest(
    path: str, options: ReaderOptions | None = None
) -> Iterator[Recording | InputError]:
    base = os.path.dirname(os.path.abspath(path))
    current: Recording | None = None
    current_audio: str | None = None
    visits: dict[str, int] = {}
    for lineno, obj in json_lines(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        try:
            audio, utt = _utterance(path, base, lineno, obj)
        except Exception as e:  # ValueError: a bad value; anything else: unforeseen
            uid = obj.get("id", obj.get("audio_filepath", ""))
            item = f"{uid} (line {lineno})" if uid else f"line {lineno}"
            why = str(e) if isinstance(e, ValueError) else unexpected(e, path, item)
            yield InputError(path, item, why)
            continue
        if audio != current_audio:
            if current is not None:
                yield current
            n = visits[audio] = visits.get(audio, 0) + 1
            current = Recording(audio if n == 1 else f"{audio}#{n}", path)
            current_audio = audio
        current.utterances.append(utt)
    if current is not None:
        yield current
