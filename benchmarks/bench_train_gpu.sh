#!/usr/bin/env bash
# GPU training benchmark: every paper size (135M, 600M, 1.7B, 4B) in bf16 and FP8 on the GPUs of
# this node; prints a table (tokens/s, TFLOP/s and MFU per GPU) and writes results.json.
#
#   bash benchmarks/bench_train_gpu.sh                       # defaults: 20 timed + 5 warm-up steps
#   bash benchmarks/bench_train_gpu.sh --global-batch-size 512 --steps 10   # the paper's batch
#   srun --nodes 1 --gpus-per-node 8 bash benchmarks/bench_train_gpu.sh
#   DRY_RUN=1 bash benchmarks/bench_train_gpu.sh              # print the commands only
#
# Needs .venv/ (scripts/setup_env.sh) and, for the FP8 rows, Transformer Engine
# (pip install 'megatron_soda[te]'); without it those rows read "skipped: TE not installed".
# Results, logs and synthetic shards go to OUT (default work_dirs/bench_train_gpu/<date>).
# Arguments are passed to benchmarks/bench_train_gpu.py (see its --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/work_dirs/bench_train_gpu/$(date +%Y%m%d-%H%M%S)}
ARGS=(--workdir "$OUT" --json "$OUT/results.json")
if [[ ${DRY_RUN:-0} == 1 ]]; then ARGS+=(--dry-run); fi
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L > "$OUT/gpus.txt" 2>&1 || true; fi
"$PY" benchmarks/bench_train_gpu.py "${ARGS[@]}" "$@" 2>&1 | tee "$OUT/table.txt"
exit "${PIPESTATUS[0]}"
