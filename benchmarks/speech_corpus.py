"""The speech corpora of bench_codec.py and the helpers that run on them: decoding, the naive
per-utterance loop, comparing codes, and the in-process measurements (``--lean-check``,
``--batch-seconds``).  Corpora: espeak-ng speech of public-domain sentences in mixed formats (WAV 16 kHz, FLAC 44.1 kHz stereo, MP3, Ogg Vorbis 48 kHz, float WAV 24 kHz), listed in
a JSONL manifest.  ``standard``: clips of 3-15 s, 1-3 utterances per recording.  ``grouped``
(issue 19: how real corpora come: a video, a chapter, an episode holds tens to hundreds of
utterances): clips of 2-3 s, 20-300 utterances per recording, one format per recording."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Public-domain text: Aesop's "The North Wind and the Sun" and Lincoln's Gettysburg Address.
SENTENCES = [
    "The North Wind and the Sun were disputing which was the stronger.",
    "A traveler came along wrapped in a warm cloak.",
    "They agreed that the one who first made the traveler take his cloak off "
    "should be considered stronger than the other.",
    "Then the North Wind blew as hard as he could.",
    "But the more he blew, the more closely did the traveler fold his cloak around him.",
    "At last the North Wind gave up the attempt.",
    "Then the Sun shined out warmly, and immediately the traveler took off his cloak.",
    "And so the North Wind was obliged to confess that the Sun was the stronger of the two.",
    "Four score and seven years ago our fathers brought forth on this continent a new nation.",
    "It was conceived in liberty, and dedicated to the proposition that all men are created equal.",
    "Now we are engaged in a great civil war.",
    "We are met on a great battlefield of that war.",
    "We have come to dedicate a portion of that field as a final resting place.",
    "It is altogether fitting and proper that we should do this.",
    "But, in a larger sense, we can not dedicate, we can not consecrate, we can not hallow "
    "this ground.",
    "The brave men, living and dead, who struggled here, have consecrated it.",
    "The world will little note, nor long remember what we say here.",
    "But it can never forget what they did here.",
    "It is for us the living, rather, to be dedicated here to the unfinished work.",
    "Government of the people, by the people, for the people, shall not perish from the earth.",
]
# (extension, sample rate, channels, libsndfile subtype)
FORMATS = [
    ("wav", 16000, 1, "PCM_16"),
    ("flac", 44100, 2, "PCM_16"),
    ("mp3", 44100, 1, "MPEG_LAYER_III"),
    ("ogg", 48000, 1, "VORBIS"),
    ("wav", 24000, 1, "FLOAT"),
]


def _speak(text: str, speed: int, pitch: int, path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    subprocess.run(
        ["espeak-ng", "-s", str(speed), "-p", str(pitch), "-w", path, text],
        check=True,
        capture_output=True,
    )
    wave, sr = sf.read(path, dtype="float32")
    return wave, sr


def make_corpus(
    out_dir: str, seconds: float, seed: int = 0, kind: str = "standard"
) -> tuple[str, float, int]:
    """Write a JSONL manifest of espeak-ng speech totalling about ``seconds``; reused when
    already there.  Returns (manifest path, audio seconds, utterances)."""
    manifest = os.path.join(out_dir, "manifest.jsonl")
    info_path = os.path.join(out_dir, "corpus.json")
    key = {"seconds": seconds, "seed": seed, "version": 1}
    if kind != "standard":
        key["kind"] = kind
    if os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("key") == key:
            return manifest, info["audio_seconds"], info["utterances"]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    make = _grouped if kind == "grouped" else _standard
    lines, total = make(out_dir, seconds, rng)
    with open(manifest, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    with open(info_path, "w") as f:
        json.dump({"key": key, "audio_seconds": total, "utterances": len(lines)}, f)
    return manifest, total, len(lines)


def _write(out_dir: str, name: str, wave: np.ndarray, sr: int, fmt: tuple) -> None:
    import soundfile as sf
    import soxr

    _, rate, channels, subtype = fmt
    out = soxr.resample(wave, sr, rate).astype(np.float32)
    out = 0.8 * out / max(1e-6, float(np.abs(out).max()))
    if channels == 2:
        out = np.stack([out, 0.9 * out], axis=1)
    sf.write(os.path.join(out_dir, name), out, rate, subtype=subtype)


def _grouped(out_dir: str, seconds: float, rng: random.Random) -> tuple[list[dict], float]:
    """2-3 s windows cut from espeak-ng sentences (a few voices, spoken once each), 20-300
    utterances per recording."""
    tmp = os.path.join(out_dir, "espeak.wav")
    voices = [(rng.randint(140, 200), rng.randint(30, 70)) for _ in range(4)]
    spoken: dict = {}
    lines: list[dict] = []
    total, rec, left_in_rec, fmt = 0.0, 0, 0, FORMATS[0]
    while total < seconds:
        if left_in_rec == 0:
            rec, left_in_rec = rec + 1, rng.randint(20, 300)
            fmt, voice = FORMATS[rec % len(FORMATS)], rng.choice(voices)
        left_in_rec -= 1
        k = rng.randrange(len(SENTENCES))
        if (k, voice) not in spoken:
            spoken[(k, voice)] = _speak(SENTENCES[k], *voice, tmp)
        wave, sr = spoken[(k, voice)]
        n = min(wave.size, int(rng.uniform(2.0, 3.0) * sr))
        start = rng.randrange(wave.size - n + 1)
        i = len(lines)
        name = f"utt{i:05d}.{fmt[0]}"
        _write(out_dir, name, wave[start : start + n], sr, fmt)
        lines.append(
            {"id": f"u{i:05d}", "audio": name, "text": SENTENCES[k], "recording_id": f"r{rec}"}
        )
        total += n / sr
    if os.path.exists(tmp):
        os.remove(tmp)
    return lines, total


def _standard(out_dir: str, seconds: float, rng: random.Random) -> tuple[list[dict], float]:
    tmp = os.path.join(out_dir, "espeak.wav")
    lines, total, rec, left_in_rec = [], 0.0, 0, 0
    while total < seconds:
        target = rng.uniform(3.0, 15.0)
        speed, pitch = rng.randint(140, 200), rng.randint(30, 70)
        start = rng.randrange(len(SENTENCES))
        text, wave, sr = "", np.zeros(0, np.float32), 22050
        for k in range(len(SENTENCES)):
            cand = (text + " " + SENTENCES[(start + k) % len(SENTENCES)]).strip()
            w, sr = _speak(cand, speed, pitch, tmp)
            if w.size / sr > 15.0 and text:
                break
            text, wave = cand, w
            if w.size / sr >= target:
                break
        wave = wave[: int(15.0 * sr)]
        i = len(lines)
        fmt = FORMATS[i % len(FORMATS)]
        name = f"utt{i:04d}.{fmt[0]}"
        _write(out_dir, name, wave, sr, fmt)
        if left_in_rec == 0:
            rec, left_in_rec = rec + 1, rng.randint(1, 3)
        left_in_rec -= 1
        lines.append({"id": f"u{i:04d}", "audio": name, "text": text, "recording_id": f"r{rec}"})
        total += wave.size / sr
    os.remove(tmp)
    return lines, total


def read_manifest(manifest: str) -> list[dict]:
    """The manifest's rows, each with ``path``: its audio file's full path."""
    base = os.path.dirname(manifest)
    with open(manifest) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        r["path"] = os.path.join(base, r["audio"])
    return rows


def load_wave(path: str) -> np.ndarray:
    """One file as 24 kHz mono float32: ``soundfile.read`` + downmix + soxr HQ resample."""
    import soundfile as sf
    import soxr

    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != 24000:
        wave = soxr.resample(wave, sr, 24000, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def naive_loop(
    rows: list[dict], model: torch.nn.Module, threads: int | None
) -> tuple[float, list[np.ndarray]]:
    """Per-utterance ``MimiModel.encode`` in this process; returns (seconds, codes)."""
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for r in rows:
            x = torch.from_numpy(load_wave(r["path"]))[None, None]
            out.append(model.encode(x, num_quantizers=8).audio_codes[0].numpy())
    dt = time.perf_counter() - t0
    torch.set_num_threads(saved)
    return dt, out


def cached_codes(codes_dir: str) -> dict[str, np.ndarray]:
    from megatron_soda.data.codes_cache import read_chunk

    out = {}
    for root, _, files in os.walk(codes_dir):
        for name in sorted(files):
            if name.startswith("chunk-") and name.endswith(".npz"):
                for rec in read_chunk(os.path.join(root, name)).recordings:
                    for u in rec.utterances:
                        out[u.id] = np.asarray(u.codes)
    return out


def agreement(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], drop_last: bool = False
) -> list[float]:
    """Fraction of identical codes per codebook over the utterances both hold (without each
    clip's last frame with ``drop_last``: the naive loop does not pad clips to whole frames,
    so its last, partial frame sees different padding)."""
    same, total = np.zeros(8), 0
    for k in sorted(set(a) & set(b)):
        n = min(a[k].shape[1], b[k].shape[1]) - int(drop_last)
        same += (a[k][:8, :n] == b[k][:8, :n]).sum(axis=1)
        total += n
    return [round(float(v), 6) for v in same / max(total, 1)]


def digest(arrays: list) -> str:
    """sha256 (16 hex digits) of arrays in order: shape, dtype and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The machine's per-core fp32 GEMM rate: best of ``repeats`` 1-thread n^3 matmuls."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(saved)
    return round(2 * n**3 / best / 1e9, 1)


def lean_check(waves: list[np.ndarray], spec: str, repeats: int) -> dict:
    """Per-core speed of MimiCodec's lean fp32 forward against ``MimiModel.encode`` on the same
    whole-frame-padded clips (one thread, interleaved repeat by repeat), and the hashes of both
    paths' encoder output (latents, before quantisation) and codes."""
    import torch

    from megatron_soda.audio.codec import MimiCodec

    torch.set_num_threads(1)
    codec = MimiCodec(spec, 8)
    model, lean = codec.model, codec._lean
    if lean is None:
        raise RuntimeError("the lean path is not available here (see the log line above)")
    xs = [torch.zeros(1, 1, codec.num_frames(w.size) * 1920) for w in waves]
    for x, w in zip(xs, waves):
        x[0, 0, : w.size] = torch.from_numpy(w)
    paths = {
        "MimiModel.encode": lambda x: model.encode(x, num_quantizers=8).audio_codes,
        "lean": lambda x: lean.encode(x, 8),
    }
    walls: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    codes: dict[str, list] = {k: [None] * len(xs) for k in paths}
    with torch.inference_mode():
        for f in paths.values():
            f(xs[0])  # warm-up
        for rep in range(repeats):  # interleaved clip by clip, the order alternating
            for k in paths:
                walls[k].append(0.0)
                cpu[k].append(0.0)
            for i, x in enumerate(xs):
                for name in list(paths) if (i + rep) % 2 == 0 else list(reversed(paths)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    codes[name][i] = paths[name](x)
                    walls[name][-1] += time.perf_counter() - t0
                    cpu[name][-1] += time.process_time() - c0
            print(
                f"repeat {rep}: "
                + ", ".join(f"{k} {walls[k][-1]:.2f}s (cpu {cpu[k][-1]:.2f}s)" for k in paths)
            )
        latents = {"MimiModel.encode": lambda x: model.encoder(x).latents, "lean": lean.latents}
        hashes = {k: (digest([latents[k](x) for x in xs]), digest(codes[k])) for k in paths}
    gains = [r / n - 1 for r, n in zip(walls["MimiModel.encode"], walls["lean"])]
    cpu_gains = [r / n - 1 for r, n in zip(cpu["MimiModel.encode"], cpu["lean"])]
    return {
        "walls": walls,
        "cpu_s": cpu,
        "per_core_gain": [round(g, 4) for g in gains],
        "per_core_gain_median": round(statistics.median(gains), 4),
        "per_core_gain_cpu_time": [round(g, 4) for g in cpu_gains],
        "per_core_gain_cpu_time_median": round(statistics.median(cpu_gains), 4),
        "hashes_latents_codes": hashes,
        "identical": hashes["lean"] == hashes["MimiModel.encode"],
    }


LENGTH_BINS = [("<1.5s", 1.5), ("1.5-3s", 3.0), ("3-6s", 6.0), (">=6s", float("inf"))]


def batched_check(waves: list[np.ndarray], args: argparse.Namespace) -> dict:
    """audio/batched_encode.py on ``--device``/``--dtype``: realtime factor, and agreement with
    fp32 one clip per forward pass on the same device (overall, codebook 0, by clip length)."""
    import torch

    from megatron_soda.audio.batched_encode import code_agreement, encode_batched
    from megatron_soda.audio.codec import MimiCodec

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    codec = MimiCodec(args.codec, 8, device=args.device, batch_seconds=0)  # one piece per pass
    audio_s = sum(w.size for w in waves) / 24000
    encode_batched(codec, waves[:8], args.batch_seconds, dev, args.dtype)  # warm-up
    sync()
    t0 = time.perf_counter()
    ref = codec.encode(waves)
    sync()
    ref_wall = time.perf_counter() - t0
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = encode_batched(codec, waves, args.batch_seconds, dev, args.dtype)
        sync()
        walls.append(time.perf_counter() - t0)
    by_len: dict[str, list[int]] = {}
    for i, w in enumerate(waves):
        key = next(k for k, top in LENGTH_BINS if w.size / 24000 < top)
        by_len.setdefault(key, []).append(i)
    return {
        "device": str(dev),
        "dtype": args.dtype,
        "batch_seconds": args.batch_seconds,
        "rt_unbatched_fp32": round(audio_s / ref_wall, 2),
        "rt_batched": [round(audio_s / w, 2) for w in walls],
        "agreement_vs_fp32_unbatched": round(code_agreement(ref, out), 6),
        "agreement_codebook0": round(code_agreement([r[:1] for r in ref], [o[:1] for o in out]), 6),
        "agreement_by_length": {
            k: round(code_agreement([ref[i] for i in ix], [out[i] for i in ix]), 6)
            for k, ix in sorted(by_len.items())
        },
        "codes_sha": {"fp32_unbatched": digest(ref), "batched": digest(out)},
        # cuDNN convolutions use TF32 by default on Ampere and later: "fp32" then is not CPU fp32
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if dev.type == "cuda" else None,
    }
