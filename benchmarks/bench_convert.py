#!/usr/bin/env python
"""Conversion benchmark: time, throughput and peak memory of both conversion directions for
the SODA model shapes, with random weights and SODA's vocabulary (Llama-3 base, 8 codebooks:
144,644 ids).

For each shape: a random checkpoint is written once (TP=1, the trainer's save path, fp32; not
timed), then each measured step runs in a fresh process:

* ``to_hf``: convert_to_hf (checkpoint -> HF safetensors, fp32);
* ``from_hf``: convert_from_hf of that HF directory (TP x PP as given; 1x1 runs in the process,
  larger layouts fork one process per rank).

Reported per step: wall seconds (imports excluded: they are measured in a separate
``baseline`` process), GB/s = model bytes / seconds, peak memory of the whole process tree
(sum of the processes' PSS, so that pages a forked process shares are counted once, sampled
every 50 ms with psutil) and
that peak minus the baseline's RSS after imports, as a ratio to the checkpoint's model bytes,
and how many cores *other* processes used meanwhile (``/proc/stat`` minus our tree).

    .venv/bin/python benchmarks/bench_convert.py --shapes 135m 600m --json convert.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bench_paths import DEFAULT_TOKENIZER
from load_meter import OthersLoad


# ---------------------------------------------------------------------------- child side
def child(step: str, args: list[str]) -> None:
    """Run one step in this (fresh) process; print a JSON line with its own timings."""
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import megatron.core.dist_checkpointing  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    from megatron_soda.convert import from_hf, runtime, to_hf  # noqa: F401

    out: dict = {"import_s": time.perf_counter() - t0}
    rss_after_import = _rss_self()
    start = time.perf_counter()
    quiet = {"log": lambda *a, **k: None}
    if step == "baseline":
        pass
    elif step == "make":
        from megatron_soda.models import preset
        from megatron_soda.testing.checkpoints import save_random_checkpoint
        from megatron_soda.tokenizer import SodaTokenizer

        shape, tokenizer, save = args
        tok = SodaTokenizer.load(tokenizer)
        cfg = preset(shape).with_overrides(vocab_size=tok.vocab_size)
        save_random_checkpoint(save, cfg, tok, seed=1, iteration=1)
    elif step == "to_hf":
        out["summary"] = to_hf.convert_to_hf(args[0], args[1], dtype="fp32", **quiet)
    elif step == "from_hf":
        tp, pp = (int(x) for x in args[2].split("x"))
        out["summary"] = from_hf.convert_from_hf(args[0], args[1], tp, pp, **quiet)
    out["seconds"] = time.perf_counter() - start
    out["rss_after_import"] = rss_after_import
    print("RESULT " + json.dumps(out, default=str), flush=True)


def _rss_self() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- parent side
def _pss(proc) -> int:
    """Proportional set size: pages shared by forked processes are counted once in the sum."""
    try:
        return proc.memory_full_info().pss
    except (AttributeError, OSError):
        return proc.memory_info().rss


def measure(step: str, *args: str) -> dict:
    import psutil

    cmd = [sys.executable, os.path.abspath(__file__), "--child", step, *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    peak = [0]
    done = threading.Event()

    def sample(proc: subprocess.Popen) -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                total = sum(_pss(p) for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    # own CPU time: this process (the sampler) and its children
    with OthersLoad() as load:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        thread = threading.Thread(target=sample, args=(proc,), daemon=True)
        thread.start()
        stdout, stderr = proc.communicate()
        done.set()
        thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{stderr[-3000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    res.update(
        peak_tree_rss=peak[0], cpu_s=load.own_cpu_s, wall_s=load.wall_s, others_cores=load.cores
    )
    return res


def model_bytes(ckpt: str) -> int:
    from megatron_soda.convert.to_hf import MegatronSource

    src = MegatronSource(ckpt)
    return sum(
        src.reader.nbytes(k)
        for k in [
            *src.layer_keys.values(),
            "embedding.word_embeddings.weight",
            "output_layer.weight",
            "decoder.final_layernorm.weight",
        ]
    )


def run(args: argparse.Namespace, work: str) -> None:
    base = measure("baseline")
    print(
        f"baseline process after imports: RSS {base['rss_after_import'] / 2**20:.0f} MiB, imports "
        f"{base['import_s']:.1f} s"
    )
    results = {"baseline": base, "shapes": {}}
    for shape in args.shapes:
        ckpt_root, hf = os.path.join(work, f"{shape}_ckpt"), os.path.join(work, f"{shape}_hf")
        shutil.rmtree(ckpt_root, ignore_errors=True)
        shutil.rmtree(hf, ignore_errors=True)
        measure("make", shape, args.tokenizer, ckpt_root)
        ckpt = os.path.join(ckpt_root, "iter_0000001")
        size = model_bytes(ckpt)
        rows = {"to_hf": measure("to_hf", ckpt_root, hf)}
        for lay in args.from_hf_layouts:
            out = os.path.join(work, f"{shape}_back_{lay}")
            shutil.rmtree(out, ignore_errors=True)
            try:
                rows[f"from_hf {lay}"] = measure("from_hf", hf, out, lay)
            except RuntimeError as e:
                print(f"{shape} from_hf {lay}: skipped ({str(e).strip().splitlines()[-1]})")
            shutil.rmtree(out, ignore_errors=True)
        results["shapes"][shape] = {"model_bytes": size, "steps": rows}
        print(
            f"\n{shape}: model {size / 1e9:.3f} GB fp32 ({size / 4 / 1e6:.0f} M parameters incl. padded vocab)"
        )
        print(
            f"{'step':<14}{'seconds':>9}{'CPU s':>8}{'GB/s':>8}{'peak GiB':>10}{'minus base GiB':>16}"
            f"{'x model':>9}{'others used':>13}"
        )
        for name, r in rows.items():
            extra = r["peak_tree_rss"] - base["rss_after_import"]
            print(
                f"{name:<14}{r['seconds']:>9.2f}{r['cpu_s']:>8.1f}{size / r['seconds'] / 1e9:>8.2f}"
                f"{r['peak_tree_rss'] / 2**30:>10.2f}"
                f"{extra / 2**30:>16.2f}{extra / size:>9.2f}{r['others_cores']:>10.2f} cores"
            )
        shutil.rmtree(ckpt_root, ignore_errors=True)
        shutil.rmtree(hf, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", default=["135m", "600m"])
    p.add_argument(
        "--from-hf-layouts", nargs="+", default=["1x1"], help="TPxPP layouts for from_hf"
    )
    p.add_argument(
        "--tokenizer", default=DEFAULT_TOKENIZER, help="base tokenizer.json (default: Llama-3)"
    )
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    work = args.work or tempfile.mkdtemp(prefix="bench_convert_")
    try:
        run(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
