#!/usr/bin/env python
"""Peak memory of preprocessing long inputs: an hour-long recording and a multi-GB text file.

Every measurement is a fresh child process; its peak resident set size is the kernel's
``ru_maxrss`` from ``os.wait4`` (the child and any processes it waited for), next to the input
size, so "streams" is a number, not a claim.  Measured:

* ``baseline/*``: the interpreter importing ``megatron_soda.audio`` (torch, transformers) or
  the preprocessing code: the floor every run pays;
* ``decode/<fmt>``: ``megatron_soda.audio.decode_segments`` of the whole recording cut into
  utterances in one pass (``--utterance-seconds``), as the codec stage calls it; the result
  itself (24 kHz float32: 96 kB per second) is part of the peak;
* ``preprocess-audio/<fmt>``: ``tools/preprocess/preprocess_data.py`` (``--codec random:tiny``,
  ``--workers 1``, so everything is one process) on a JSONL manifest of that recording's
  utterances, one recording: decode + resample + codec + shards;
* ``preprocess-whole/<fmt>`` (``--whole``): the same tool on a manifest whose one utterance is
  the whole recording (no start/end): the case that held the whole waveform before the codec
  stage streamed (``megatron_soda/audio/streaming.py``);
* ``read-text/<plain|zst>``: the ``text`` reader alone (every document) over a generated
  Nemotron-CC-like JSONL file (``--text-gb``), plain and zstd-compressed;
* ``preprocess-text/<plain|zst>``: the same tool with ``--input-format text`` on that file.

The recording is espeak-ng speech (public-domain text) tiled to ``--hours``, 44.1 kHz stereo,
written as FLAC (libsndfile path) and AAC in M4A (FFmpeg path).  Inputs are generated in
``--workdir`` once and reused.

    .venv/bin/python benchmarks/bench_memory.py --hours 1 --text-gb 2 --json memory.json
    .venv/bin/python benchmarks/bench_memory.py --hours 2 --whole --formats flac \
        --skip decode text text-read --json memory_2h.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
from bench_paths import DEFAULT_TOKENIZER, REPO

SR = 44_100
PREPROCESS = os.path.join(REPO, "tools", "preprocess", "preprocess_data.py")
WORDS = (
    "the north wind and sun were disputing which was stronger when a traveler came along "
    "wrapped in warm cloak they agreed that one who first succeeded making take his off "
    "should be considered than other then blew as hard he could but more closely did fold "
    "around him at last gave up attempt shined out warmly immediately took so obliged to "
    "confess of two four score seven years ago our fathers brought forth on this continent"
).split()


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (MiB) and exit status of the child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(out.decode(errors="replace")[-3000:])
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "rc": proc.returncode,
    }


def speech_loop() -> np.ndarray:
    """About a minute of espeak-ng speech at 44.1 kHz (the piece the recording tiles)."""
    import soxr

    from megatron_soda.testing.sample_data import speak

    text = " ".join(WORDS) + ". " + " ".join(reversed(WORDS)) + "."
    x, sr = speak(text)
    return soxr.resample(x, sr, SR, quality="HQ").astype(np.float32)


def blocks(seconds: float, loop: np.ndarray, block: int = SR * 10):
    """Stereo blocks (left: speech, right: speech at 0.5) totalling ``seconds``."""
    total, pos = int(seconds * SR), 0
    while pos < total:
        n = min(block, total - pos)
        idx = np.arange(pos, pos + n) % loop.size
        left = loop[idx]
        yield np.stack([left, 0.5 * left], axis=1)
        pos += n


def write_flac(path: str, seconds: float, loop: np.ndarray) -> None:
    import soundfile as sf

    with sf.SoundFile(path, "w", SR, 2, subtype="PCM_16", format="FLAC") as f:
        for b in blocks(seconds, loop):
            f.write(b)


def write_m4a(path: str, seconds: float, loop: np.ndarray) -> None:
    import av

    with av.open(path, "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=SR, layout="stereo")
        stream.bit_rate = 128_000
        resampler = av.AudioResampler("fltp", "stereo", SR, frame_size=1024)
        pts = 0
        for b in blocks(seconds, loop):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(b.T), "fltp", "stereo")
            frame.sample_rate, frame.pts, frame.time_base = SR, pts, Fraction(1, SR)
            pts += b.shape[0]
            for f in resampler.resample(frame):
                out.mux(stream.encode(f))
        for f in resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))


def write_manifest(path: str, audio: str, seconds: float, utt: float | None) -> int:
    """One recording's utterances of ``utt`` seconds; ``utt=None``: one utterance, the whole
    recording (no start/end)."""
    if utt is None:
        with open(path, "w") as f:
            f.write(json.dumps({"id": "whole", "audio": audio, "text": " ".join(WORDS[:12])}) + "\n")
        return 1
    n = int(seconds // utt)
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "id": f"u{i:05d}",
                        "audio": audio,
                        "recording_id": "hour",
                        "start": i * utt,
                        "end": (i + 1) * utt,
                        "text": " ".join(WORDS[i % 40 : i % 40 + 12]),
                    }
                )
                + "\n"
            )
    return n


def write_text(path: str, gb: float) -> None:
    """Nemotron-CC-like JSONL: ``text`` of 100-1500 words plus metadata fields, ``gb`` GB."""
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    target, size, i = int(gb * 1e9), 0, 0
    with open(path + ".tmp", "w") as f:
        while size < target:
            text = " ".join(words[rng.integers(0, len(words), int(rng.integers(100, 1500)))])
            line = (
                json.dumps(
                    {
                        "warc_record_id": f"<urn:uuid:{i:012d}>",
                        "url": f"https://example.org/{i}",
                        "language": "en",
                        "text": text,
                    }
                )
                + "\n"
            )
            f.write(line)
            size += len(line)
            i += 1
    os.replace(path + ".tmp", path)


def compress_zst(src: str, dst: str) -> None:
    import zstandard

    with open(src, "rb") as fi, open(dst + ".tmp", "wb") as fo:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(fi, fo)
    os.replace(dst + ".tmp", dst)


READ_TEXT = """
import sys
from megatron_soda.data.readers import read_source
from megatron_soda.data.records import TextDocument
n = chars = 0
for doc in read_source(sys.argv[1], "text"):
    assert isinstance(doc, TextDocument), doc
    n, chars = n + 1, chars + len(doc.text)
print(n, "documents", chars, "characters")
"""

DECODE = """
import sys, numpy as np
from megatron_soda.audio import Segment, decode_segments
path, seconds, utt = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
segs = [Segment(i * utt, (i + 1) * utt) for i in range(int(seconds // utt))]
outs = decode_segments(path, segs)
assert all(isinstance(o, np.ndarray) for o in outs), [o for o in outs if not isinstance(o, np.ndarray)][:3]
print(sum(o.size for o in outs) / 24000, "s decoded")
"""



def preprocess_command(
    py: str, src: str, fmt: str, prefix: str, tokenizer: str, codec: str = "random:tiny"
) -> list[str]:
    """preprocess_data.py on one input, in-process codec (one worker), random-weight Mimi.
    Earlier outputs of ``prefix`` are removed first: a codes cache left by a previous run would
    be reused, and nothing would be encoded."""
    for old in glob.glob(glob.escape(prefix) + "*"):
        if os.path.isdir(old):
            shutil.rmtree(old)
        else:
            os.remove(old)
    return [py, PREPROCESS, "--input", src, "--input-format", fmt, "--output-prefix", prefix,
            "--tokenizer", tokenizer, "--codec", codec, "--workers", "1"]

def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--hours", type=float, default=1.0, help="recording length for decode")
    p.add_argument(
        "--preprocess-minutes",
        type=float,
        default=None,
        help="recording length for the whole audio preprocess (default: --hours)",
    )
    p.add_argument("--utterance-seconds", type=float, default=10.0)
    p.add_argument("--text-gb", type=float, default=2.0)
    p.add_argument("--workdir", default="/tmp/soda_bench_memory")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["decode", "audio", "text-read", "text"]
    )
    p.add_argument(
        "--whole", action="store_true",
        help="also preprocess the recording as one utterance (no start/end)",
    )
    p.add_argument("--formats", nargs="*", default=["flac", "m4a"], choices=["flac", "m4a"])
    p.add_argument("--codec", default="random:tiny", help="--codec for the audio preprocess runs")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    w = args.workdir
    py = sys.executable
    results: dict[str, dict] = {}

    def record(name: str, cmd: list[str], input_bytes: int | None = None) -> None:
        r = run_measured(cmd)
        if input_bytes is not None:
            r["input_mib"] = round(input_bytes / 2**20, 1)
        r["command"] = " ".join(cmd)
        results[name] = r
        print(
            f"{name:28s} peak RSS {r['peak_rss_mib']:8.1f} MiB  wall {r['wall_s']:7.1f} s"
            f"  rc {r['rc']}" + (f"  input {r['input_mib']} MiB" if input_bytes else ""),
            flush=True,
        )

    record("baseline/import audio", [py, "-c", "import megatron_soda.audio"])
    record("baseline/import preprocess", [py, "-c", "import megatron_soda.data.preprocess"])
    seconds = args.hours * 3600
    pre_seconds = seconds if args.preprocess_minutes is None else args.preprocess_minutes * 60
    if "decode" not in args.skip or "audio" not in args.skip:
        loop = speech_loop()
        writers = {"flac": write_flac, "m4a": write_m4a}
        for fmt, writer in ((f, writers[f]) for f in args.formats):
            for secs in sorted({seconds, pre_seconds}):
                path = os.path.join(w, f"speech_{int(secs)}s.{fmt}")
                if not os.path.exists(path):
                    t0 = time.perf_counter()
                    writer(path + ".tmp", secs, loop)
                    os.replace(path + ".tmp", path)
                    print(
                        f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, "
                        f"{time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
    for fmt in args.formats:
        path = os.path.join(w, f"speech_{int(seconds)}s.{fmt}")
        if "decode" not in args.skip:
            record(
                f"decode/{fmt} {seconds / 60:.0f} min",
                [py, "-c", DECODE, path, str(seconds), str(args.utterance_seconds)],
                os.path.getsize(path),
            )
        if "audio" not in args.skip:
            path = os.path.join(w, f"speech_{int(pre_seconds)}s.{fmt}")
            manifest = os.path.join(w, f"manifest_{fmt}_{int(pre_seconds)}s.jsonl")
            write_manifest(manifest, path, pre_seconds, args.utterance_seconds)
            record(
                f"preprocess-audio/{fmt} {pre_seconds / 60:.0f} min",
                preprocess_command(py, manifest, "jsonl", os.path.join(w, f"out_audio_{fmt}"),
                                   args.tokenizer, args.codec),
                os.path.getsize(path),
            )
            if args.whole:
                manifest = os.path.join(w, f"manifest_{fmt}_{int(pre_seconds)}s_whole.jsonl")
                write_manifest(manifest, path, pre_seconds, None)
                record(
                    f"preprocess-whole/{fmt} {pre_seconds / 60:.0f} min",
                    preprocess_command(py, manifest, "jsonl",
                                       os.path.join(w, f"out_whole_{fmt}"), args.tokenizer, args.codec),
                    os.path.getsize(path),
                )
    if "text" not in args.skip or "text-read" not in args.skip:
        plain = os.path.join(w, f"web_{args.text_gb:g}GB.jsonl")
        if not os.path.exists(plain):
            write_text(plain, args.text_gb)
        zst = plain + ".zst"
        if not os.path.exists(zst):
            compress_zst(plain, zst)
        for name, path in (("plain", plain), ("zst", zst)):
            if "text-read" not in args.skip:
                record(f"read-text/{name}", [py, "-c", READ_TEXT, path], os.path.getsize(path))
            if "text" in args.skip:
                continue
            record(
                f"preprocess-text/{name}",
                preprocess_command(py, path, "text", os.path.join(w, f"out_text_{name}"), args.tokenizer),
                os.path.getsize(path),
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
