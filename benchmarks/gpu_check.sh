#!/usr/bin/env bash
# The one prepared GPU check of the torch-native path (issue 17, docs/gpu.md): on a machine with one
# CUDA GPU, its own torch/transformers, no Transformer Engine and no network, it installs what it
# needs from wheels carried in .gpu_wheels/ (scripts/gpu_wheels.sh: 17 MiB, listed there), then:
#
#   1. peak   the GPU's measured dense bf16 matmul rate (benchmarks/gpu_peak.py): MFU is quoted
#             against it (and against the trainer's vendor table, which the rows also show)
#   2. tests  tests/test_gpu.py: compiled flex / SDPA vs local attention, the chunked head vs the
#             logits (values, peak memory), the compiled head (inductor) vs eager
#   3. attn   benchmarks/bench_attention.py --device cuda (kernel time and memory, seq 1024-4096)
#   4. head   benchmarks/bench_head_memory.py --device cuda: 135M, micro-batch 8 x 4096, bf16
#   5. train135, train600  benchmarks/bench_train_gpu.py: 135M and 600M in bf16, a few steps per
#             variant (attention backend, chunked head, torch.compile)
#   6. codec, codec_bf16  benchmarks/bench_codec.py on CUDA: realtime factor of batched encoding,
#             code agreement with one clip at a time (fp32), and the CPU decode rate that feeds it
#   7. codec_stage  the codec stage end to end on CUDA (--codec-batching duration: 8 CPU decoder
#             processes, Mimi in the main process): realtime factor, and the main process's
#             seconds encoding vs waiting for the decoders (waiting = decode is the bottleneck)
#
# Each step has its own time limit and the others go on when one fails; everything lands in
# OUT (default work_dirs/gpu_check/<date>; the device tool's $OUT when set) with summary.txt.
# The steps' limits add up to 470 s (under 8 minutes); `STEPS="tests head" bash benchmarks/gpu_check.sh`
# runs a subset.  Run it from the repository root:
#
#   bash scripts/gpu_wheels.sh                       # here, once (downloads the wheels)
#   bash benchmarks/gpu_check.sh                     # on the GPU machine (carry .gpu_wheels)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/work_dirs/gpu_check/$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-peak tests attn head train135 train600 codec codec_bf16 codec_stage}
SITE=${SITE:-/tmp/soda_gpu_site}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# Install: the carried wheels into a private site directory (the machine's torch and transformers
# are used as they are; --no-deps keeps pip from replacing them), this checkout on PYTHONPATH.
if [[ ! -d "$SITE" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .gpu_wheels/*.whl \
        > "$OUT/install.log" 2>&1 || { say "install failed: see install.log"; tail -5 "$OUT/install.log"; }
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH" PYTHONWARNINGS=ignore CUDA_DEVICE_MAX_CONNECTIONS=1
TORCHRUN="$(dirname "$(command -v "$PY")")/torchrun"
[[ -x "$TORCHRUN" ]] || TORCHRUN="$(command -v torchrun)"
{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$PY" - <<'EOF' 2>&1
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda)
for p in ("megatron-core", "transformers", "triton", "transformer-engine"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "not installed")
EOF
} | tee "$OUT/machine.txt"

# step NAME SECONDS CMD...: run CMD under a time limit, log to OUT/NAME.log, one summary line.
step() {
    local name=$1 limit=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -25 "$OUT/$name.log"
    say "$name: rc $rc in $((SECONDS - t0)) s$([[ $rc == 124 ]] && echo ' (time limit)')"
}

step peak 25 "$PY" benchmarks/gpu_peak.py --sizes 8192 16384 --iters 30
PEAK=$(grep -o '"tflops": [0-9.]*' "$OUT/peak.log" 2>/dev/null | grep -o '[0-9.]*$' || true)
say "measured bf16 matmul peak: ${PEAK:-unknown} TFLOP/s"

step tests 70 "$PY" -m pytest -q -p no:cacheprovider -x -s tests/test_gpu.py
step attn 35 "$PY" benchmarks/bench_attention.py --device cuda --presets 135m --seqs 1024 4096 \
    --batch 4 --steps 5
step head 40 "$PY" benchmarks/bench_head_memory.py --device cuda --preset 135m --micro-batch 8 \
    --seq 4096 --dtype bf16 --chunks 1024 4096 --compile --repeats 1 --steps 3 --json "$OUT/head.json"
# 135M: the head-bound size (the chunked head, with and without compile); 600M: the MFU target
# (>= 35% without TE), eager flex vs everything on.  The medians after 3 warm-up iterations
# (compilation happens in the first ones).
TRAIN=(benchmarks/bench_train_gpu.py --precisions bf16 --steps 6 --warmup 3 --micro-batches-per-step 2
       --torchrun "$TORCHRUN" ${PEAK:+--peak-tflops "$PEAK"})
step train135 100 "$PY" "${TRAIN[@]}" --sizes 135m --variants flex+chunk,flex+chunk+compile \
    --workdir "$OUT/train135" --json "$OUT/train135.json"
step train600 130 "$PY" "${TRAIN[@]}" --sizes 600m --variants flex,flex+chunk+compile \
    --workdir "$OUT/train600" --json "$OUT/train600.json"
# The codec on CUDA: full-size Mimi (random weights), 180 s of grouped 2-3 s espeak clips carried in
# .gpu_wheels/codec (no espeak there), batches of 240 s padded audio, fp32 then bf16; each row has
# the realtime factor, agreement with one clip at a time in fp32, and one process's decode rate.
CODEC=(benchmarks/bench_codec.py --codec random:full --corpus grouped --seconds 180 --repeats 1
       --workdir .gpu_wheels/codec --device cuda --batch-seconds 240)
step codec 25 "$PY" "${CODEC[@]}" --dtype fp32 --json "$OUT/codec_fp32.json"
step codec_bf16 15 "$PY" "${CODEC[@]}" --dtype bf16 --json "$OUT/codec_bf16.json"
step codec_stage 30 "$PY" benchmarks/bench_codec.py --codec random:full --corpus grouped --seconds 180 \
    --repeats 1 --workdir .gpu_wheels/codec --device cuda --no-naive --no-startup \
    --config stage:workers=8,batching=duration --json "$OUT/codec_stage.json"
say "results: $OUT"
