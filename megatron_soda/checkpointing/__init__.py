"""Crash-safe, layout-independent checkpoints with megatron's dist_checkpointing."""

from megatron_soda.checkpointing.io import check_compatible, load_checkpoint, save_checkpoint
from megatron_soda.checkpointing.layout import (
    CheckpointError,
    find_checkpoint,
    iteration_dir,
    read_tracker,
)
from megatron_soda.checkpointing.state import TrainState

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
