"""``pretrain_soda.py``: argv -> :class:`TrainConfig` -> ``Trainer(config).train()``.

Errors a user can fix (bad shards, an incompatible checkpoint, a non-finite loss, a flag that
needs a missing package) end the run with one ``error:`` line from rank 0 and exit code 1,
raised at the same point on every rank so that no rank waits forever in a collective.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from megatron_soda.compat import CpuCompatError
from megatron_soda.config import ConfigError, TrainConfig
from megatron_soda.config.cli import parse_argv
from megatron_soda.safe_loading import UnsafeContentError, restricted_loading
from megatron_soda.tokenizer import TokenizerError
from megatron_soda.versions import UnsupportedVersionError


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_argv(argv))


def run(config: TrainConfig, prog: str = "pretrain_soda.py") -> None:
    """Train a validated ``config``; a user-fixable error ends the process with ``PROG: error:``
    (``finetune_soda.py`` runs its configuration through here too)."""
    rank0 = int(os.environ.get("RANK", "0")) == 0
    from megatron_soda.checkpointing import CheckpointError
    from megatron_soda.training.data_checks import DataError
    from megatron_soda.training.step import NonFiniteLossError
    from megatron_soda.training.trainer import Trainer

    try:
        # Checkpoints and caches may come from elsewhere: nothing read runs code (safe_loading).
        with restricted_loading(), Trainer(config) as trainer:
            trainer.train()
    except (TokenizerError, DataError, ConfigError, CheckpointError, NonFiniteLossError, CpuCompatError,
            UnsafeContentError, UnsupportedVersionError) as e:
        if rank0:
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
