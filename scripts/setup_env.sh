#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repository root with everything megatron_soda needs on CPU.
# Idempotent: a second run only checks.  Used by both README commands and by CI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# System packages: espeak-ng speaks the sample/test speech, sox is handy for audio checks.
need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need_apt+=(sox)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    (apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need_apt[@]}" >/dev/null; })
  else
    echo "[setup] please install: ${need_apt[*]} (e.g. sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
# setup.py declares version ranges; constraints/ci.txt pins the exact versions CI tests.
constraints=constraints/ci.txt
stamp=.venv/.megatron_soda_installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ "$constraints" -nt "$stamp" ]; then
  echo "[setup] installing torch (CPU wheel) and megatron_soda[dev] (-c $constraints)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # torch first and pinned exactly (the same version as in $constraints): any other spec pulls a
  # multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -c "$constraints" -e ".[dev]"
  touch "$stamp"
fi
