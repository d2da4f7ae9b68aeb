#!/usr/bin/env python
"""The GPU's measured dense bf16 matmul rate: what MFU is quoted against in benchmarks/gpu_check.sh.

Vendors' peaks (989 TFLOP/s dense bf16 for H100 SXM and H200) are not reached by any GEMM; the
issue's reference is the H200's *measured* ~790 TFLOP/s.  This times ``torch.matmul`` of square
bf16 matrices (several sizes, the best of them) after a warm-up, and prints one JSON line:
``{"device": ..., "tflops": best, "by_size": {...}}``.

    python benchmarks/gpu_peak.py --sizes 4096 8192 16384 --iters 50
"""

from __future__ import annotations

import argparse
import json

import torch


def matmul_tflops(n: int, iters: int, dtype: torch.dtype = torch.bfloat16) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return 2 * n**3 * iters / seconds / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192, 16384])
    p.add_argument("--iters", type=int, default=50)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_peak.py: no CUDA GPU visible")
    by_size = {n: round(matmul_tflops(n, a.iters), 1) for n in a.sizes}
    print(json.dumps({"device": torch.cuda.get_device_name(), "tflops": max(by_size.values()),
                      "by_size": by_size}))


if __name__ == "__main__":
    main()
