#!/usr/bin/env python
"""The codec stage as users run it: ``tools/preprocess/preprocess_data.py`` end to end (wall time
of the whole command: start-up, codec stage, token stage, exit), on four corpora of espeak-ng
speech (benchmarks/speech_corpus.py), optionally against another checkout (``--before DIR``, e.g.
a ``git worktree`` of an older commit), runs interleaved before/after:

* ``one``: one 3-15 s utterance (start-up and exit dominate);
* ``std``: ``--std-seconds`` of 3-15 s clips, 1-3 utterances per recording, mixed formats;
* ``grouped``: ``--grouped-seconds`` of 2-3 s clips, 20-300 utterances per recording (how real
  corpora come: a video, a source, a chapter, an episode);
* ``ungrouped``: the same utterances, each its own recording.

Each run is a fresh process tree with ``--workers 0`` (one codec worker per core); the realtime
factor is audio seconds / wall seconds; the load average before each run is printed with it.
Both checkouts run with this interpreter (``PYTHONPATH`` set to the checkout).

The codec (``--codec``, default ``saved``): full-size Mimi with random weights saved once as a
Hugging Face directory (``model.safetensors`` + ``config.json``, encoder and decoder, as
``hf download kyutai/mimi --local-dir`` gives) and loaded from it, as users run the tool
(about 0.1 s per worker).  ``--codec random:full`` builds the random model in every worker
instead (about 2 s more per worker: initialisation and the codebook probe), which only tests
and demos do.

    .venv/bin/python benchmarks/bench_codec_cli.py --before /tmp/old --json cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_paths import DEFAULT_TOKENIZER, REPO
from speech_corpus import make_corpus


def corpora(workdir: str, std_seconds: float, grouped_seconds: float) -> dict[str, tuple[str, float | None]]:
    """name -> (manifest, audio seconds or None for the one-utterance run)."""
    std, std_s, _ = make_corpus(os.path.join(workdir, f"std{int(std_seconds)}"), std_seconds)
    grouped, g_s, _ = make_corpus(os.path.join(workdir, f"grouped{int(grouped_seconds)}"), grouped_seconds,
                                  kind="grouped")
    rows = [json.loads(line) for line in open(grouped)]
    ungrouped = os.path.join(workdir, "ungrouped.jsonl")
    with open(ungrouped, "w") as f:
        for r in rows:
            audio = os.path.join(os.path.dirname(grouped), r["audio"])
            f.write(json.dumps({**r, "audio": audio, "recording_id": r["id"]}) + "\n")
    one = os.path.join(workdir, "one.jsonl")
    with open(one, "w") as f, open(std) as src:
        r = json.loads(src.readline())
        f.write(json.dumps({**r, "audio": os.path.join(os.path.dirname(std), r["audio"])}) + "\n")
    return {"one": (one, None), "std": (std, std_s), "grouped": (grouped, g_s), "ungrouped": (ungrouped, g_s)}


def saved_codec(workdir: str) -> str:
    """A directory holding full-size random Mimi as ``save_pretrained`` writes it (made once)."""
    path = os.path.join(workdir, "mimi-full-random")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        from megatron_soda.audio.codec import MimiCodec

        codec = MimiCodec("random:full", decoder=True)
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        codec.model.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    return path


def run_cli(checkout: str, manifest: str, out_dir: str, codec: str) -> float:
    """Wall seconds of one preprocessing run of ``checkout``'s code."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    cmd = [sys.executable, os.path.join(checkout, "tools", "preprocess", "preprocess_data.py"), "--input",
           manifest, "--input-format", "jsonl", "--output-prefix", os.path.join(out_dir, "shard"),
           "--tokenizer", DEFAULT_TOKENIZER, "--codec", codec, "--workers", "0"]
    env = dict(os.environ, PYTHONPATH=checkout, PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: preprocessing failed:\n{proc.stderr[-2000:]}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default=None, help="another checkout to compare with (run interleaved)")
    p.add_argument("--codec", default="saved", help="saved (default: see above) or a --codec spec")
    p.add_argument("--corpora", default="one,std,grouped,ungrouped")
    p.add_argument("--std-seconds", type=float, default=240)
    p.add_argument("--grouped-seconds", type=float, default=1500)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "soda_bench_codec_cli"))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    available = corpora(a.workdir, a.std_seconds, a.grouped_seconds)
    codec = saved_codec(a.workdir) if a.codec == "saved" else a.codec
    checkouts = {"after": REPO} | ({"before": os.path.abspath(a.before)} if a.before else {})
    rows = []
    for rep in range(a.repeats):
        for name in a.corpora.split(","):
            manifest, seconds = available[name]
            order = list(checkouts) if rep % 2 else list(checkouts)[::-1]  # before first on even repeats
            for which in order:
                load = os.getloadavg()[0]
                wall = run_cli(checkouts[which], manifest, os.path.join(a.workdir, f"out-{which}-{name}"), codec)
                row = {"code": which, "corpus": name, "codec": a.codec, "repeat": rep, "wall_s": round(wall, 2),
                       "realtime": round(seconds / wall, 2) if seconds else None, "load_before": round(load, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
