"""Checkpoint and evaluation-cadence section."""

from __future__ import annotations

import os
from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option


@dataclass
class CheckpointConfig:
    save: str | None = option(None, "checkpoint directory; a run resumes from its latest checkpoint")
    load: str | None = option(
        None, "checkpoint directory (or one iter_* inside it) to start from; ignored once --save "
        "holds a checkpoint of this run (resume wins, e.g. after a requeue)")
    save_interval: int | None = option(None)
    no_save_optim: bool = option(False)
    no_load_optim: bool = option(False)
    no_load_rng: bool = option(False)
    finetune: bool = option(False, "load weights only and start at iteration 0 (no optimizer/"
                            "scheduler/data state)")
    exit_interval: int | None = option(None, "stop (after saving) at this iteration")
    eval_interval: int = option(1000)
    eval_iters: int = option(10, "global batches per evaluation")
    inject_crash_at_iteration: int | None = option(
        None, "testing: hard-exit (no cleanup, like a kill) after this iteration")
    inject_crash_in_save: int | None = option(
        None, "testing: hard-exit while the checkpoint of this iteration is being written")

    def validate(self) -> None:
        if self.save_interval is not None and self.save_interval < 1:
            raise ConfigError("--save-interval must be >= 1")
        if self.save_interval and not self.save:
            raise ConfigError("--save-interval needs --save DIR")
        if self.eval_interval < 1 or self.eval_iters < 0:
            raise ConfigError("--eval-interval must be >= 1 and --eval-iters >= 0")
        if self.load is not None and not os.path.exists(self.load):
            raise ConfigError(f"--load {self.load}: no such directory")
