"""Transformer Engine detection, without importing it (importing TE initialises CUDA)."""

from __future__ import annotations

import importlib.util


def te_available() -> bool:
    """Whether Transformer Engine's PyTorch package can be imported."""
    try:
        return importlib.util.find_spec("transformer_engine") is not None
    except (ImportError, ValueError):
        return False
