"""The sample corpus generator: formats as the readers expect them, real speech at the
recorded offsets, byte-for-byte determinism, and a bad-input set that is bad as labelled."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.testing import bad_inputs, sample_data, sample_text

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

N_REC, N_UTT = 5, 2  # 5 jsonl recordings cover the 5 audio kinds, both layouts


def _make(out: Path, seed: int = 0) -> dict:
    return sample_data.make_sample_corpus(out, num_recordings=N_REC, utterances_per_recording=N_UTT,
                                          seed=seed, text_source="fallback", workers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample")
    return out, _make(out)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bad")
    return out, bad_inputs.make_bad_inputs(out)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _check_speech_at(x: np.ndarray, sr: int, spans: list[tuple[float, float]]) -> None:
    """Speech inside every [start, end], silence between them."""
    x = x.mean(axis=1) if x.ndim == 2 else x
    prev_end = 0.0
    for start, end in spans:
        assert 0.0 <= prev_end < start < end <= len(x) / sr + 1e-9
        mid = x[int(start * sr) + int(0.1 * sr): int(end * sr) - int(0.1 * sr)]
        assert _rms(mid) > 0.02, (start, end, _rms(mid))
        gap = x[int(prev_end * sr) + 8: int(start * sr) - 8]
        assert _rms(gap) < 0.005, (prev_end, start, _rms(gap))
        prev_end = end


def test_summary(corpus):
    out, summary = corpus
    assert json.loads((out / "sample.json").read_text()) == summary
    assert summary["text_source"]["kind"] == "fallback"
    for fmt in ("jsonl", "webdataset", "parquet"):
        st = summary["formats"][fmt]
        assert st["recordings"] == N_REC and st["utterances"] == N_REC * N_UTT
        assert 3.0 * N_REC * N_UTT < st["seconds"] <= st["audio_seconds"]
    assert summary["formats"]["text"]["documents"] == 4 * N_REC


def test_jsonl_manifest(corpus):
    out, _ = corpus
    rows = [json.loads(line) for line in (out / "speech.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == N_REC * N_UTT and len({r["id"] for r in rows}) == len(rows)
    seen_kinds, order = set(), []
    for r in rows:
        assert {"id", "audio", "text", "recording_id"} <= r.keys() and r["text"].strip()
        if not order or order[-1] != r["recording_id"]:
            order.append(r["recording_id"])
        info = sf.info(out / r["audio"])
        seen_kinds.add((Path(r["audio"]).suffix[1:], info.subtype, info.samplerate, info.channels))
        if "start" in r:
            assert 0 <= r["start"] < r["end"] <= info.duration
        else:
            assert 1.5 < info.duration < 16.0
    assert order == sorted(set(order))  # utterances of a recording are contiguous and in order
    assert seen_kinds == {(k[0], k[2], k[3], k[4]) for k in sample_data.JSONL_KINDS}
    long = {r["audio"] for r in rows if "start" in r}
    assert long and all(sum(r["audio"] == a for r in rows) == N_UTT for a in long)
    for audio in long:  # offsets point at speech in wav/flac/ogg/mp3 alike
        x, sr = sf.read(out / audio, dtype="float32")
        _check_speech_at(x, sr, [(r["start"], r["end"]) for r in rows if r["audio"] == audio])


def test_webdataset_layout(corpus):
    out, _ = corpus
    with tarfile.open(out / "emilia" / "EN-B000000.tar") as tar:
        members = tar.getmembers()
        assert len(members) == 2 * N_REC * N_UTT
        for mp3, meta in zip(members[::2], members[1::2]):
            key = mp3.name[: -len(".mp3")]
            assert mp3.name.endswith(".mp3") and meta.name == key + ".json"
            j = json.loads(tar.extractfile(meta).read())
            spk = key.rsplit("_W", 1)[0]
            assert list(j) == ["id", "wav", "text", "duration", "speaker", "language", "dnsmos"]
            assert j["id"] == key and j["speaker"] == spk and j["language"] == "en"
            assert j["wav"] == f"{spk.rsplit('_S', 1)[0]}/{spk}/mp3/{key}.mp3"
            assert j["text"].startswith(" ") and j["text"].strip() and 3.0 <= j["dnsmos"] <= 3.7
            x, sr = sf.read(io.BytesIO(tar.extractfile(mp3).read()), dtype="float32")
            assert sr == 24000 and abs(len(x) / sr - j["duration"]) < 1e-6 and _rms(x) > 0.01
    assert [m.name for m in members[:2]] == ["EN_B00000_S00000_W000000.mp3", "EN_B00000_S00000_W000000.json"]


def test_parquet_layout(corpus):
    import pyarrow.parquet as pq

    out, _ = corpus
    table = pq.read_table(out / "yodas" / "part-00000.parquet")
    assert table.schema.equals(sample_data.yodas_schema())
    rows = table.to_pylist()
    assert len(rows) == N_REC
    for row in rows:
        assert row["audio"]["path"].startswith(row["id"]) and len(row["utterances"]) == N_UTT
        x, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert abs(len(x) / sr - row["duration"]) < 1e-6
        assert all(u["utt_id"].startswith(row["id"] + "-") and u["text"] for u in row["utterances"])
        _check_speech_at(x, sr, [(u["start"], u["end"]) for u in row["utterances"]])


def test_text_jsonl(corpus):
    out, _ = corpus
    docs = [json.loads(line) for line in (out / "text.jsonl").read_text("utf-8").splitlines()]
    assert len(docs) == 4 * N_REC and all(list(d) == ["text"] and len(d["text"]) >= 300 for d in docs)


def test_deterministic(corpus, tmp_path):
    out, summary = corpus
    assert _make(tmp_path / "again") == summary
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:  # ogg and mp3 included
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = sample_data.make_sample_corpus(tmp_path / "seed1", 2, 2, seed=1, formats=("jsonl",),
                                           text_source="fallback", workers=1)
    assert other["formats"]["jsonl"]["seconds"] != summary["formats"]["jsonl"]["seconds"]


def _wav_header_ok(data: bytes) -> bool:
    """False when a RIFF/WAVE data chunk claims more bytes than the file holds."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return True
    pos = 12
    while pos + 8 <= len(data):
        size = struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + size > len(data):
            return False
        pos += 8 + size + (size & 1)
    return True


def _verdict_jsonl_line(base: Path, raw: bytes) -> str:
    """A strict reference reader: 'ok' or 'error' for one manifest line."""
    try:
        obj = json.loads(raw.decode("utf-8"))
        path = base / obj["audio"]
        if not isinstance(obj["text"], str):
            return "error"
        data = path.read_bytes()
        x, sr = sf.read(io.BytesIO(data), dtype="float32")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, OSError, sf.LibsndfileError):
        return "error"
    if not data or not _wav_header_ok(data) or not np.isfinite(x).all():
        return "error"
    if "start" in obj and not (0 <= obj["start"] < obj["end"] <= len(x) / sr):
        return "error"
    return "ok"


def test_bad_inputs(bad):
    out, expected = bad
    assert json.loads((out / "expected.json").read_text("utf-8")) == expected
    lines = (out / "speech.jsonl").read_bytes().split(b"\n")[:-1]
    assert len(lines) == len(expected["jsonl"]["lines"])
    codes = {e["code"] for e in expected["jsonl"]["lines"]}
    assert {"missing_file", "empty_file", "truncated_wav", "truncated_flac", "not_audio", "nan_samples",
            "invalid_json", "invalid_utf8", "missing_text", "stereo_44k", "pcm_u8", "long_silence",
            "non_ascii_text"} <= codes
    for e in expected["jsonl"]["lines"]:
        assert _verdict_jsonl_line(out, lines[e["line"] - 1]) == e["expect"], e
    silence = sf.info(out / "audio" / "silence_10min.flac")
    assert silence.duration == 600.0 and (out / "audio" / "silence_10min.flac").stat().st_size < 100_000

    with tarfile.open(out / expected["webdataset"]["paths"][0]) as tar:
        for item in expected["webdataset"]["items"]:
            data = tar.extractfile(item["key"] + ".mp3").read()
            json.loads(tar.extractfile(item["key"] + ".json").read())
            try:
                sf.read(io.BytesIO(data))
                got = "ok"
            except sf.LibsndfileError:
                got = "error"
            assert got == item["expect"], item

    import pyarrow.parquet as pq

    rows = pq.read_table(out / expected["parquet"]["paths"][0]).to_pylist()
    for item in expected["parquet"]["rows"]:
        row = rows[item["row"]]
        assert row["id"] == item["id"] and [u["utt_id"] for u in row["utterances"]] == item["utt_ids"]
        try:
            sf.read(io.BytesIO(row["audio"]["bytes"]))
            got = "ok"
        except sf.LibsndfileError:
            got = "error"
        assert got == item["expect"], item


def test_text_extraction():
    play = ("HAMLET\n\nby William Shakespeare\n\nPERSONS REPRESENTED.\n\nClaudius, King of Denmark.\n\n"
            "ACT I.\n\nScene I. Elsinore.\n\n[Francisco at his post. Enter to him Bernardo.]\n\n"
            "Ber.\nWho's there?\n\nFran.\nNay, answer me: stand, and unfold yourself.\n[Exit.]\n\n"
            "HORATIO.\nFriends to this ground.\n")
    assert sample_text.parse_paragraphs(play) == [
        "Who's there?", "Nay, answer me: stand, and unfold yourself.", "Friends to this ground."]
    wrapped = "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody line.\n*** END OF THIS PROJECT ***\nLicence."
    assert sample_text.clean_gutenberg(wrapped).strip() == "Body line."
    paragraphs = sample_text.read_fallback()
    text = "\n".join(paragraphs)
    assert 20_000 < len(text) < 40_000 and "Gutenberg" not in text and "by William" not in text
    utts = sample_text.split_utterances(paragraphs)
    words = [len(u.split()) for u in utts]
    assert len(utts) > 200 and max(words) <= 32 and np.mean(np.array(words) >= 11) > 0.95
