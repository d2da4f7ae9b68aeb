"""``jsonl``: megatron_soda's own manifest, one utterance per line:
``{"id", "audio", "text", "recording_id"?, "start"?, "end"?}`` (``audio`` may be relative to the
manifest's directory); utterances of one ``recording_id`` form one document."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import json_lines, number
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance, unexpected


def read_jsonl_manifest(path: str, options: ReaderOptions | None = None) -> Iterator[Recording | InputError]:
    base = os.path.dirname(os.path.abspath(path))
    groups: OrderedDict[str, Recording] = OrderedDict()
    for lineno, obj in json_lines(path):
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
            start, end = number(obj, "start"), number(obj, "end")
            if start is not None and end is not None and end <= start:
                raise ValueError(f"'end' ({end}) must be after 'start' ({start})")
        except ValueError as e:
            yield InputError(path, item, str(e))
            continue
        except Exception as e:  # a line nobody foresaw is that line's error
            yield InputError(path, item, unexpected(e, path, item))
            continue
        audio_path = audio if os.path.isabs(audio) else os.path.join(base, audio)
        default_rec = audio if (start is not None or end is not None) else uid
        rec_id = str(obj.get("recording_id") or default_rec)
        ref = AudioRef(path=audio_path, start=start, end=end, name=f"{audio} ({uid})")
        rec = groups.setdefault(rec_id, Recording(rec_id, path))
        rec.utterances.append(Utterance(uid, text, ref))
    yield from groups.values()
