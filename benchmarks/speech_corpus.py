"""The speech corpus of bench_codec.py: espeak-ng speech of public-domain sentences, clips of
3-15 s in mixed formats (WAV 16 kHz, FLAC 44.1 kHz stereo, MP3, Ogg Vorbis 48 kHz, float WAV
24 kHz), 1-3 utterances per recording, listed in a JSONL manifest."""

from __future__ import annotations

import json
import os
import random
import subprocess

import numpy as np

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


def make_corpus(out_dir: str, seconds: float, seed: int = 0) -> tuple[str, float, int]:
    """Write a JSONL manifest of espeak-ng speech totalling about ``seconds``; reused when
    already there.  Returns (manifest path, audio seconds, utterances)."""
    import soundfile as sf
    import soxr

    manifest = os.path.join(out_dir, "manifest.jsonl")
    info_path = os.path.join(out_dir, "corpus.json")
    key = {"seconds": seconds, "seed": seed, "version": 1}
    if os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("key") == key:
            return manifest, info["audio_seconds"], info["utterances"]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
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
        ext, rate, channels, subtype = FORMATS[i % len(FORMATS)]
        out = soxr.resample(wave, sr, rate).astype(np.float32)
        out = 0.8 * out / max(1e-6, float(np.abs(out).max()))
        if channels == 2:
            out = np.stack([out, 0.9 * out], axis=1)
        name = f"utt{i:04d}.{ext}"
        sf.write(os.path.join(out_dir, name), out, rate, subtype=subtype)
        if left_in_rec == 0:
            rec, left_in_rec = rec + 1, rng.randint(1, 3)
        left_in_rec -= 1
        lines.append({"id": f"u{i:04d}", "audio": name, "text": text, "recording_id": f"r{rec}"})
        total += wave.size / sr
    os.remove(tmp)
    with open(manifest, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    with open(info_path, "w") as f:
        json.dump({"key": key, "audio_seconds": total, "utterances": len(lines)}, f)
    return manifest, total, len(lines)


def read_manifest(manifest: str) -> list[dict]:
    """The manifest's rows, each with ``path``: its audio file's full path."""
    base = os.path.dirname(manifest)
    with open(manifest) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        r["path"] = os.path.join(base, r["audio"])
    return rows
