"""The codec stage's work units (data/encode_jobs.py): a recording longer than the job size is
cut into parts at utterance boundaries, the parts go to any worker and are re-joined in order;
the chunk files, shards and errors are the same bytes whatever the job size and worker count,
and each utterance's codes are those of the utterance encoded alone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from helpers_audio import fail_codec_on

from megatron_soda.audio.codec import MimiCodec
from megatron_soda.audio.io import load_audio
from megatron_soda.data.cli import preprocess_main
from megatron_soda.data.codes_cache import read_chunk
from megatron_soda.data.encode_jobs import Part, plan_jobs
from megatron_soda.data.encode_stage import EncodeConfig, _job_size, chunk_stream
from megatron_soda.data.units import WorkUnit

SR = 16000  # resampled to 24 kHz by the stage
CODEC = "random:tiny:0"
# the big recording: segments of a shared file (s*; s3 the only clip of its length), files of
# their own (o*) and segments of a 2-s shared file (b*: b2 lies past its end, an error of that
# utterance only, which names the source as its first utterance b0 does), interleaved
BIG = ["s0", "s1", "o0", "b0", "s2", "s3", "b1", "o1", "s4", "s5", "s6", "o2", "b2", "s7"]
BAD = {"b2"}


def _tone(seconds: float, f0: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return (
        0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + noise
    ).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(directory, [(utterance id, recording id, audio, start, end)]) in manifest order."""
    root = tmp_path_factory.mktemp("units")
    sf.write(root / "shared.wav", _tone(8.0, 180.0, 1), SR)
    sf.write(root / "shared2.wav", _tone(3.0, 260.0, 2), SR)
    sf.write(root / "short.wav", _tone(2.0, 320.0, 3), SR)
    for i, name in enumerate(["o0", "o1", "o2", "r1", "r3"]):
        sf.write(root / f"{name}.wav", _tone(0.6 + 0.2 * i, 140.0 + 40 * i, 10 + i), SR)
    bad_spans = {"b0": (0.0, 0.5), "b1": (0.6, 1.0), "b2": (3.5, 3.9)}
    rows = [("r1", "r1", "r1.wav", None, None)]
    k = 0
    for uid in BIG:
        if uid.startswith("s"):
            length = 0.75 if uid == "s3" else 0.7
            rows.append((uid, "big", "shared.wav", round(0.9 * k, 2), round(0.9 * k + length, 2)))
            k += 1
        elif uid.startswith("b"):
            rows.append((uid, "big", "short.wav", *bad_spans[uid]))
        else:
            rows.append((uid, "big", f"{uid}.wav", None, None))
    rows += [("r2a", "r2", "shared2.wav", 0.0, 1.2), ("r2b", "r2", "shared2.wav", 1.3, 2.5)]
    rows.append(("r3", "r3", "r3.wav", None, None))
    for name, own in (("grouped", False), ("ungrouped", True)):
        with open(root / f"{name}.jsonl", "w") as f:
            for uid, rec, audio, a, b in rows:
                line = {
                    "id": uid,
                    "audio": audio,
                    "text": f"words of {uid}",
                    "recording_id": uid if own else rec,
                }
                line.update({} if a is None else {"start": a, "end": b})
                f.write(json.dumps(line) + "\n")
    return root, rows


def _run(manifest: str, prefix: str, tokenizer: str, extra: list[str]) -> None:
    argv = [
        "--input",
        manifest,
        "--input-format",
        "jsonl",
        "--output-prefix",
        prefix,
        "--tokenizer",
        tokenizer,
        "--codec",
        CODEC,
        "--log-level",
        "WARNING",
        "--max-error-rate",
        "1",
        *extra,
    ]
    assert preprocess_main(argv) == 0, prefix


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory, llama3_path):
    """name -> output prefix: the grouped manifest with whole recordings per job in this
    process, cut into parts of 3 utterances over 2 worker processes and of 2 in this process,
    and the ungrouped manifest."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("runs")
    plan = {
        "whole": ("grouped", ["--workers", "1", "--job-utterances", "1000"]),
        "parts3_w2": ("grouped", ["--workers", "2", "--job-utterances", "3"]),
        "parts2_w1": ("grouped", ["--workers", "1", "--job-utterances", "2"]),
        "ungrouped": ("ungrouped", ["--workers", "1"]),
    }
    for name, (manifest, extra) in plan.items():
        _run(str(root / f"{manifest}.jsonl"), str(out / name), llama3_path, extra)
    return {name: str(out / name) for name in plan}


def _chunk_files(prefix: str) -> dict[str, bytes]:
    codes = prefix + ".codes"
    return {
        os.path.relpath(os.path.join(d, f), codes): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(codes)
        for f in files
        if f.startswith("chunk-")
    }


def _codes(prefix: str) -> dict[str, np.ndarray]:
    codes = prefix + ".codes"
    out = {}
    for d, _, files in os.walk(codes):
        for f in sorted(files):
            if f.startswith("chunk-"):
                for rec in read_chunk(os.path.join(d, f)).recordings:
                    out.update({u.id: u.codes for u in rec.utterances})
    return out


def test_plan_cuts_a_big_recording_into_jobs():
    """Every utterance in exactly one part, in order; jobs of at most J utterances; a recording
    of n > J utterances in ceil(n / J) jobs of its own whose sizes differ by at most one; smaller
    recordings whole, grouped."""
    sizes, cap = [2, 37, 1, 3, 16, 17, 4, 4, 1], 8
    jobs = plan_jobs(sizes, cap)
    parts = [p for job in jobs for p in job]
    walked = [(p.recording, i) for p in parts for i in range(p.start, p.stop)]
    assert walked == [(r, i) for r, n in enumerate(sizes) for i in range(n)]
    assert all(sum(p.stop - p.start for p in job) <= cap for job in jobs)
    for r, n in enumerate(sizes):
        mine = [job for job in jobs if any(p.recording == r for p in job)]
        if n > cap:
            assert len(mine) == -(-n // cap) and all(len(job) == 1 for job in mine)
            lengths = [job[0].stop - job[0].start for job in mine]
            assert max(lengths) - min(lengths) <= 1
        else:
            assert [p for job in mine for p in job if p.recording == r] == [Part(r, 0, n)]
    assert jobs[0] == [Part(0, 0, 2)] and jobs[-2:] == [
        [Part(6, 0, 4), Part(7, 0, 4)],
        [Part(8, 0, 1)],
    ]


def test_stage_plans_the_grouped_manifest_in_parts(corpus):
    """The stage's own chunk of the grouped manifest: the big recording becomes several jobs."""
    root, _ = corpus
    unit = WorkUnit(str(root / "grouped.jsonl"), "jsonl")
    ((recs, errors),) = list(chunk_stream(unit, 128))
    assert not errors and [r.id for r in recs] == ["r1", "big", "r2", "r3"]
    big = [
        job
        for job in plan_jobs([len(r.utterances) for r in recs], 3)
        if any(p.recording == 1 for p in job)
    ]
    assert len(big) == -(-len(BIG) // 3) >= 2


def test_outputs_identical_whatever_the_job_size_and_workers(runs):
    """Chunk files, .bin/.idx and the error report: the same bytes whole or cut, in worker
    processes or not (b2's error names its source as the recording's first utterance of it
    does, also in a part that b2 opens)."""
    ref = runs["whole"]
    chunks = _chunk_files(ref)
    assert chunks
    for name in ("parts3_w2", "parts2_w1"):
        assert _chunk_files(runs[name]) == chunks, name
        for ext in (".bin", ".idx", ".errors.jsonl"):
            with open(ref + ext, "rb") as a, open(runs[name] + ext, "rb") as b:
                assert a.read() == b.read(), (name, ext)
    with open(ref + ".errors.jsonl") as f:
        errors = [json.loads(line) for line in f]
    assert sorted(e["item"] for e in errors) == sorted(BAD)
    assert all("short.wav (b0)" in e["reason"] and "past the end" in e["reason"] for e in errors)


def test_a_source_failing_in_one_part_fails_in_all(corpus, tmp_path, llama3_path, monkeypatch):
    """An unforeseen failure while encoding s3 rejects its whole source (shared.wav) when the
    recording is one job; cut into parts, the parts without s3 are rejected alike: the same
    chunk files and error report (in this process, where the codec can be made to fail)."""
    root, rows = corpus
    _, _, audio, a, b = next(r for r in rows if r[0] == "s3")
    fail_size = load_audio(str(root / audio), a, b).size
    fail_codec_on(monkeypatch, fail_size, "boom in s3")
    manifest = str(root / "grouped.jsonl")
    for name, size in (("whole", "1000"), ("parts", "2")):
        _run(
            manifest,
            str(tmp_path / name),
            llama3_path,
            ["--workers", "1", "--job-utterances", size],
        )
    assert _chunk_files(str(tmp_path / "parts")) == _chunk_files(str(tmp_path / "whole"))
    with (
        open(tmp_path / "whole.errors.jsonl", "rb") as f,
        open(tmp_path / "parts.errors.jsonl", "rb") as g,
    ):
        whole, parts = f.read(), g.read()
    assert whole == parts
    errors = [json.loads(line) for line in whole.decode().splitlines()]
    shared = sorted(r[0] for r in rows if r[2] == "shared.wav")
    assert sorted(e["item"] for e in errors if "boom in s3" in e["reason"]) == shared
    assert all("shared.wav (s0)" in e["reason"] for e in errors if "boom" in e["reason"])


def test_codes_are_each_utterance_encoded_alone(runs, corpus, one_torch_thread):
    """Grouped or not, cut or not: an utterance's codes are those of its own audio, loaded
    and encoded directly (not through the stage)."""
    root, rows = corpus
    grouped, ungrouped = _codes(runs["whole"]), _codes(runs["parts3_w2"])
    alone = _codes(runs["ungrouped"])
    good = [r for r in rows if r[0] not in BAD]
    assert set(grouped) == set(ungrouped) == {r[0] for r in good}
    codec = MimiCodec(CODEC, num_codebooks=next(iter(grouped.values())).shape[0])
    waves = [load_audio(str(root / audio), a, b) for _, _, audio, a, b in good]
    for (uid, *_), direct in zip(good, codec.encode(waves)):
        np.testing.assert_array_equal(grouped[uid], direct, err_msg=uid)
        np.testing.assert_array_equal(ungrouped[uid], direct, err_msg=uid)
        np.testing.assert_array_equal(alone[uid], direct, err_msg=uid)


def test_small_chunks_still_give_every_worker_jobs():
    """Without --job-utterances a small chunk (a few minutes of speech) is cut into at least two
    jobs per worker; an explicit --job-utterances is kept as given."""
    sizes = [3, 2, 1, 4, 2, 3, 1, 2, 2, 2]  # 22 utterances in 10 recordings
    default = EncodeConfig("random:tiny")
    for workers in (1, 2, 4):
        jobs = plan_jobs(sizes, _job_size(default, default.resolved_job_utterances(), sum(sizes), workers))
        assert len(jobs) >= min(2 * workers, len(sizes))
    pinned = EncodeConfig("random:tiny", job_utterances=16)
    assert len(plan_jobs(sizes, _job_size(pinned, 16, sum(sizes), 2))) == 2
