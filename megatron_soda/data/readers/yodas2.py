"""``yodas2``: YODAS2 as published on the Hugging Face hub (``espnet/yodas2``).

Layout (huggingface.co/datasets/espnet/yodas2, ``data/<shard>/audio`` tree listings; the same
paths the SODA authors download in potsawee/tokenize-audio at 2070990,
``yodas2-mimi/process_shard.py`` lines 306-307; entries read at lines 375-376)::

    data/<shard>/audio/<subshard>.tar.gz   <audio_id>.wav members (one per video)
    data/<shard>/text/<subshard>.json      [{"audio_id": ..., "text": {<segment id>: transcript}}]

A segment id is ``<audio_id>-<index:05d>-<start_cs:08d>-<end_cs:08d>``, times in centiseconds;
the audio id itself may contain ``-``, so it is parsed from the right (process_shard.py lines
400-412). Known defects of the real data (process_shard.py lines 414-434): segments with
start == end (``Y65x5_9PNO8-00026-00003279-00003279`` in en000/00000000), and transcripts
running past the end of the audio (``Yg-Y2--S7q8``: 18 min of audio, 31.7 min of
transcript). Each is reported per segment here, as are malformed ids, a wav without a json
entry, a json entry without its wav, and a corrupt tar.

The work unit is the tar.gz; its transcripts are ``../text/<subshard>.json``
(:func:`transcript_path`). The json (MBs) is loaded whole; the tar is streamed and only the
current wav member is held. Members are matched by base name, wherever they sit in the tar
(the authors look them up with ``rglob``, process_shard.py line 379). One document per
``audio_id``, in tar order, utterances in segment-index order.
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from megatron_soda.audio.files import special_file_reason
from megatron_soda.audio.sources import LENGTH_SLACK_S
from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import refused_member
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance, unexpected


def transcript_path(tar_path: str) -> str:
    """``data/<shard>/audio/<subshard>.tar.gz`` -> ``data/<shard>/text/<subshard>.json``."""
    audio_dir, name = os.path.split(os.path.abspath(tar_path))
    stem = name[: -len(".tar.gz")] if name.endswith(".tar.gz") else name.split(".")[0]
    return os.path.join(os.path.dirname(audio_dir), "text", f"{stem}.json")


def tar_path_for_transcript(json_path: str) -> str:
    """The inverse of :func:`transcript_path`."""
    text_dir, name = os.path.split(os.path.abspath(json_path))
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return os.path.join(os.path.dirname(text_dir), "audio", f"{stem}.tar.gz")


@dataclass
class Segment:
    id: str
    index: int
    start: float  # seconds
    end: float
    text: str


def split_segment_id(seg_id: str) -> tuple[str, int, float, float]:
    """(audio id, index, start s, end s) of ``<audio_id>-<index>-<start_cs>-<end_cs>``, parsed
    from the right (the audio id may contain ``-``); ValueError if malformed."""
    parts = seg_id.rsplit("-", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(
            f"malformed segment id {seg_id!r} (expected <audio_id>-<index>-<start_cs>-<end_cs>)"
        )
    return parts[0], int(parts[1]), int(parts[2]) / 100.0, int(parts[3]) / 100.0


def parse_segment_id(seg_id: str, audio_id: str) -> tuple[int, float, float]:
    """(index, start s, end s) of a segment of ``audio_id``; ValueError if malformed or naming
    another audio id."""
    found, index, start, end = split_segment_id(seg_id)
    if found != audio_id:
        raise ValueError(f"segment id {seg_id!r} does not start with its audio id {audio_id!r}")
    return index, start, end


def _entry_segments(
    json_path: str, audio_id: str, text: dict
) -> tuple[list[Segment], list[InputError]]:
    segs: list[Segment] = []
    errors: list[InputError] = []
    for seg_id, transcript in text.items():
        try:
            index, start, end = parse_segment_id(str(seg_id), audio_id)
            if not isinstance(transcript, str):
                raise ValueError(f"transcript is {type(transcript).__name__}, not a string")
            if end <= start:
                raise ValueError(f"empty segment (end {end:.2f}s <= start {start:.2f}s)")
        except ValueError as e:
            errors.append(InputError(json_path, str(seg_id), str(e)))
            continue
        segs.append(Segment(str(seg_id), index, start, end, transcript))
    segs.sort(key=lambda s: (s.index, s.start))
    return segs, errors


def load_transcripts(
    json_path: str,
) -> tuple[dict[str, list[Segment]], list[InputError]]:
    """audio_id -> its valid segments (in index order), and the errors of the rest."""
    reason = special_file_reason(json_path)
    if reason == "no such file":
        return {}, [InputError(json_path, "<file>", "transcript json not found")]
    if reason:  # a FIFO would hang the run
        return {}, [InputError(json_path, "<file>", f"transcript json {reason}")]
    try:
        with open(json_path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError:
        return {}, [InputError(json_path, "<file>", "transcript json not found")]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [InputError(json_path, "<file>", f"transcript json unreadable ({e})")]
    if not isinstance(entries, list):
        return {}, [InputError(json_path, "<file>", "expected a JSON list of entries")]
    out: dict[str, list[Segment]] = {}
    errors: list[InputError] = []
    for k, entry in enumerate(entries):
        aid = entry.get("audio_id") if isinstance(entry, dict) else None
        if not isinstance(aid, str) or not aid:
            errors.append(InputError(json_path, f"entry {k}", "entry has no 'audio_id'"))
            continue
        text = entry.get("text")
        if not isinstance(text, dict):
            errors.append(InputError(json_path, aid, "entry's 'text' is not a mapping"))
            continue
        if aid in out:
            errors.append(InputError(json_path, aid, f"audio id repeated (entry {k})"))
            continue
        out[aid], errs = _entry_segments(json_path, aid, text)
        errors.extend(errs)
    return out, errors


def wav_duration(data: bytes) -> float:
    """Seconds of audio in a little-endian RIFF/WAVE (or RF64) file's bytes, from its header
    (ValueError if none).

    A data chunk declared longer than the bytes present (a truncated file, or RF64's
    0xFFFFFFFF) counts only what is there, so segments past the real end are caught."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, block_align, rate = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt " and size >= 16:
            _, _, rate, _, block_align = struct.unpack_from("<HHIIH", data, body)
        elif cid == b"data":
            if not rate or not block_align:
                raise ValueError("WAV data chunk before a valid fmt chunk")
            present = min(size, len(data) - body)
            return present // block_align / rate
        pos = body + size + (size & 1)
    raise ValueError("WAV file has no data chunk")


def read_yodas2(
    path: str, options: ReaderOptions | None = None
) -> Iterator[Recording | InputError]:
    """One subshard: the tar.gz at ``path`` and its ``../text/<subshard>.json``."""
    json_path = transcript_path(path)
    transcripts, errors = load_transcripts(json_path)
    yield from errors
    if not transcripts and errors and errors[0].item == "<file>":
        return
    seen: set[str] = set()
    last, reading = "<start>", None  # the last whole member, the member being read
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                refused = refused_member(member)
                if refused:
                    yield InputError(path, member.name, refused)
                    continue
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if not base.endswith(".wav"):
                    yield InputError(path, member.name, "unexpected member (not a .wav)")
                    continue
                audio_id = base[: -len(".wav")]
                if audio_id in seen:
                    yield InputError(path, audio_id, "wav repeated in the tar")
                    continue
                seen.add(audio_id)
                reading = audio_id
                data = tar.extractfile(member).read()
                last, reading = audio_id, None
                if audio_id not in transcripts:
                    yield InputError(path, audio_id, f"wav without an entry in {json_path}")
                    continue
                try:
                    yield from _recording(path, audio_id, data, transcripts[audio_id])
                except Exception as e:  # one recording's surprise is that recording's error
                    yield InputError(path, audio_id, unexpected(e, path, audio_id))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        where = reading if reading is not None else f"after {last}"
        yield InputError(path, where, f"tar archive truncated or corrupt ({e})")
    for audio_id in transcripts:
        if audio_id not in seen:
            yield InputError(path, audio_id, f"no {audio_id}.wav in the tar for this json entry")


def _recording(
    path: str, audio_id: str, data: bytes, segments: list[Segment]
) -> Iterator[Recording | InputError]:
    try:
        duration = wav_duration(data)
    except (ValueError, struct.error) as e:
        yield InputError(path, audio_id, f"{audio_id}.wav: {e}")
        return
    rec = Recording(audio_id, path)
    name = f"{os.path.basename(path)}:{audio_id}.wav"
    for s in segments:
        if s.end > duration + LENGTH_SLACK_S:  # the decoder's own tolerance
            yield InputError(
                path,
                s.id,
                f"segment [{s.start:.2f}s-{s.end:.2f}s] ends past the end of the audio "
                f"({duration:.2f}s)",
            )
            continue
        ref = AudioRef(data=data, start=s.start, end=s.end, name=name)
        rec.utterances.append(Utterance(s.id, s.text, ref))
    if rec.utterances:
        yield rec
