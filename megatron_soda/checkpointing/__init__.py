"""Crash-safe, layout-independent checkpoints with megatron's dist_checkpointing.

``layout`` (directories, tracker, atomic commit) is light; the save/load side imports
megatron-core, so it is loaded on first use: conversion to Hugging Face reads checkpoints
through ``layout`` alone and never imports megatron."""

from megatron_soda.checkpointing.layout import (
    CheckpointError,
    find_checkpoint,
    iteration_dir,
    read_tracker,
)

_LAZY = {
    "check_compatible": "megatron_soda.checkpointing.io",
    "load_checkpoint": "megatron_soda.checkpointing.io",
    "save_checkpoint": "megatron_soda.checkpointing.io",
    "TrainState": "megatron_soda.checkpointing.state",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "TrainState",
    "check_compatible",
    "find_checkpoint",
    "iteration_dir",
    "load_checkpoint",
    "read_tracker",
    "save_checkpoint",
]
