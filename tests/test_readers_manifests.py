"""``--input-format nemo``, ``yodas-parquet`` and ``lhotse``: small copies of each layout
written with the real tools (json lines, pyarrow, lhotse's own manifest writers) from
espeak-ng speech, preprocessed end to end; every utterance and every defect checked."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers_readers import (
    SR,
    check_documents,
    errors_by_item,
    run_cli,
    spoken,
    timeline,
    wav_bytes,
)

from megatron_soda.data.records import Recording
from megatron_soda.data.units import expand_inputs

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

TEXTS = ["Good morning.", "The cat sat down.", "Nine ships sailed.", "It is late."]


def secs(span: tuple[int, int]) -> float:
    return (span[1] - span[0]) / 100


# ---------------------------------------------------------------------------- NeMo
def test_nemo_manifest(tmp_path, llama3_path, soda_tokenizer):
    (tmp_path / "audio").mkdir()
    long, spans = timeline(TEXTS[:3])
    sf.write(tmp_path / "audio" / "long.wav", long, SR, subtype="PCM_16")
    short = spoken(TEXTS[3])
    sf.write(tmp_path / "audio" / "short.flac", short, SR, subtype="PCM_16")
    sf.write(tmp_path / "audio" / "cut.wav", short[: short.size // 3], SR, subtype="PCM_16")
    dur = long.size / SR

    def seg(k: int) -> dict:
        s = spans[k]
        return {
            "audio_filepath": "audio/long.wav",
            "offset": s[0] / 100,
            "duration": secs(s),
            "text": TEXTS[k],
        }

    lines = [
        seg(0),
        seg(1),
        {"audio_filepath": "audio/short.flac", "duration": short.size / SR, "text": TEXTS[3]},
        seg(2),  # long.wav again after another file: a new document
        {"audio_filepath": "audio/long.wav", "offset": dur - 0.1, "duration": 1.0, "text": "x"},
        {"audio_filepath": "audio/missing.wav", "duration": 1.0, "text": "gone"},
        {"audio_filepath": "audio/cut.wav", "duration": short.size / SR, "text": "cut short"},
        {"audio_filepath": "audio/short.flac", "text": "no duration"},
        {"audio_filepath": "audio/short.flac", "duration": 1.0},
    ]
    with open(tmp_path / "train_manifest.json", "w") as f:
        for obj in lines:
            f.write(json.dumps(obj) + "\n")
        f.write("{not json\n")
    prefix = tmp_path / "out"
    assert run_cli([tmp_path / "train_manifest.json"], "nemo", prefix, llama3_path) == 0
    name = "train_manifest.json"
    errors = errors_by_item(prefix)
    assert "past the end" in errors[f"{name}:5"]
    assert "missing.wav" in errors[f"{name}:6"]
    assert "truncated or wrong file" in errors[f"{name}:7"]
    assert "'duration'" in errors["audio/short.flac (line 8)"]
    assert "'text'" in errors["audio/short.flac (line 9)"]
    assert "not JSON" in errors["line 10"]
    assert len(errors) == 6
    check_documents(
        prefix,
        {
            "audio/long.wav": [(f"{name}:{k + 1}", TEXTS[k], secs(spans[k])) for k in (0, 1)],
            "audio/short.flac": [(f"{name}:3", TEXTS[3], short.size / SR)],
            "audio/long.wav#2": [(f"{name}:4", TEXTS[2], secs(spans[2]))],
        },
        soda_tokenizer,
    )


# ---------------------------------------------------------------------- YODAS parquet
YODAS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("utt_id", pa.string()),
        ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("text", pa.string()),
    ]
)


def test_yodas_parquet(tmp_path, llama3_path, soda_tokenizer):
    rows, expected = [], {}

    def clips(vid: str, texts: list[str], first: int = 0) -> list[dict]:
        _, spans = timeline(texts)
        out = []
        for k, (t, s) in enumerate(zip(texts, spans), first):
            uid = f"{vid}-{k:05d}-{s[0]:08d}-{s[1]:08d}"
            clip = spoken(t)
            out.append(
                {
                    "utt_id": uid,
                    "audio": {"bytes": wav_bytes(clip), "path": None},
                    "text": t,
                    "_secs": clip.size / SR,
                }
            )
        return out

    a = clips("v-A_1", TEXTS[:3])
    b = clips("vidB", TEXTS[3:])
    a2 = clips("v-A_1", TEXTS[:1], first=7)
    bad = [
        {"utt_id": "no-segment-id", "audio": {"bytes": b"x", "path": None}, "text": "?"},
        {"utt_id": "vidC-00000-00000010-00000090", "audio": None, "text": "no audio"},
        {
            "utt_id": "vidC-00001-00000100-00000190",
            "audio": {"bytes": b"RIFF junk", "path": None},
            "text": "corrupt audio",
        },
    ]
    # recording A's rows arrive out of start order: the document is in start order
    for n, r in enumerate([a[1], a[0], a[2], *b, *bad, *a2]):
        rows.append({"id": str(n), **{k: v for k, v in r.items() if not k.startswith("_")}})
    expected["v-A_1"] = [(r["utt_id"], r["text"], r["_secs"]) for r in a]
    expected["vidB"] = [(r["utt_id"], r["text"], r["_secs"]) for r in b]
    expected["v-A_1#2"] = [(r["utt_id"], r["text"], r["_secs"]) for r in a2]
    part = tmp_path / "en000" / "partial-train" / "0000.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=YODAS_SCHEMA), part, row_group_size=4)
    wrong = tmp_path / "other" / "0000.parquet"
    wrong.parent.mkdir()
    pq.write_table(pa.table({"key": ["a"], "transcript": ["b"]}), wrong)
    prefix = tmp_path / "out"
    assert run_cli([tmp_path / "en000", wrong], "yodas-parquet", prefix, llama3_path) == 0
    errors = errors_by_item(prefix)
    assert "no recording id" in errors["no-segment-id"]
    assert "no audio" in errors["vidC-00000-00000010-00000090"]
    assert errors["vidC-00001-00000100-00000190"]  # rejected by the audio stage, by its id
    assert "'utt_id'" in errors["<file>"] and "transcript" in errors["<file>"]
    assert len(errors) == 4
    check_documents(prefix, expected, soda_tokenizer)


# ---------------------------------------------------------------------------- Lhotse
@pytest.fixture(scope="module")
def lhotse_corpus(tmp_path_factory):
    lhotse = pytest.importorskip("lhotse")
    from lhotse import AudioSource, RecordingSet, SupervisionSegment, SupervisionSet

    root = tmp_path_factory.mktemp("lhotse")
    (root / "wav").mkdir()
    recs, sups, expected = [], [], {}
    for rid, texts in (("spk1-ch1", TEXTS[:3]), ("spk2-ch1", TEXTS[2:])):
        x, spans = timeline(texts)
        sf.write(root / "wav" / f"{rid}.flac", x, SR, subtype="PCM_16")
        recs.append(lhotse.Recording.from_file(root / "wav" / f"{rid}.flac", recording_id=rid))
        expected[rid] = []
        for k, (t, s) in enumerate(zip(texts, spans)):
            sid = f"{rid}-{k}"
            sups.append(SupervisionSegment(sid, rid, start=s[0] / 100, duration=secs(s), text=t))
            expected[rid].append((sid, t, secs(s)))
    sups[0], sups[1] = sups[1], sups[0]  # supervisions out of start order in the manifest
    recs.append(
        lhotse.Recording(
            id="remote",
            sources=[AudioSource("url", [0], "https://x/a.wav")],
            sampling_rate=SR,
            num_samples=SR,
            duration=1.0,
        )
    )
    recs.append(
        lhotse.Recording(
            id="silent",
            sources=recs[0].sources,
            sampling_rate=SR,
            num_samples=recs[0].num_samples,
            duration=recs[0].duration,
        )
    )
    sups += [
        SupervisionSegment("notext", "spk2-ch1", start=0.0, duration=0.3, text=None),
        SupervisionSegment("remote-0", "remote", start=0, duration=0.5, text="far away"),
        SupervisionSegment("ghost-0", "ghost", start=0, duration=0.5, text="no recording"),
        SupervisionSegment("late", "spk1-ch1", start=0.0, duration=0.3, text="too late"),
    ]
    # recordings in the manifest as lhotse recipes write them: relative to the manifest's dir
    for r in recs[:2]:
        r.sources[0].source = os.path.relpath(r.sources[0].source, root)
    RecordingSet.from_recordings(recs).to_file(root / "mini_recordings_train.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(root / "mini_supervisions_train.jsonl.gz")
    return root, expected


def test_lhotse_recordings_and_supervisions(lhotse_corpus, tmp_path, llama3_path, soda_tokenizer):
    root, expected = lhotse_corpus
    rec_m, sup_m = (
        root / "mini_recordings_train.jsonl.gz",
        root / "mini_supervisions_train.jsonl.gz",
    )
    assert expand_inputs([str(rec_m), str(sup_m)], "lhotse") == [str(rec_m)]
    prefix = tmp_path / "out"
    assert run_cli([sup_m], "lhotse", prefix, llama3_path) == 0
    errors = errors_by_item(prefix)
    assert "'url' is not supported" in errors["remote"]
    assert "no usable supervisions" in errors["silent"]
    assert "no text" in errors["notext"]
    assert "'ghost' is not in" in errors["ghost-0"]
    assert "not in the same order" in errors["late"]
    assert len(errors) == 5
    check_documents(prefix, expected, soda_tokenizer)


def test_lhotse_cuts(lhotse_corpus, tmp_path, llama3_path, soda_tokenizer):
    from lhotse import CutSet, RecordingSet, SupervisionSet

    root, expected = lhotse_corpus
    keep = {u[0] for utts in expected.values() for u in utts}
    recs = RecordingSet.from_recordings(
        r
        for r in RecordingSet.from_file(root / "mini_recordings_train.jsonl.gz")
        if r.id in expected
    )
    sups = SupervisionSet.from_segments(
        s
        for s in SupervisionSet.from_file(root / "mini_supervisions_train.jsonl.gz")
        if s.id in keep
    )
    cuts = list(CutSet.from_manifests(recordings=recs, supervisions=sups))
    first = expected["spk1-ch1"][0]
    # a cut that starts inside its recording: supervision times are relative to the cut
    cuts[0] = cuts[0].truncate(offset=0.1, preserve_id=True)
    mixed = cuts[0].append(cuts[1])
    for c in cuts:
        c.recording.sources[0].source = str(root / c.recording.sources[0].source)
    CutSet.from_cuts([*cuts, mixed]).to_file(tmp_path / "cuts.jsonl.gz")
    prefix = tmp_path / "out"
    assert run_cli([tmp_path], "lhotse", prefix, llama3_path) == 0
    errors = errors_by_item(prefix)
    assert list(errors) == [mixed.id] and "MixedCut" in errors[mixed.id]
    assert first[0] == "spk1-ch1-0"
    check_documents(
        prefix, {cuts[0].id: expected["spk1-ch1"], cuts[1].id: expected["spk2-ch1"]}, soda_tokenizer
    )


def test_lhotse_memory_source_and_missing_library(monkeypatch, tmp_path):
    import lhotse

    from megatron_soda.data.readers import lhotse_manifests

    data = wav_bytes(spoken(TEXTS[0]))
    rec = lhotse.Recording.from_bytes(data, recording_id="mem")
    sup = lhotse.SupervisionSegment("mem-0", "mem", start=0.0, duration=0.5, text="hi")
    doc, errors = lhotse_manifests.to_document("m.jsonl", rec, [sup])
    assert isinstance(doc, Recording) and errors == []
    assert doc.utterances[0].audio.data == data and doc.utterances[0].audio.end == 0.5
    monkeypatch.setitem(__import__("sys").modules, "lhotse", None)
    with pytest.raises(RuntimeError, match="pip install lhotse"):
        list(lhotse_manifests.read_lhotse(str(tmp_path / "cuts.jsonl.gz")))


# ----------------------------------------------------------------------- LibriSpeech
def test_librispeech_folders(tmp_path, llama3_path, soda_tokenizer):
    expected = {}
    for spk, chapter, texts in (("19", "198", TEXTS[:2]), ("26", "495", TEXTS[2:])):
        folder = tmp_path / "train-clean-5" / spk / chapter
        folder.mkdir(parents=True)
        lines, expected[f"{spk}-{chapter}"] = [], []
        for k, t in enumerate(texts):
            uid = f"{spk}-{chapter}-{k:04d}"
            x = spoken(t)
            sf.write(folder / f"{uid}.flac", x, SR, subtype="PCM_16")
            lines.append(f"{uid} {t.upper()}")
            expected[f"{spk}-{chapter}"].append((uid, t.upper(), x.size / SR))
        if spk == "26":
            lines += [f"{spk}-{chapter}-0009 NO SUCH FILE", f"{spk}-{chapter}-0010"]
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    prefix = tmp_path / "out"
    assert run_cli([tmp_path / "train-clean-5"], "librispeech", prefix, llama3_path) == 0
    errors = errors_by_item(prefix)
    assert set(errors) == {"26-495-0009", "26-495-0010 (line 4)"}
    assert "no transcript" in errors["26-495-0010 (line 4)"]
    check_documents(prefix, expected, soda_tokenizer)
