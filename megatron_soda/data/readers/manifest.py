"""``jsonl``: megatron_soda's own manifest, one utterance per line:
``{"id", "audio", "text", "recording_id"?, "start"?, "end"?}`` (``audio`` may be relative to the
manifest's directory); utterances of one ``recording_id`` form one document."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import manifest_lines, number
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance


def _utterance(uid: str, obj: dict, local: Callable[[str], str]) -> tuple[str, Utterance]:
    """(recording id, utterance) of one line; ValueError for a bad value."""
    audio, text = obj.get("audio"), obj.get("text")
    if not isinstance(audio, str) or not audio:
        raise ValueError("missing 'audio' path")
    if not isinstance(text, str):
        raise ValueError("missing 'text'")
    start, end = number(obj, "start"), number(obj, "end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"'end' ({end}) must be after 'start' ({start})")
    default_rec = audio if (start is not None or end is not None) else uid
    ref = AudioRef(path=local(audio), start=start, end=end, name=f"{audio} ({uid})")
    return str(obj.get("recording_id") or default_rec), Utterance(uid, text, ref)


def read_jsonl_manifest(path: str, options: ReaderOptions | None = None) -> Iterator[Recording | InputError]:
    groups: OrderedDict[str, Recording] = OrderedDict()
    for line in manifest_lines(path, _utterance):
        if isinstance(line, InputError):
            yield line
            continue
        rec_id, utt = line
        groups.setdefault(rec_id, Recording(rec_id, path)).utterances.append(utt)
    yield from groups.values()
