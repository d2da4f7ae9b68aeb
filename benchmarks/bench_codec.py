#!/usr/bin/env python
"""Codec-stage benchmark: audio seconds per wall second, decode + resample + Mimi encode.

Generates a speech corpus with espeak-ng (clips of 3-15 s in mixed formats: WAV 16 kHz,
FLAC 44.1 kHz stereo, MP3, Ogg Vorbis 48 kHz, float WAV 24 kHz; 1-3 utterances per
recording), then, in the same run and interleaved repeat by repeat:

* ``naive``: the per-utterance loop a user would write: ``soundfile.read`` + downmix + soxr
  resample + ``MimiModel.encode(x, num_quantizers=8)`` one clip at a time, torch's default
  threads, ``torch.no_grad``;
* the real stage-1 code path (``megatron_soda.data.encode_stage.encode_units``) for each
  configuration given with ``--config`` (workers, threads, precision, ...).

``--corpus grouped`` is issue 19's shape of real corpora: 2-3 s clips, 20-300 utterances per
recording.  Every timed run happens in a fresh interpreter (as a real run would), so process-wide
settings of one run cannot leak into the next or into the baseline.
Stage-1 wall time includes starting the worker processes and building the codec in each;
that start-up is also measured alone (a one-utterance corpus, same configuration) and the
``steady`` rate is ``audio / (wall - startup)``.  Codes are compared against the naive loop
and between configurations (fraction identical per codebook).

Two in-process modes instead of the stage runs: ``--lean-check`` (per-core speed of the lean
fp32 forward, audio/mimi_lean.py, against ``MimiModel.encode``: one thread, interleaved, with
hashes of both paths' encoder output and codes) and ``--batch-seconds S`` (audio/batched_encode.py
on ``--device``/``--dtype``: realtime factor and agreement with fp32 one clip per pass).  Every
run prints the machine's per-core fp32 GEMM rate, so numbers from other machines compare.

    .venv/bin/python benchmarks/bench_codec.py --seconds 240 --repeats 3 --json out.json
    .venv/bin/python benchmarks/bench_codec.py --corpus grouped --seconds 1500 --lean-check
    .venv/bin/python benchmarks/bench_codec.py --device cuda --dtype bf16 --batch-seconds 240
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from load_meter import QUIET_CORES, OthersLoad, other_busy_processes
from speech_corpus import (
    agreement,
    batched_check,
    cached_codes,
    digest,
    gemm_gflops,
    lean_check,
    load_wave,
    make_corpus,
    naive_loop,
    read_manifest,
)


# ----------------------------------------------------------------------------- runners
@dataclass
class Config:
    name: str
    workers: int = 1
    threads: int | None = None
    precision: str = "fp32"
    chunk_utterances: int = 128
    job_utterances: int | None = None
    batch_seconds: float | None = None
    device: str | None = None  # None: --device
    batching: str | None = None  # "pieces" | "duration" (--codec-batching); None: by device

    @classmethod
    def parse(cls, text: str) -> Config:
        """``name:key=value,key=value`` e.g. ``w2:workers=2``, ``bf16:workers=2,precision=bf16``
        or ``gpu:workers=8,batching=duration`` (with ``--device cuda``)."""
        name, _, rest = text.partition(":")
        kw: dict = {}
        for item in filter(None, rest.split(",")):
            k, _, v = item.partition("=")
            ftype = cls.__dataclass_fields__[k].type
            kw[k] = v if "str" in str(ftype) else (float(v) if "float" in str(ftype) else int(v))
        return cls(name=name, **kw)


def stage1(manifest: str, codes_dir: str, cfg: Config, codec: str) -> dict:
    """Wall seconds of the real codec stage (fresh cache) for one configuration, and (duration
    batching) the main process's seconds encoding and waiting for the decoders."""
    import logging

    times: dict = {}

    class Times(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            times.update(getattr(record, "stage_times", {}))

    from megatron_soda.data.encode_stage import EncodeConfig, encode_units
    from megatron_soda.data.units import expand_inputs, plan_units

    shutil.rmtree(codes_dir, ignore_errors=True)
    units = plan_units(expand_inputs([manifest], "jsonl"), "jsonl")
    ecfg = EncodeConfig(
        codec=codec,
        cache_codebooks=8,
        workers=cfg.workers,
        threads_per_worker=cfg.threads,
        chunk_utterances=cfg.chunk_utterances,
        job_utterances=cfg.job_utterances,
        batch_seconds=cfg.batch_seconds,
        precision=cfg.precision,
        device=cfg.device or "cpu",
        batching=cfg.batching,
    )
    log = logging.getLogger("megatron_soda.data.encode_stage")
    handler, level = Times(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        t0 = time.perf_counter()
        encode_units(units, codes_dir, ecfg)
        wall = time.perf_counter() - t0
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return {"wall": wall, "stage_times": {k: round(v, 3) for k, v in times.items()}}


def one_measurement(job: dict) -> dict:
    """One timed run (``--one``), in the fresh interpreter :func:`isolated` starts."""
    if job["kind"] == "naive":
        from megatron_soda.audio.codec import MimiCodec

        model = MimiCodec(job["codec"]).model  # not timed
        rows = read_manifest(job["manifest"])
        dt, codes = naive_loop(rows, model, job["threads"])
        np.savez(job["codes_out"], **{r["id"]: c for r, c in zip(rows, codes)})
        return {"wall": dt}
    cfg = Config(**job["config"])
    return stage1(job["manifest"], job["codes_dir"], cfg, job["codec"])


def isolated(job: dict) -> dict:
    """Run one measurement in a fresh interpreter, as a real run would be: process-wide
    state of one run (torch's thread count, the allocator tuning the codec stage applies
    in-process with ``--workers 1``) must not leak into the next, nor into the baseline."""
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", json.dumps(job)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise RuntimeError(f"measurement {job} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


@dataclass
class Result:
    name: str
    walls: list[float] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # cores taken by other processes
    times: list[dict] = field(default_factory=list)  # the stage's own: encode, wait, wall


def summarize(audio_s: float, r: Result, naive_med: float | None) -> dict:
    rt = [audio_s / w for w in r.walls]
    d = {
        "name": r.name,
        "wall_s": [round(w, 2) for w in r.walls],
        "rt_total_median": round(statistics.median(rt), 2),
        "rt_total_min": round(min(rt), 2),
        "rt_total_max": round(max(rt), 2),
        "others_cores": [round(o, 2) for o in r.others],
    }
    if any(r.times):
        d["stage_times"] = r.times
    # steady: only where start-up is a minor part of the run (it is measured separately and
    # carries its own noise)
    steady = [audio_s / (w - s) for w, s in zip(r.walls, r.startups) if w - s > 0.5 * w]
    if r.startups:
        d["startup_s"] = [round(s, 2) for s in r.startups]
        d["startup_median_s"] = round(statistics.median(r.startups), 2)
    if steady:
        d["rt_steady_median"] = round(statistics.median(steady), 2)
        d["rt_steady_min"] = round(min(steady), 2)
        d["rt_steady_max"] = round(max(steady), 2)
    if naive_med:  # the naive loop builds its model before timing: compare steady too
        d["vs_naive"] = round(d["rt_total_median"] / naive_med, 2)
        if steady:
            d["vs_naive_steady"] = round(d["rt_steady_median"] / naive_med, 2)
    quiet = [x for x, o in zip(rt, r.others) if o < QUIET_CORES]
    d["rt_total_quiet"] = [round(x, 2) for x in quiet]  # runs the machine was (nearly) ours
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=240.0, help="audio in the corpus")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--codec", default="random:full")
    p.add_argument("--corpus", choices=("standard", "grouped"), default="standard")
    p.add_argument("--lean-check", action="store_true", help="per-core lean vs MimiModel.encode")
    p.add_argument("--batch-seconds", type=float, default=None, help="batched-encode mode")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument(
        "--config",
        action="append",
        default=None,
        help="stage-1 configuration NAME:key=value,... (repeatable); keys: workers, threads, "
        "precision, chunk_utterances, job_utterances, batch_seconds, device (default --device), "
        "batching (pieces|duration: --codec-batching)",
    )
    p.add_argument("--naive-threads", type=int, default=None, help="default: torch's default")
    p.add_argument("--no-naive", action="store_true")
    p.add_argument("--no-startup", action="store_true", help="skip measuring start-up alone")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "soda_bench_codec"))
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_measurement(json.loads(args.one))))
        return 0
    configs = [
        Config.parse(c)
        for c in (
            args.config
            or [
                "w1:workers=1",
                "w2:workers=2",
                "w2-bf16:workers=2,precision=bf16",
            ]
        )
    ]
    for c in configs:
        c.device = c.device or args.device

    import torch

    load_before, busy_before = os.getloadavg(), other_busy_processes()
    print(f"load average {load_before}; other busy processes: {busy_before or 'none'}")
    gemm = gemm_gflops()
    print(f"per-core fp32 GEMM rate: {gemm} GFLOP/s (1 thread, 1024^3 matmul, best of 5)")
    kind = "" if args.corpus == "standard" else f"{args.corpus}-"
    corpus_dir = os.path.join(args.workdir, f"corpus-{kind}{int(args.seconds)}s")
    t0 = time.perf_counter()
    manifest, audio_s, n_utts = make_corpus(corpus_dir, args.seconds, kind=args.corpus)
    print(f"corpus: {n_utts} utterances, {audio_s:.1f} s audio ({time.perf_counter() - t0:.1f}s)")
    rows = read_manifest(manifest)
    if args.lean_check or args.batch_seconds:
        t0 = time.perf_counter()
        waves = [load_wave(r["path"]) for r in rows]
        # decode + resample to 24 kHz in one process: x CPU workers, what can feed a GPU encoder
        decode_rt = audio_s / (time.perf_counter() - t0)
        res = lean_check(waves, args.codec, args.repeats) if args.lean_check else None
        res = res or batched_check(waves, args)
        res.update(
            gemm_gflops_per_core=gemm,
            corpus=args.corpus,
            audio_seconds=round(audio_s, 2),
            decode_rt_one_process=round(decode_rt, 1),
            cpu_cores=os.cpu_count(),
        )
        print(json.dumps(res, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return 0
    one_dir = os.path.join(args.workdir, "one")
    os.makedirs(one_dir, exist_ok=True)
    one_manifest = os.path.join(one_dir, "manifest.jsonl")
    first = {k: v for k, v in rows[0].items() if k != "path"}
    with open(one_manifest, "w") as f:
        f.write(json.dumps({**first, "audio": rows[0]["path"]}) + "\n")

    results = {c.name: Result(c.name) for c in configs}
    naive = Result("naive")
    codes: dict[str, dict[str, np.ndarray]] = {}
    for rep in range(args.repeats):
        order = list(configs) if rep % 2 == 0 else list(reversed(configs))
        if not args.no_naive:
            out = os.path.join(args.workdir, "naive-codes.npz")
            job = {"kind": "naive", "codec": args.codec, "manifest": manifest}
            with OthersLoad() as load:
                dt = isolated({**job, "threads": args.naive_threads, "codes_out": out})["wall"]
            naive.walls.append(dt)
            naive.others.append(load.cores)
            with np.load(out) as z:
                codes["naive"] = {k: z[k] for k in z.files}
            print(
                f"repeat {rep}: naive {dt:.2f}s ({audio_s / dt:.1f}x) "
                f"[others used {load.cores:.2f} cores]",
                flush=True,
            )
        for cfg in order:
            cdir = os.path.join(args.workdir, f"codes-{cfg.name}")
            job = {"kind": "stage1", "codec": args.codec, "config": asdict(cfg)}
            with OthersLoad() as load:
                got = isolated({**job, "manifest": manifest, "codes_dir": cdir})
            wall, times = got["wall"], got.get("stage_times") or {}
            results[cfg.name].walls.append(wall)
            results[cfg.name].times.append(times)
            results[cfg.name].others.append(load.cores)
            codes[cfg.name] = cached_codes(cdir)
            msg = (
                f"repeat {rep}: {cfg.name} {wall:.2f}s ({audio_s / wall:.1f}x incl. start-up) "
                f"[others used {load.cores:.2f} cores]"
            )
            if "encode" in times:  # duration batching: is the GPU waiting for the CPU decoders?
                msg += (
                    f", main process: codec build {times.get('codec build', 0):.2f}s, encode "
                    f"{times['encode']:.2f}s, waiting for decoders {times.get('wait', 0):.2f}s"
                )
            if not args.no_startup:
                one_dir = os.path.join(args.workdir, "codes-one")
                su = isolated({**job, "manifest": one_manifest, "codes_dir": one_dir})["wall"]
                results[cfg.name].startups.append(su)
                msg += f", start-up alone {su:.2f}s"
            print(msg, flush=True)

    naive_med = audio_s / statistics.median(naive.walls) if naive.walls else None
    table = []
    if naive.walls:
        table.append(summarize(audio_s, naive, None))
    table += [summarize(audio_s, results[c.name], naive_med) for c in configs]
    ref = "naive" if "naive" in codes else configs[0].name
    agree = {
        name: agreement(codes[ref], c, drop_last=ref == "naive")
        for name, c in codes.items()
        if name != ref
    }
    print()
    head = f"{'run':<12}{'rt total (med, min-max)':<28}{'rt steady (med, min-max)':<28}"
    print(f"{head}{'vs naive (total/steady)':<25}{'start-up s':<12}rt total in quiet runs")
    for d in table:
        tot = f"{d['rt_total_median']:.1f}x ({d['rt_total_min']:.1f}-{d['rt_total_max']:.1f})"
        st = (
            f"{d['rt_steady_median']:.1f}x ({d['rt_steady_min']:.1f}-{d['rt_steady_max']:.1f})"
            if "rt_steady_median" in d
            else "-"
        )
        quiet = " ".join(f"{x:.1f}x" for x in d["rt_total_quiet"]) or "-"
        vs = f"{d.get('vs_naive', '-')} / {d.get('vs_naive_steady', '-')}"
        su = f"{d['startup_median_s']:.2f}" if "startup_median_s" in d else "-"
        print(f"{d['name']:<12}{tot:<28}{st:<28}{vs:<25}{su:<12}{quiet}")
    last = " (each clip's last frame excluded)" if ref == "naive" else ""
    print(f"\ncodes identical to {ref}{last}, per codebook 0..7:")
    for name, a in agree.items():
        print(f"  {name:<10} {' '.join(f'{v:.4f}' for v in a)}")
    shas = {name: digest([c[k][:8] for k in sorted(c)]) for name, c in codes.items()}
    print("codes sha256: " + ", ".join(f"{k} {v}" for k, v in shas.items()))
    print(f"per-core fp32 GEMM rate: {gemm} GFLOP/s")
    out = {
        "load": {"before": load_before, "after": os.getloadavg(), "others": busy_before},
        "codes_sha": shas,
        "machine": {
            "gemm_gflops_per_core": gemm,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(),
        },
        "codec": args.codec,
        "corpus": {"utterances": n_utts, "audio_seconds": round(audio_s, 2)},
        "repeats": args.repeats,
        "configs": [asdict(c) for c in configs],
        "results": table,
        "codes_identical_to_" + ref: agree,
        "pairwise_identical": {
            f"{x}|{y}": agreement(codes[x], codes[y])
            for i, x in enumerate(codes)
            for y in list(codes)[i + 1 :]
            if "naive" not in (x, y)
        },
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
