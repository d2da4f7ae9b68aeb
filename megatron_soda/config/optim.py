"""Batch, optimizer and schedule section.  Defaults are SODA's recipe (SODA_SPEC.md section 4):
Cautious Adam with AdamC weight decay (betas 0.98/0.98, eps 1e-16), weight decay 0.033 (not on
norms/embeddings), clip 1.0, WSD with 10% warmup and a linear decay to 0 over the last 20%
(docs/optimizer.md)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option, required


@dataclass
class OptimConfig:
    micro_batch_size: int = required()
    global_batch_size: int = required()
    train_iters: int = required()
    rampup_batch_size: tuple[int, int, int] | None = option(
        None, "grow the global batch from START by INCR over SAMPLES samples",
        metavar=("START", "INCR", "SAMPLES"))
    seed: int = option(1234)
    lr: float | None = option(None, "peak LR (default: SODA's 0.003*sqrt(batch/256)*sqrt(1024/hidden))")
    min_lr: float | None = option(None, "LR at the end of the decay (default 0)")
    min_lr_ratio: float | None = option(
        None, "LR at the end of the decay as a fraction of the peak (--lr or the derived LR), e.g. 0.1 "
        "for the fine-tuning recipe's cosine to 0.1x; instead of --min-lr")
    lr_decay_style: str = option("WSD", choices=("WSD", "cosine", "linear", "constant"))
    lr_warmup_fraction: float | None = option(None, "default 0.1 (of --lr-decay-iters)")
    lr_warmup_iters: int | None = option(None)
    lr_warmup_init: float = option(0.0)
    lr_decay_iters: int | None = option(None, "default --train-iters")
    lr_wsd_decay_style: str = option("linear", choices=("linear", "cosine", "exponential", "minus_sqrt"))
    lr_wsd_decay_iters: int | None = option(None)
    lr_wsd_decay_fraction: float = option(0.2, "WSD decay share of --lr-decay-iters")
    optimizer: str = option("cautious", "cautious: SODA's Cautious Adam with AdamC weight decay "
                            "(decay scaled by lr/peak lr); adam: megatron-core's AdamW",
                            choices=("cautious", "adam"))
    weight_decay: float = option(0.033)
    adam_beta1: float = option(0.98)
    adam_beta2: float = option(0.98)
    adam_eps: float = option(1e-16)
    clip_grad: float = option(1.0)
    on_nonfinite_loss: str = option("stop", "a NaN/Inf loss stops the run (default) or skips that "
                                    "update", choices=("stop", "skip"))

    def validate(self) -> None:
        """Checks, then the schedule's horizons in iterations (fractions resolved once, here:
        the lr_*_iters values are what the scheduler uses and what run_args.json records)."""
        for name in ("micro_batch_size", "global_batch_size", "train_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.rampup_batch_size:
            self.rampup_batch_size = tuple(self.rampup_batch_size)
            start, increment, samples = self.rampup_batch_size
            if not (1 <= start <= self.global_batch_size and increment >= 1 and samples >= 0
                    and (self.global_batch_size - start) % increment == 0):
                raise ConfigError(f"--rampup-batch-size {start} {increment} {samples}: needs 1 <= START <= "
                                  f"--global-batch-size {self.global_batch_size}, INCR >= 1 with "
                                  "(global - START) a multiple of INCR, and SAMPLES >= 0")
        if self.min_lr is not None and self.min_lr_ratio is not None:
            raise ConfigError("give --min-lr or --min-lr-ratio, not both")
        if self.min_lr_ratio is not None and not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"--min-lr-ratio {self.min_lr_ratio} must be in [0, 1]")
        if self.min_lr is None and self.min_lr_ratio is None:
            self.min_lr = 0.0
        if self.lr_warmup_fraction is not None and self.lr_warmup_iters is not None:
            raise ConfigError("give --lr-warmup-fraction or --lr-warmup-iters, not both")
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.train_iters
        if self.lr_warmup_iters is None:
            fraction = 0.1 if self.lr_warmup_fraction is None else self.lr_warmup_fraction
            self.lr_warmup_iters = int(fraction * self.lr_decay_iters)
            self.lr_warmup_fraction = None  # now said by lr_warmup_iters
        if self.lr_wsd_decay_iters is None:
            self.lr_wsd_decay_iters = max(1, int(round(self.lr_wsd_decay_fraction * self.lr_decay_iters)))
        if self.lr_warmup_iters >= self.lr_decay_iters:
            raise ConfigError(f"warmup ({self.lr_warmup_iters} iters) must be shorter than the decay "
                              f"horizon ({self.lr_decay_iters} iters)")

    def min_lr_for(self, peak_lr: float) -> float:
        """The LR the schedule decays to, given the run's peak LR (validated config)."""
        return self.min_lr_ratio * peak_lr if self.min_lr_ratio is not None else float(self.min_lr or 0.0)

    def check_batch(self, data_parallel_size: int) -> None:
        """What megatron's micro-batch calculator would assert, as a clear error: every global
        batch of the run (the ramp-up's too) is a whole number of micro batches on every DP rank."""
        unit = self.micro_batch_size * data_parallel_size
        sizes = {"global batch": self.global_batch_size}
        if self.rampup_batch_size:  # then every ramp-up size START + k * INCR is a multiple too
            sizes.update({"ramp-up start batch": self.rampup_batch_size[0],
                          "ramp-up increment": self.rampup_batch_size[1]})
        for what, size in sizes.items():
            if size % unit:
                raise ConfigError(f"{what} {size} is not a multiple of micro batch "
                                  f"{self.micro_batch_size} x data-parallel size {data_parallel_size}")
