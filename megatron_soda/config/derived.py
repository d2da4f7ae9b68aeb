"""Values a run derives from its configuration, the tokenizer and the world size, computed once
here and recorded under ``"derived"`` in ``run_args.json``: the architecture with the padded
vocabulary, the learning rate (SODA's rule unless ``--lr``) and the one the schedule decays to
(``--min-lr``, or ``--min-lr-ratio`` x the peak), the data-parallel size and the number of
micro-batches per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.train import TrainConfig
from megatron_soda.models.config import SodaModelConfig, lr_rule_width, paper_learning_rate


@dataclass(frozen=True)
class Derived:
    architecture: SodaModelConfig  # preset + overrides, vocabulary from the tokenizer
    num_codebooks: int
    lr: float
    lr_source: str  # "--lr" or "paper rule"
    min_lr: float  # --min-lr, or --min-lr-ratio x lr
    world_size: int
    data_parallel_size: int
    num_micro_batches: int  # per step and data-parallel rank, at the full global batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture.to_dict(),  # padded_vocab_size included
            "num_codebooks": self.num_codebooks,
            "lr": self.lr,
            "lr_source": self.lr_source,
            "min_lr": self.min_lr,
            "world_size": self.world_size,
            "data_parallel_size": self.data_parallel_size,
            "num_micro_batches": self.num_micro_batches,
        }


def derive(config: TrainConfig, vocab_size: int, num_codebooks: int, world_size: int) -> Derived:
    """Everything the run computes from ``config`` (validated) before it builds anything."""
    arch = config.model.architecture_for(vocab_size)
    parallel = config.parallel
    try:
        arch.check_tensor_parallel(parallel.tensor_model_parallel_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    parallel.check_world_size(world_size, arch.seq_length)
    dp = world_size // parallel.model_parallel_size()
    config.optim.check_batch(dp)
    optim = config.optim
    given = optim.lr is not None
    width = lr_rule_width(config.model.model_size, arch.hidden_size)
    lr = optim.lr if given else paper_learning_rate(optim.global_batch_size, width)
    return Derived(
        architecture=arch,
        num_codebooks=num_codebooks,
        lr=lr,
        lr_source="--lr" if given else f"paper rule (width {width})",
        min_lr=optim.min_lr_for(lr),
        world_size=world_size,
        data_parallel_size=dp,
        num_micro_batches=optim.global_batch_size // (optim.micro_batch_size * dp),
    )


def run_record(config: TrainConfig, derived: Derived) -> dict[str, Any]:
    """The body of ``run_args.json``: the flat config (Megatron-LM names) and ``derived``."""
    return {**config.to_dict(), "derived": derived.to_dict()}
