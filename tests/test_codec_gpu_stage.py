"""The GPU arrangement of the codec stage (``--codec-batching duration``, data/codec_workers.py),
forced on CPU: workers decode, the main process encodes each chunk in duration-sorted batches.
Checked against the ``pieces`` arrangement (decode + encode per job, one piece per pass): the
same utterances, order, frame counts, seconds and error report, codes agreeing to >= 0.99;
bad items rejected per item; finished chunks not encoded again on resume; decoding in the
workers and encoding in the main process only (tiny Mimi, random weights)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.audio.batched_encode import code_agreement
from megatron_soda.audio.io import load_audio
from megatron_soda.data import codec_workers
from megatron_soda.data.codes_cache import read_chunk
from megatron_soda.data.encode_stage import CodecWorkers, EncodeConfig, encode_units
from megatron_soda.data.units import expand_inputs, plan_units

SR = 16000  # resampled to 24 kHz by the stage
CHUNK_S = 2.0  # codec pieces of 2 s: the 2.7 s and 3.3 s clips are cut in two
MIN_AGREEMENT = 0.99  # duration batching vs one piece per pass; measured 1.0 (CPU, 1 thread)
# (utterance, recording, file, start, end); chunks of 4 utterances: [r0 r1 r2] [r3 r4 r5] [r6]
ROWS = [
    ("u0", "r0", "a.wav", None, None),
    ("u1", "r1", "b.wav", None, None),
    ("u2a", "r2", "shared.wav", 0.0, 1.1),
    ("u2b", "r2", "shared.wav", 1.2, 2.0),
    ("u2c", "r2", "shared.wav", 2.5, 5.2),
    ("u2d", "r2", "shared.wav", 5.5, 7.0),  # past the end: its own error
    ("u3", "r3", "corrupt.wav", None, None),  # not audio: its own error, naming the file
    ("u4", "r4", "c.wav", None, None),
    ("u5a", "r5", "d.wav", None, None),
    ("u5b", "r5", "e.wav", None, None),
    ("u6", "r6", "f.wav", None, None),
]
SECONDS = {"a": 0.5, "b": 3.3, "shared": 6.0, "c": 1.7, "d": 0.9, "e": 1.3, "f": 2.2}
BAD = {"u2d": "ends past the end", "u3": "corrupt.wav"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_stage")
    rng = np.random.default_rng(0)
    for i, (name, s) in enumerate(SECONDS.items()):
        t = np.arange(int(s * SR)) / SR
        w = 0.3 * np.sin(2 * np.pi * (120 + 35 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(
            root / f"{name}.wav", (w + 0.02 * rng.standard_normal(t.size)).astype(np.float32), SR
        )
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage, not audio" * 8)
    with open(root / "m.jsonl", "w") as f:
        for uid, rec, audio, a, b in ROWS:
            row = {"id": uid, "audio": audio, "text": f"words of {uid}", "recording_id": rec}
            f.write(json.dumps(row | ({} if a is None else {"start": a, "end": b})) + "\n")
    return root


def _cfg(batching: str, **kw) -> EncodeConfig:
    return EncodeConfig(
        codec="random:tiny:0",
        cache_codebooks=8,
        chunk_utterances=4,
        chunk_seconds=CHUNK_S,
        batching=batching,
        **kw,
    )


def _encode(corpus, out, cfg: EncodeConfig, workers: CodecWorkers | None = None) -> str:
    units = plan_units(expand_inputs([str(corpus / "m.jsonl")], "jsonl"), "jsonl")
    (cache,) = encode_units(units, str(out), cfg, workers)
    return cache.dir


def _chunks(unit_dir: str) -> list[str]:
    return sorted(os.path.join(unit_dir, f) for f in os.listdir(unit_dir) if f.startswith("chunk-"))


def _read(unit_dir: str) -> tuple[list, dict, list]:
    """(ids by recording in order, {id: (seconds, codes)}, [(item, reason)] in order)."""
    order, utts, errors = [], {}, []
    for path in _chunks(unit_dir):
        ch = read_chunk(path)
        order += [(r.id, [u.id for u in r.utterances]) for r in ch.recordings]
        utts.update({u.id: (u.seconds, u.codes) for r in ch.recordings for u in r.utterances})
        errors += [(e.item, e.reason) for e in ch.errors]
    return order, utts, errors


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The unit's cache directory after a pieces run and a duration run (in-process, CPU)."""
    out = tmp_path_factory.mktemp("runs")
    return {b: _encode(corpus, out / b, _cfg(b)) for b in ("pieces", "duration")}


def test_duration_batching_matches_pieces(runs, corpus):
    p_order, p_utts, p_errors = _read(runs["pieces"])
    d_order, d_utts, d_errors = _read(runs["duration"])
    good = [u for u, *_ in ROWS if u not in BAD]
    assert d_order == p_order and sorted(d_utts) == sorted(good)
    assert d_errors == p_errors and [e[0] for e in d_errors] == list(BAD)
    for item, reason in d_errors:
        assert BAD[item] in reason
    for uid, _rec, audio, a, b in ROWS:  # an independent decode: frames and seconds
        if uid in BAD:
            continue
        wave = load_audio(str(corpus / audio), a, b)
        seconds, codes = d_utts[uid]
        assert seconds == pytest.approx(wave.size / 24000, abs=1e-9) == p_utts[uid][0]
        assert codes.shape == (8, -(-wave.size // 1920)) == p_utts[uid][1].shape
    agree = code_agreement([d_utts[u][1] for u in good], [p_utts[u][1] for u in good])
    print(f"duration vs pieces code agreement: {agree:.6f}")
    assert agree >= MIN_AGREEMENT
    with open(os.path.join(runs["duration"], "unit.json")) as f:
        assert json.load(f)["codec_batching"] == "duration/240s"
    with open(os.path.join(runs["pieces"], "unit.json")) as f:
        assert "codec_batching" not in json.load(f)


def test_defaults_by_device():
    assert codec_workers.resolve_batching(None, "cpu") == "pieces"
    assert codec_workers.resolve_batching(None, "cuda") == "duration"
    assert codec_workers.resolve_workers(0, "cuda", "pieces") == 1
    assert codec_workers.resolve_workers(0, "cuda", None) == codec_workers._cpu_count()
    assert EncodeConfig("random:tiny", device="cuda").resolved_job_utterances() == 16
    assert (
        EncodeConfig("random:tiny", device="cuda", batching="pieces").resolved_job_utterances()
        == 128
    )
    with pytest.raises(ValueError):
        codec_workers.resolve_batching("frames", "cpu")


def test_resume_encodes_only_unfinished_chunks(runs, corpus, tmp_path):
    unit = os.path.join(tmp_path, "codes", os.path.basename(runs["duration"]))
    shutil.copytree(runs["duration"], unit)
    before = {p: open(p, "rb").read() for p in _chunks(unit)}
    kept = {p: os.stat(p).st_mtime_ns for p in list(before)[:2]}
    os.remove(os.path.join(unit, "done.json"))  # killed after writing chunks 0 and 1
    os.remove(list(before)[2])
    n = codec_workers.COUNTS["waves_encoded"]
    _encode(corpus, tmp_path / "codes", _cfg("duration"))
    assert codec_workers.COUNTS["waves_encoded"] - n == 1  # chunk 2: u6 only
    assert {p: os.stat(p).st_mtime_ns for p in kept} == kept
    assert {p: open(p, "rb").read() for p in _chunks(unit)} == before
    # the other mode does not reuse these codes: the unit starts again, every chunk re-encoded
    n = codec_workers.COUNTS["parts_encoded"]
    _encode(corpus, tmp_path / "codes", _cfg("pieces", job_utterances=16))  # one part per recording
    assert codec_workers.COUNTS["parts_encoded"] - n == 7  # every recording
    with open(os.path.join(unit, "unit.json")) as f:
        assert "codec_batching" not in json.load(f)


@pytest.mark.torchrun
def test_workers_decode_and_the_main_process_encodes(runs, corpus, tmp_path):
    workers = CodecWorkers(2, None, "cpu", "duration")
    main_before = dict(codec_workers.COUNTS)
    try:
        unit = _encode(corpus, tmp_path / "codes", _cfg("duration", workers=2, job_utterances=16), workers)
        alive = set(workers.pool._processes)  # the workers spawned (on demand: 1 or 2)
        states: dict = {}
        for _ in range(5):  # probes held 0.5 s, sent at once: each idle worker takes one
            probes = [workers.pool.submit(codec_workers.process_state, 0.5) for _ in alive]
            states.update({s["pid"]: s for s in (f.result() for f in probes)})
            alive = set(workers.pool._processes)
            if set(states) == alive:
                break
    finally:
        workers.close()
    assert set(states) == alive and os.getpid() not in alive
    states = list(states.values())
    assert not any(s["codec"] for s in states)  # no codec built in a decoder
    assert sum(s.get("parts_decoded", 0) for s in states) == 7  # every recording, in the workers
    assert not any(s.get("parts_encoded") or s.get("waves_encoded") for s in states)
    done = {k: v - main_before.get(k, 0) for k, v in codec_workers.COUNTS.items()}
    assert done.get("parts_decoded", 0) == 0 and done["waves_encoded"] == len(ROWS) - len(BAD)
    # the batches depend on the chunk only, not on which worker decoded what when
    assert [open(p, "rb").read() for p in _chunks(unit)] == [
        open(p, "rb").read() for p in _chunks(runs["duration"])
    ]


def test_tokenize_stage_takes_codes_of_either_batching(corpus, tmp_path, small_bpe_path, capsys):
    """A GPU machine encodes (duration batching, its default), a CPU machine tokenizes: the token
    stage reads the cache as it was made unless --codec-batching asks for another mode."""
    from megatron_soda.data.cli import preprocess_main

    def run(*extra: str) -> int:
        return preprocess_main(["--input", str(corpus / "m.jsonl"), "--input-format", "jsonl",
                                "--output-prefix", str(tmp_path / "out"), "--tokenizer", small_bpe_path,
                                "--codec", "random:tiny:0", "--log-level", "WARNING", "--max-error-rate",
                                "1", "--workers", "1", *extra])

    assert run("--stage", "encode", "--codec-batching", "duration") == 0
    assert run("--stage", "tokenize", "--codec-batching", "pieces") != 0
    assert "codec_batching" in capsys.readouterr().err
    assert run("--stage", "tokenize") == 0
    with open(tmp_path / "out.stats.json") as f:
        assert json.load(f)["utterances"] == len(ROWS) - len(BAD)
