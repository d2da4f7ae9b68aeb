"""``--input-format yodas2``: the hub layout (audio/<sub>.tar.gz + text/<sub>.json), built with
tarfile+gzip from espeak-ng speech, preprocessed end to end, every utterance and defect checked."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pytest
from helpers_readers import SR, check_documents, errors_by_item, run_cli, timeline, wav_bytes

from megatron_soda.data.readers.yodas2 import parse_segment_id, read_yodas2, wav_duration
from megatron_soda.data.records import InputError, Recording
from megatron_soda.data.units import InputSpecError, WorkUnit, expand_inputs

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

TEXTS = ["Good morning.", "The cat sat down.", "Nine ships sailed.", "It is late."]


def seg_id(aid: str, k: int, span: tuple[int, int]) -> str:
    return f"{aid}-{k:05d}-{span[0]:08d}-{span[1]:08d}"


def write_subshard(shard, sub: str, wavs: list[tuple[str, bytes]], entries: list[dict]) -> str:
    """data/<shard>/audio/<sub>.tar.gz (members in the given order) + text/<sub>.json."""
    os.makedirs(shard / "audio", exist_ok=True)
    os.makedirs(shard / "text", exist_ok=True)
    tar_path = str(shard / "audio" / f"{sub}.tar.gz")
    with tarfile.open(tar_path, "w:gz") as tar:
        for aid, data in wavs:
            info = tarfile.TarInfo(f"{sub}/{aid}.wav")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(shard / "text" / f"{sub}.json", "w") as f:
        json.dump(entries, f)
    return tar_path


def video(aid: str, texts: list[str]):
    """A wav of ``texts`` and its json entry (segment dict deliberately out of order)."""
    x, spans = timeline(texts)
    segs = [
        (seg_id(aid, k, sp), t, (sp[1] - sp[0]) / 100)
        for k, (sp, t) in enumerate(zip(spans, texts))
    ]
    entry = {"audio_id": aid, "text": {s: t for s, t, _ in reversed(segs)}}
    return wav_bytes(x), entry, segs, x.size / SR


def test_segment_ids_parse_from_the_right():
    assert parse_segment_id("a-b--c-00003-00000120-00000250", "a-b--c") == (3, 1.2, 2.5)
    for bad in ("a-b-00003-00000120", "a-x-00000120-00000250", "b-00003-00000120-00000250"):
        with pytest.raises(ValueError):
            parse_segment_id(bad, "a")


def test_clean_shard_end_to_end(tmp_path, llama3_path, soda_tokenizer):
    shard = tmp_path / "data" / "en000"
    expected = {}
    subs = [[("Y-a-1_b", TEXTS[:3]), ("Zz9", TEXTS[3:])], [("Q--q", TEXTS[1:3])]]
    tars = []
    for n, videos in enumerate(subs):
        wavs, entries = [], []
        for aid, texts in videos:
            data, entry, segs, _ = video(aid, texts)
            wavs.append((aid, data))
            entries.append(entry)
            expected[aid] = segs
        tars.append(write_subshard(shard, f"{n:08d}", wavs, entries))
    # a shard directory, a tar, the tar + json pair, a glob: the same units
    assert expand_inputs([str(shard)], "yodas2") == tars
    pair = [tars[0], str(shard / "text" / "00000000.json")]
    assert expand_inputs(pair, "yodas2") == [tars[0]]
    assert expand_inputs([str(shard / "text" / "00000001.json")], "yodas2") == [tars[1]]
    assert expand_inputs([str(shard / "audio" / "*.tar.gz")], "yodas2") == tars
    prefix = tmp_path / "out"
    assert run_cli([shard], "yodas2", prefix, llama3_path) == 0
    assert errors_by_item(prefix) == {}
    check_documents(prefix, expected, soda_tokenizer)


def test_transcript_change_invalidates_the_unit(tmp_path):
    shard = tmp_path / "data" / "en000"
    tar = write_subshard(shard, "00000000", [], [])
    before = WorkUnit(tar, "yodas2").describe()
    assert before["companions"][0]["path"] == str(shard / "text" / "00000000.json")
    (shard / "text" / "00000000.json").write_text('[{"audio_id": "x", "text": {}}]')
    assert WorkUnit(tar, "yodas2").describe() != before
    assert "companions" not in WorkUnit(tar, "webdataset").describe()
    os.remove(shard / "audio" / "00000000.tar.gz")
    with pytest.raises(InputSpecError):
        expand_inputs([str(shard / "text" / "00000000.json")], "yodas2")


def test_known_defects_are_reported_per_item(tmp_path, llama3_path, soda_tokenizer):
    shard = tmp_path / "data" / "en000"
    data, entry, segs, dur = video("V-ok", TEXTS[:2])
    end_cs = int(dur * 100)
    broken = {
        "V-ok-00002-00003279-00003279": "start equals end",
        "V-ok-00003-00000300-00000200": "end before start",
        seg_id("V-ok", 4, (end_cs - 10, end_cs + 500)): "runs past the end",
        "V-ok-0000x-00000010-00000020": "malformed index",
        "V-ok-00000010-00000020": "too few fields",
        "W-00005-00000010-00000020": "another audio id",
    }
    entry["text"].update(broken)
    other, other_entry, other_segs, _ = video("W2", TEXTS[2:])
    orphan, _, _, _ = video("orphan", TEXTS[:1])
    missing = {"audio_id": "missing", "text": {"missing-00000-00000010-00000050": "lost"}}
    not_wav = ("notes", b"plain text, not a wav")
    write_subshard(
        shard,
        "00000000",
        [("V-ok", data), ("orphan", orphan), ("W2", other)],
        [entry, missing, other_entry],
    )
    with tarfile.open(shard / "audio" / "00000000.tar.gz", "r:gz") as t:
        assert len(t.getmembers()) == 3
    # a second subshard whose tar is cut short inside its second member
    big, big_entry, _, _ = video("cut", TEXTS)
    first, first_entry, first_segs, _ = video("first", TEXTS[3:])
    tar2 = write_subshard(
        shard, "00000001", [("first", first), ("cut", big), not_wav], [first_entry, big_entry]
    )
    raw = open(tar2, "rb").read()
    open(tar2, "wb").write(raw[: int(len(raw) * 0.6)])
    prefix = tmp_path / "out"
    assert run_cli([shard], "yodas2", prefix, llama3_path) == 0
    errors = errors_by_item(prefix)
    for sid in broken:
        assert sid in errors, sid
    assert "empty segment" in errors["V-ok-00002-00003279-00003279"]
    assert "past the end" in errors[seg_id("V-ok", 4, (end_cs - 10, end_cs + 500))]
    assert "without an entry" in errors["orphan"]
    assert "no missing.wav" in errors["missing"]
    assert "truncated or corrupt" in errors["cut"]  # the member being read when the tar broke
    assert len(errors) == len(broken) + 3
    check_documents(prefix, {"V-ok": segs, "W2": other_segs, "first": first_segs}, soda_tokenizer)


def test_missing_transcript_file_and_bad_wav(tmp_path):
    shard = tmp_path / "data" / "en000"
    tar = write_subshard(
        shard,
        "00000000",
        [("a", b"RIFF\0\0\0\0WAVEjunk")],
        [{"audio_id": "a", "text": {"a-00000-00000000-00000010": "x"}}],
    )
    items = list(read_yodas2(tar))
    assert [type(i) for i in items] == [InputError] and "no data chunk" in items[0].reason
    os.remove(shard / "text" / "00000000.json")
    items = list(read_yodas2(tar))
    assert len(items) == 1 and items[0].item == "<file>" and "not found" in items[0].reason
    assert not any(isinstance(i, Recording) for i in items)


def test_wav_duration_counts_only_bytes_present():
    x, _ = timeline(TEXTS[:1])
    data = wav_bytes(x)
    assert abs(wav_duration(data) - x.size / SR) < 1e-9
    assert abs(wav_duration(data[: len(data) // 2]) - (len(data) // 2 - 44) // 2 / SR) < 1e-3
