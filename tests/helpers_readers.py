"""Shared by the reader tests: speech from espeak-ng laid out on a timeline, a CLI run, and
checks of every utterance in the codes cache and the shards."""

from __future__ import annotations

import glob
import io
import json
import math
import os

import numpy as np
import soundfile as sf

from megatron_soda.data.cli import preprocess_main
from megatron_soda.data.codes_cache import read_chunk
from megatron_soda.format import read_document, validate_shard
from megatron_soda.testing.sample_data import resample, speak

SR = 16000
_SPOKEN: dict[str, np.ndarray] = {}


def spoken(text: str) -> np.ndarray:
    if text not in _SPOKEN:
        x, sr = speak(text, speed=220)
        _SPOKEN[text] = resample(x, sr, SR)
    return _SPOKEN[text]


def timeline(texts: list[str], gap: float = 0.2) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The utterances one after another, each starting on a centisecond, with silence between:
    (samples, [(start_cs, end_cs)])."""
    parts: list[np.ndarray] = []
    spans = []
    pos = 0
    for t in texts:
        start_cs = math.ceil((pos + gap * SR) * 100 / SR)
        pad = start_cs * SR // 100 - pos
        x = spoken(t)
        parts += [np.zeros(pad, np.float32), x]
        pos += pad + x.size
        spans.append((start_cs, math.floor(pos * 100 / SR)))
    parts.append(np.zeros(int(gap * SR), np.float32))
    return np.concatenate(parts), spans


def wav_bytes(x: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def run_cli(inputs: list[str], fmt: str, prefix, llama3_path: str) -> int:
    argv = [
        "--input",
        *map(str, inputs),
        "--input-format",
        fmt,
        "--output-prefix",
        str(prefix),
        "--tokenizer",
        llama3_path,
        "--codec",
        "random:tiny",
        "--log-level",
        "ERROR",
        "--workers",
        "1",
        "--interleave",
        "text-first",
        "--max-error-rate",
        "1.0",
    ]
    return preprocess_main(argv)


def errors_by_item(prefix) -> dict[str, str]:
    path = f"{prefix}.errors.jsonl"
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["item"]: r["reason"] for r in rows}


def cached_recordings(prefix) -> list:
    """Every EncodedRecording of the codes cache, unit by unit, chunk by chunk."""
    recs = []
    for unit in sorted(glob.glob(f"{prefix}.codes/*/")):
        for chunk in sorted(glob.glob(os.path.join(unit, "chunk-*.npz"))):
            recs += read_chunk(chunk).recordings
    return recs


def check_documents(prefix, expected: dict[str, list[tuple[str, str, float]]], tokenizer) -> None:
    """``expected``: recording id -> [(utterance id, text, seconds)] in document order.

    Checks the codes cache (ids, order, texts, span length, frames = whole 1920-sample frames
    of the span) and the shards (one text-first document per recording, its transcripts and
    audio runs in that order)."""
    recs = cached_recordings(prefix)
    got = {r.id: r for r in recs}
    assert len(got) == len(recs), [r.id for r in recs]
    assert sorted(got) == sorted(expected)
    frames_by_doc = {}
    for rid, utts in expected.items():
        rec = got[rid]
        assert [u.id for u in rec.utterances] == [u[0] for u in utts]
        assert [u.text for u in rec.utterances] == [u[1] for u in utts]
        for u, (_, _, seconds) in zip(rec.utterances, utts):
            assert abs(u.seconds - seconds) < 0.002, (u.id, u.seconds, seconds)
            assert u.codes.shape[1] == math.ceil(round(u.seconds * 24000) / 1920), u.id
        frames_by_doc[rid] = [u.codes.shape[1] for u in rec.utterances]
    stats = json.load(open(f"{prefix}.stats.json"))
    assert stats["recordings"] == len(expected)
    assert stats["utterances"] == sum(len(v) for v in expected.values())
    n = validate_shard(str(prefix)).documents
    assert n == len(expected)
    docs = []
    for i in range(n):
        segs = tokenizer.segments(read_document(str(prefix), i))
        texts = [tokenizer.decode_text(ids) for kind, ids in segs if kind == "text"]
        frames = [tokenizer.decode_audio(ids).shape[1] for kind, ids in segs if kind == "audio"]
        docs.append((texts, frames))
    want = [([u[1] for u in expected[r.id]], frames_by_doc[r.id]) for r in recs]
    assert sorted(docs) == sorted(want)
