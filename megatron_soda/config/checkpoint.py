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
    load_fallback: bool = option(
        False, "if the newest checkpoint is damaged (a missing or truncated file), load the newest "
        "earlier whole one instead (logged) and redo the iterations since.  Off by default: saves are "
        "committed atomically, so damage means a storage fault or an incomplete copy, which should "
        "stop the run and be seen (without the flag the error names the file) rather than silently "
        "cost iterations")
    async_save: bool = option(False, "write checkpoint shards in the background while training goes on "
                              "(committed once every rank's write is done)")
    keep_last_k: int | None = option(None, "keep only the N newest complete checkpoints in --save "
                                     "(plus --keep-every-iters ones); default: keep all", metavar="N")
    keep_every_iters: int | None = option(None, "with --keep-last-k: also keep, permanently, every "
                                          "checkpoint whose iteration is a multiple of M", metavar="M")
    no_save_optim: bool = option(False)
    no_load_optim: bool = option(False)
    no_load_rng: bool = option(False)
    finetune: bool = option(False, "load weights only and start at iteration 0 (no optimizer/"
                            "scheduler/data state)")
    exit_interval: int | None = option(None, "stop (after saving) at this iteration")
    exit_duration_in_mins: float | None = option(
        None, "stop (after saving) at the first step boundary after this many minutes of wall clock "
        "since the trainer started (max over ranks)", metavar="MINUTES")
    exit_signal_handler: bool = option(
        False, "on --exit-signal (to any rank) every rank stops after the same iteration, saves a "
        "checkpoint of it (with --save) and exits 0; docs/slurm.md")
    exit_signal: str = option("SIGTERM", "the signal --exit-signal-handler catches",
                              choices=("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"))
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
        if (self.keep_last_k is not None and self.keep_last_k < 1) or (
                self.keep_every_iters is not None and self.keep_every_iters < 1):
            raise ConfigError("--keep-last-k and --keep-every-iters must be >= 1")
        if self.keep_every_iters and not self.keep_last_k:
            raise ConfigError("--keep-every-iters needs --keep-last-k N (without it every checkpoint is kept)")
        if (self.async_save or self.keep_last_k) and not self.save:
            raise ConfigError("--async-save and --keep-last-k need --save DIR")
        if self.exit_duration_in_mins is not None and self.exit_duration_in_mins <= 0:
            raise ConfigError("--exit-duration-in-mins must be > 0")
        if self.eval_interval < 1 or self.eval_iters < 0:
            raise ConfigError("--eval-interval must be >= 1 and --eval-iters >= 0")
        if self.load is not None and not os.path.exists(self.load):
            raise ConfigError(f"--load {self.load}: no such directory")
