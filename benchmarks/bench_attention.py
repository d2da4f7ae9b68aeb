"""Core attention alone, forward + backward: megatron-core's local DotProductAttention (dense
[b,1,s,s] masks) vs --attention-backend sdpa (causal only) vs flex (causal + documents), at the
tiny and 135m presets' head shapes, one layer, fp32 on CPU (GPU: ``--device cuda``, not run yet).

Each case runs in a fresh process (CPU: no torch.cuda memory stats), so its peak resident set size
(``ru_maxrss``) minus the size before the first attention call (q, k, v and the mask already
allocated) is the kernel's extra peak.  Timed: the median of ``--steps`` forward+backward calls after
one warm-up; flex's BlockMask is built once per micro-batch (shared by all layers), so its build
time is reported apart.  Batches: ``--batch`` rows of ``--seq`` tokens, documents of random length
(mean ``--mean-doc``), as packed pretraining windows.

    .venv/bin/python benchmarks/bench_attention.py            # the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("local", "documents"), ("flex", "documents"), ("local", "causal"), ("sdpa", "causal")]


def run_case(a: argparse.Namespace) -> dict:
    import tempfile

    import torch
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_soda import compat
    from megatron_soda.config import ParallelConfig, PrecisionConfig
    from megatron_soda.models import preset
    from megatron_soda.models.attention import TorchCoreAttention, document_block_mask
    from megatron_soda.training.data import document_causal_mask, document_ids
    from megatron_soda.training.model_setup import transformer_config

    torch.manual_seed(0)
    if a.device == "cpu":
        compat.enable()
    store = tempfile.NamedTemporaryFile(delete=False)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(0)
    cfg = preset(a.preset).with_overrides(vocab_size=1024, seq_length=a.seq)
    tc = transformer_config(cfg, ParallelConfig(device=a.device), PrecisionConfig(attention_backend=a.backend))
    cls = DotProductAttention if a.backend == "local" else TorchCoreAttention
    core = cls(config=tc, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    dev = torch.device(a.device)
    b, s, h, g, d = a.batch, a.seq, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    q = torch.randn(s, b, h, d, device=dev, requires_grad=True)
    k = torch.randn(s, b, g, d, device=dev, requires_grad=True)
    v = torch.randn(s, b, g, d, device=dev, requires_grad=True)
    eod = (torch.rand(b, s, generator=torch.Generator().manual_seed(1)) < 1.0 / a.mean_doc).to(dev)
    doc = document_ids(eod.long(), 1)
    mask_build = None
    if a.mask == "causal":
        mask = None if a.backend != "local" else torch.ones(s, s, dtype=torch.bool, device=dev).triu(1).expand(
            b, 1, s, s)
    elif a.backend == "local":
        mask = document_causal_mask(doc)
    else:
        mask = doc
        t0 = time.perf_counter()
        document_block_mask(doc)  # the one build per micro-batch, then cached
        mask_build = time.perf_counter() - t0
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    times = []
    for _ in range(a.steps + 1):
        sync()
        t0 = time.perf_counter()
        out = core(q, k, v, mask, attn_mask_type=AttnMaskType.causal)
        out.sum().backward()
        sync()
        times.append(time.perf_counter() - t0)
        q.grad = k.grad = v.grad = None
    peak = (torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    os.unlink(store.name)
    return {"backend": a.backend, "mask": a.mask, "preset": a.preset, "seq": s, "batch": b,
            "step_ms": round(1000 * statistics.median(times[1:]), 1), "peak_extra_mib": round(peak - before),
            "mask_build_ms": None if mask_build is None else round(1000 * mask_build, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=["tiny", "135m"])
    p.add_argument("--seqs", nargs="*", type=int, default=[1024, 2048])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--mean-doc", type=float, default=300.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--case", nargs=4, metavar=("PRESET", "SEQ", "BACKEND", "MASK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:
        a.preset, a.seq, a.backend, a.mask = a.case[0], int(a.case[1]), a.case[2], a.case[3]
        print(json.dumps(run_case(a)))
        return
    rows = []
    for preset in a.presets:
        for seq in a.seqs:
            for backend, mask in CASES:
                cmd = [sys.executable, "-W", "ignore", os.path.abspath(__file__), "--case", preset, str(seq), backend,
                       mask, "--batch", str(a.batch), "--mean-doc", str(a.mean_doc), "--steps", str(a.steps),
                       "--device", a.device]
                out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"case {preset} {seq} {backend} {mask} failed")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| preset | seq | mask | backend | fwd+bwd ms (median) | peak extra MiB | BlockMask build ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        build = "-" if r["mask_build_ms"] is None else r["mask_build_ms"]
        print(f"| {r['preset']} | {r['seq']} | {r['mask']} | {r['backend']} | {r['step_ms']} | "
              f"{r['peak_extra_mib']} | {build} |")


if __name__ == "__main__":
    main()
