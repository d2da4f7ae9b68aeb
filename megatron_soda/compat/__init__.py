"""Compatibility layers for running megatron-core where it does not natively run."""

from megatron_soda.compat.cpu import (
    CpuCompatError,
    CpuRNGStatesTracker,
    cpu_compat,
    disable,
    enable,
    is_enabled,
)

__all__ = ["CpuCompatError", "CpuRNGStatesTracker", "cpu_compat", "disable", "enable", "is_enabled"]
