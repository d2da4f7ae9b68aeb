#!/usr/bin/env python
"""Peak memory and time of the output head + loss (forward + backward), materialised logits vs
the chunked head (megatron_soda/models/chunked_head.py), at a preset's shape.

``full``: ``hidden @ W^T`` (what megatron's ColumnParallelLinear computes at TP=1) then
models/loss.py ``cross_entropy_and_lse``, loss = sum(ce + z * lse^2) as training/step.py;
``chunk<N>``: ``chunked_head_ce_lse`` with N tokens per chunk.  Each measurement is a fresh child
process (``--device cuda``: ``torch.cuda.max_memory_allocated`` over one step minus the allocation
before it; CPU, below): the peak resident set size of one forward + backward
(the kernel's VmHWM, reset just before through /proc/self/clear_refs; ``ru_maxrss`` where that
is refused) minus the resident set size just before (inputs, weights and imports already
allocated) is the head's extra peak.  Timed: the median of ``--steps`` further
forward + backward passes in the same child.  Variants are interleaved repeat by repeat (order
alternating); each row also says how many cores other processes took (load_meter.py).

    .venv/bin/python benchmarks/bench_head_memory.py --preset 135m --micro-batch 8 --seq 1024 \
        --dtype bf16 --chunks 1024 4096 --repeats 2 --json head.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SODA_VOCAB = 144_644  # SODA_SPEC.md section 2: Llama-3 + SODA tokens


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current size."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(args: argparse.Namespace) -> dict:
    """One variant in this process: returns its numbers."""
    import torch
    from megatron.core import parallel_state

    from megatron_soda.models import preset
    from megatron_soda.models.chunked_head import chunked_head_ce_lse
    from megatron_soda.models.loss import cross_entropy_and_lse

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    store = tempfile.NamedTemporaryFile(delete=False)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    cfg = preset(args.preset).with_overrides(vocab_size=SODA_VOCAB)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    s, b, h = args.seq, args.micro_batch, cfg.hidden_size
    dev = torch.device(args.device)
    hidden = (torch.randn(s, b, h, generator=gen)).to(dev, dtype).requires_grad_(True)
    weight = (torch.randn(cfg.padded_vocab_size, h, generator=gen) * 0.02).to(dev, dtype).requires_grad_(True)
    labels = torch.randint(0, SODA_VOCAB, (b, s), generator=gen).to(dev)
    # full | chunkN | chunkN+compile (the per-chunk math through torch.compile, inductor)
    name, _, compiled = args.variant.partition("+")
    chunk = int(name.removeprefix("chunk")) if name != "full" else 0
    backend = "inductor" if compiled == "compile" else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> None:
        if chunk:
            out = chunked_head_ce_lse(hidden, weight, labels, SODA_VOCAB, chunk, compile_backend=backend)
            ce, lse = out[0], out[1]
        else:
            logits = torch.matmul(hidden, weight.t())  # [s, b, V]
            ce, lse = cross_entropy_and_lse(logits, labels.t().contiguous(), SODA_VOCAB)
        (ce + 1e-4 * lse.square()).sum().backward()
        hidden.grad = weight.grad = None

    if backend:  # compile outside the measured step
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
        reset = _reset_peak()
    step()
    sync()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_mib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    os.unlink(store.name)
    logits_mib = s * b * cfg.padded_vocab_size * 4 / 2**20
    return {"variant": args.variant, "tokens": s * b, "hidden": h, "padded_vocab": cfg.padded_vocab_size,
            "dtype": args.dtype, "base_rss_mib": round(before), "peak_extra_mib": round(peak - before),
            "fp32_logits_mib": round(logits_mib), "step_s": round(statistics.median(times), 3) if times else None}


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    from load_meter import OthersLoad

    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--preset", args.preset,
           "--micro-batch", str(args.micro_batch), "--seq", str(args.seq), "--dtype", args.dtype,
           "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    with OthersLoad() as load:
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["others_cores"] = round(load.cores, 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="135m")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--chunks", type=int, nargs="*", default=[1024, 4096])
    p.add_argument("--compile", action="store_true", help="also chunkN+compile: the per-chunk math compiled")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: torch.cuda.max_memory_allocated over the step instead of the RSS")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="timed forward+backward passes per child")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.variant = args.child
        print(json.dumps(child(args)))
        return
    variants = ["full", *(f"chunk{c}" for c in args.chunks)]
    variants += [f"chunk{c}+compile" for c in args.chunks] if args.compile else []
    rows = []
    for rep in range(args.repeats):
        for v in variants if rep % 2 == 0 else variants[::-1]:
            row = run_variant(args, v) | {"repeat": rep}
            print(json.dumps(row), flush=True)
            rows.append(row)
    where = "GPU (torch.cuda peak)" if args.device == "cuda" else f"CPU, {args.threads} threads (RSS peak)"
    print(f"\n{args.preset} {args.micro_batch}x{args.seq} tokens, {args.dtype}, {where}")
    print(f"{'variant':>16} {'peak extra MiB (median)':>24} {'step s (median)':>16} {'vs full memory':>15}")
    full = statistics.median(r["peak_extra_mib"] for r in rows if r["variant"] == "full")
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        mem = statistics.median(r["peak_extra_mib"] for r in mine)
        t = statistics.median(r["step_s"] for r in mine)
        print(f"{v:>16} {mem:>24.0f} {t:>16.3f} {full / mem:>14.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
