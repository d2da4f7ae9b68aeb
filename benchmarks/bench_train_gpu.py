#!/usr/bin/env python
"""GPU training benchmark: tokens/s, model TFLOP/s per device and MFU per device of
``pretrain_soda.py`` for the paper's sizes (135M, 600M, 1.7B, 4B) in bf16 and FP8.

For every (size, precision) it launches ``torchrun --nproc_per_node N pretrain_soda.py`` on the
visible GPUs for ``--warmup + --steps`` iterations (log interval 1, no evaluation, no
checkpoints), then reads the trainer's metrics JSONL: the medians over the iterations after
the warm-up of ``tokens_per_sec``, ``tflops_per_device`` and ``mfu`` (FLOPs per token from
``megatron_soda.scaling.flops``, SODA's Levanter count; MFU against the dense bf16 peak of the
GPU, and against twice that under FP8, as the trainer reports it).  It prints a table and
writes JSON.

* FP8 needs Transformer Engine: without it every FP8 row reads "skipped: TE not installed"
  (the trainer would stop with an error; the benchmark does not start it).
* A run that fails (e.g. out of memory) is reported with the reason, and the others go on.
* Without a GPU the script stops with a clear message; ``--dry-run`` prints the commands
  without running anything (works anywhere).

Data: synthetic SODA-structured shards (SODA's 95/5 speech/text blend over YODAS2-en,
Emilia-YODAS-EN and Emilia-EN at 131:73:37 plus text, written with megatron's
IndexedDatasetBuilder; see synthetic_shards.py) unless ``--data-path`` gives real ones.
Throughput does not depend on the token values, only on the shapes (and, through the
document masks, little on where documents end).

Per-size layouts (TP/PP/micro-batch, distributed optimizer) default to those of
``examples/pretrain_soda.sh`` for 8xH100 nodes; override with ``--layout 4b:tp=2,mbs=2``.

    .venv/bin/python benchmarks/bench_train_gpu.py --dry-run
    .venv/bin/python benchmarks/bench_train_gpu.py --sizes 135m,600m,1.7b,4b --precisions bf16,fp8 \\
        --steps 20 --warmup 5 --json gpu.json
    bash benchmarks/bench_train_gpu.sh        # the same with results under work_dirs/
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_paths import DEFAULT_TOKENIZER, REPO, TORCHRUN
from pretrain_command import pretrain_flags, torchrun_command
from synthetic_shards import blend_args, synthetic_blend
from train_summary import stats

from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

# Per size on 80 GB GPUs at seq 4096 (the same as examples/pretrain_soda.sh): tensor/pipeline
# parallel size, micro-batch size, distributed optimizer.  The output layer's logits
# (micro-batch x 4096 x 144,768, plus an fp32 copy in the loss) are what limits the micro-batch
# of the small models; parameters + Adam state and activations limit the large ones.
LAYOUTS: dict[str, dict[str, int]] = {
    "tiny": dict(tp=1, pp=1, mbs=4, dist_opt=0),  # CPU smoke tests of this script only
    "135m": dict(tp=1, pp=1, mbs=8, dist_opt=1),
    "600m": dict(tp=1, pp=1, mbs=4, dist_opt=1),
    "1.7b": dict(tp=1, pp=1, mbs=2, dist_opt=1),
    "4b": dict(tp=1, pp=1, mbs=1, dist_opt=1),
}
PRECISIONS = {
    "bf16": ["--bf16"],
    "fp8": ["--bf16", "--fp8-format", "hybrid"],
    "fp32": [],  # CPU smoke tests only
}

# Kernel variants (pretrain_soda.py flags added to a run): "default" is whatever the trainer picks
# (TE where installed; without TE on a GPU, flex attention); the others pin the torch-native path
# of docs/gpu.md: attention backend, the chunked head, torch.compile of MLP/norms/head.
VARIANTS = {
    "default": [],
    "local": ["--attention-backend", "local"],
    "flex": ["--attention-backend", "flex"],
    "flex+compile": ["--attention-backend", "flex", "--torch-compile", "mlp,norm"],
    "flex+chunk": ["--attention-backend", "flex", "--head-chunk-tokens", "4096"],
    "flex+chunk+compile": ["--attention-backend", "flex", "--head-chunk-tokens", "4096",
                           "--torch-compile", "all"],
}


def parse_layout_overrides(items: list[str]) -> dict[str, dict[str, int]]:
    """``SIZE:key=value,...`` (keys tp, pp, mbs, dist_opt) -> per-size overrides."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        size, _, body = item.partition(":")
        if not body:
            raise ValueError(f"--layout {item!r}: expected SIZE:key=value[,key=value]")
        for kv in body.split(","):
            key, _, value = kv.partition("=")
            if key not in ("tp", "pp", "mbs", "dist_opt") or not value.isdigit():
                raise ValueError(
                    f"--layout {item!r}: unknown key or non-integer value {kv!r} "
                    "(keys: tp, pp, mbs, dist_opt)"
                )
            out.setdefault(size, {})[key] = int(value)
    return out


def te_available() -> bool:
    from megatron_soda.models.te import te_available as available

    return available()


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as no GPU here
        return 0


def build_command(
    a: argparse.Namespace, size: str, precision: str, layout: dict[str, int], metrics: str,
    variant: str = "default",
) -> tuple[list[str], dict[str, int]]:
    """torchrun command of one run, and its parallel layout (with DP and the global batch)."""
    nproc = a.nproc_per_node
    tp, pp, mbs = layout["tp"], layout["pp"], layout["mbs"]
    if nproc % (tp * pp):
        raise ValueError(f"{size}: {nproc} processes are not divisible by TP {tp} x PP {pp}")
    dp = nproc // (tp * pp)
    gbs = a.global_batch_size or mbs * dp * a.micro_batches_per_step
    if gbs % (mbs * dp):
        raise ValueError(
            f"{size}: global batch {gbs} is not a multiple of micro batch {mbs} x DP {dp}"
        )
    flags = pretrain_flags(
        device=a.device,
        model_size=size,
        tokenizer=a.tokenizer,
        num_codebooks=a.num_codebooks,
        data_path=a.data_path,
        data_cache_path=os.path.join(a.workdir, "cache"),
        seq_length=a.seq_length,
        parallel=[
            "--tensor-model-parallel-size",
            str(tp),
            "--pipeline-model-parallel-size",
            str(pp),
        ],
        micro_batch_size=mbs,
        global_batch_size=gbs,
        train_iters=a.warmup + a.steps,
        metrics_jsonl=metrics,
    )
    cmd = torchrun_command(a.torchrun, nproc, a.master_port, [*flags, *PRECISIONS[precision]])
    if precision == "fp8" and a.fp8_recipe:
        cmd += ["--fp8-recipe", a.fp8_recipe]
    if layout.get("dist_opt") and dp > 1:
        cmd.append("--use-distributed-optimizer")
    if tp > 1:
        cmd.append("--sequence-parallel")
    if a.peak_tflops:
        cmd += ["--peak-tflops-per-device", str(a.peak_tflops)]
    cmd += VARIANTS[variant] + a.extra
    return cmd, dict(tp=tp, pp=pp, dp=dp, mbs=mbs, gbs=gbs)


def summarize_metrics(path: str, warmup: int) -> dict[str, Any]:
    """Medians (and min-max) over the iterations after the warm-up."""
    with open(path) as f:
        recs = [r for r in map(json.loads, f) if r.get("split") == "train"]
    timed = [r for r in recs if r["iteration"] > warmup] or recs[-1:]
    if not timed:
        raise ValueError(f"{path}: no training records")
    out: dict[str, Any] = {"iterations": [r["iteration"] for r in timed]}
    for key in ("tokens_per_sec", "tflops_per_device", "mfu", "step_time_s", "peak_mem_gib"):
        values = [r[key] for r in timed if isinstance(r.get(key), (int, float))]
        out[key] = stats(values) if values else None
    out["lm_loss_first_last"] = [recs[0]["lm_loss"], recs[-1]["lm_loss"]]
    return out


def _failure_reason(log_text: str) -> str:
    """The most telling line of a failed run's log."""
    if "out of memory" in log_text.lower():
        return "out of memory (try --layout SIZE:mbs=... or tp=2)"
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for pattern in (r"pretrain_soda\.py: error:", r"^[\w.]*(Error|Exception)\b"):
        hits = [ln for ln in lines if re.search(pattern, ln)]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "no output"


def run_one(
    a: argparse.Namespace, size: str, precision: str, layout: dict[str, int], te: bool,
    variant: str = "default",
) -> dict:
    """One (size, precision, variant) run; ``te``: Transformer Engine is installed."""
    tag = f"{size}-{precision}" + ("" if variant == "default" else f"-{variant}")
    metrics = os.path.join(a.workdir, f"metrics-{tag}.jsonl")
    log_path = os.path.join(a.workdir, f"log-{tag}.txt")
    row: dict[str, Any] = {"size": size, "precision": precision, "variant": variant}
    if precision == "fp8" and not a.dry_run and not te:
        row["status"] = "skipped: TE not installed"
        return row
    try:
        cmd, par = build_command(a, size, precision, layout, metrics, variant)
    except ValueError as e:
        row["status"] = f"skipped: {e}"
        return row
    row.update(par, command=shlex.join(cmd))
    if a.dry_run:
        note = "  # skipped when TE is not installed" if precision == "fp8" else ""
        print(
            f"# {tag} (TP {par['tp']}, PP {par['pp']}, DP {par['dp']}, mbs {par['mbs']}, gbs {par['gbs']})"
        )
        print(shlex.join(cmd) + note)
        row["status"] = "dry-run"
        return row
    if os.path.exists(metrics):
        os.remove(metrics)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if a.device == "cuda":
        env.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    print(f"== {tag}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row["log"] = log_path
    with open(log_path, errors="replace") as f:
        text = f.read()
    for word in ("transformer_engine", "local"):
        if f"| {word} spec |" in text:
            row["transformer_impl"] = word
    if proc.returncode != 0:
        row["status"] = f"failed (exit {proc.returncode}): {_failure_reason(text)}"
        return row
    try:
        row.update(summarize_metrics(metrics, a.warmup))
        row["status"] = "ok"
    except (OSError, ValueError) as e:
        row["status"] = f"failed: {e}"
    return row


def _median(row: dict, key: str, scale: float = 1.0, spec: str = ".0f") -> str:
    v = row.get(key)
    return "-" if not v else f"{scale * v['median']:{spec}}"


def print_table(rows: list[dict], device_name: str) -> None:
    print(f"\nGPU: {device_name}")
    print(
        "| size | precision | variant | TP/PP/DP | micro x global batch | tokens/s (all GPUs) | "
        "tokens/s per GPU | TFLOP/s per GPU | MFU per GPU | peak GiB | status |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        par = f"{r['tp']}/{r['pp']}/{r['dp']}" if "tp" in r else "-"
        batch = f"{r['mbs']} x {r['gbs']}" if "mbs" in r else "-"
        per_gpu = "-"
        if r.get("tokens_per_sec") and "tp" in r:
            per_gpu = f"{r['tokens_per_sec']['median'] / (r['tp'] * r['pp'] * r['dp']):.0f}"
        mfu = "-" if not r.get("mfu") else f"{100 * r['mfu']['median']:.1f}%"
        print(
            f"| {r['size']} | {r['precision']} | {r.get('variant', 'default')} | {par} | {batch} | "
            f"{_median(r, 'tokens_per_sec')} | {per_gpu} | {_median(r, 'tflops_per_device', spec='.1f')} | "
            f"{mfu} | {_median(r, 'peak_mem_gib', spec='.1f')} | {r['status']} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="135m,600m,1.7b,4b")
    p.add_argument("--precisions", default="bf16,fp8", help=f"of {', '.join(PRECISIONS)}")
    p.add_argument(
        "--variants",
        default="default",
        help=f"comma-separated kernel variants of each run, of {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak per GPU for MFU (e.g. one measured on the machine); default: the "
        "trainer's table by GPU name",
    )
    p.add_argument("--steps", type=int, default=20, help="timed iterations per run")
    p.add_argument("--warmup", type=int, default=5, help="iterations left out of the medians")
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument(
        "--micro-batches-per-step",
        type=int,
        default=8,
        help="global batch = micro-batch x DP x this (unless --global-batch-size)",
    )
    p.add_argument(
        "--global-batch-size", type=int, default=None, help="e.g. 512, SODA's (slower per step)"
    )
    p.add_argument(
        "--layout",
        action="append",
        default=[],
        help="per-size override, e.g. 4b:tp=2,mbs=2 or 135m:mbs=4,dist_opt=0 (repeatable)",
    )
    p.add_argument("--nproc-per-node", type=int, default=None, help="default: the visible GPUs")
    p.add_argument(
        "--fp8-recipe",
        default=None,
        help="--fp8-recipe for the FP8 runs (trainer default: delayed)",
    )
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--num-codebooks", type=int, default=DEFAULT_NUM_CODEBOOKS)
    p.add_argument("--data-path", nargs="*", default=None, help="real shards (blend syntax)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "soda_bench_train_gpu"))
    p.add_argument("--torchrun", default=TORCHRUN)
    p.add_argument("--master-port", type=int, default=None)
    p.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: smoke-test this script"
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--json", default=None)
    p.add_argument("extra", nargs="*", help="more pretrain_soda.py flags, after --")
    a = p.parse_args(argv)

    try:
        overrides = parse_layout_overrides(a.layout)
    except ValueError as e:
        p.error(str(e))
    sizes = [s for s in a.sizes.split(",") if s]
    precisions = [x for x in a.precisions.split(",") if x]
    for s in sizes + list(overrides):
        if s not in LAYOUTS:
            p.error(f"unknown size {s!r}; choose from {', '.join(LAYOUTS)}")
    for x in precisions:
        if x not in PRECISIONS:
            p.error(f"unknown precision {x!r}; choose from {', '.join(PRECISIONS)}")
    variants = [v for v in a.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")

    gpus = visible_gpus() if a.device == "cuda" else 0
    if a.nproc_per_node is None:
        a.nproc_per_node = gpus if gpus else (8 if a.dry_run and a.device == "cuda" else 1)
    if a.device == "cuda" and not gpus and not a.dry_run:
        print(
            "bench_train_gpu.py: error: no CUDA GPU is visible (torch.cuda.device_count() == 0); this "
            "benchmark measures GPU training. Run it on a GPU node (e.g. `srun --gpus-per-node=8 bash "
            "benchmarks/bench_train_gpu.sh`), or pass --dry-run to print the commands "
            "(assuming 8 GPUs, or --nproc-per-node N).",
            file=sys.stderr,
        )
        return 2
    os.makedirs(a.workdir, exist_ok=True)
    if a.data_path is None:
        if a.dry_run:
            shards = os.path.join(a.workdir, "shards")
            a.data_path = blend_args(shards)
            print(f"# synthetic shards would be written to {shards}")
        else:
            a.data_path = synthetic_blend(
                os.path.join(a.workdir, "shards"), a.tokenizer, a.num_codebooks
            )

    device_name = "none (dry run)"
    if gpus:
        import torch

        device_name = f"{gpus} x {torch.cuda.get_device_name(0)}"
    elif a.device == "cpu":
        device_name = "CPU (smoke test; --device cpu)"
    te = te_available()
    print(
        f"# {device_name}; {a.nproc_per_node} processes; Transformer Engine "
        f"{'installed' if te else 'not installed'}",
        flush=True,
    )

    rows = []
    for size in sizes:
        layout = dict(LAYOUTS[size], **overrides.get(size, {}))
        for precision in precisions:
            for variant in variants:
                rows.append(run_one(a, size, precision, layout, te, variant))
    if not a.dry_run:
        print_table(rows, device_name)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "te_installed": te,
                    "nproc_per_node": a.nproc_per_node,
                    "runs": rows,
                },
                f,
                indent=1,
            )
    failed = [r for r in rows if r["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
