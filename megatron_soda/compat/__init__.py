"""Compatibility layers for running megatron-core where it does not natively run.

The CPU layer's names load on first use (PEP 562): the other modules here (``parent_death``,
``allocator``) serve processes that never import torch's distributed stack, such as the
preprocessing CLI, whose import must stay free of torch."""

from __future__ import annotations

import importlib

__all__ = ["CpuCompatError", "CpuRNGStatesTracker", "cpu_compat", "disable", "enable", "is_enabled"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.cpu"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
