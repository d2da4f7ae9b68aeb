#!/usr/bin/env bash
# README command 2 (and CI): set up .venv/ if needed, then lint and run the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
echo "[tests] ruff"
.venv/bin/ruff check .
echo "[tests] pytest"
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
