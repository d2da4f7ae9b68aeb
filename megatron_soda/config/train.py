"""The run configuration of ``pretrain_soda.py``: one dataclass per concern, composed.

Build it from argv (:func:`megatron_soda.config.cli.parse_argv`) or directly in Python::

    cfg = TrainConfig(
        model=ModelConfig(model_size="tiny", tokenizer="tok/"),
        optim=OptimConfig(micro_batch_size=2, global_batch_size=8, train_iters=100),
        data=DataConfig(data_path=["0.95", "speech", "0.05", "text"]),
    ).validate()

``validate()`` checks every section and normalises what can be settled without the tokenizer or
the world size (defaults that depend on the device, schedule horizons in iterations, virtual
stages); it is idempotent, so a config read back from ``run_args.json`` validates to itself.
Values that need the tokenizer or the world size are :class:`megatron_soda.config.derived.Derived`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from megatron_soda.config.checkpoint import CheckpointConfig
from megatron_soda.config.data import DataConfig
from megatron_soda.config.errors import ConfigError
from megatron_soda.config.logging import LoggingConfig
from megatron_soda.config.model import ModelConfig, architecture_fields
from megatron_soda.config.optim import OptimConfig
from megatron_soda.config.parallel import ParallelConfig
from megatron_soda.config.precision import PrecisionConfig
from megatron_soda.config.sft import SftConfig
from megatron_soda.config.task_eval import TaskEvalConfig

# Section name -> dataclass, in command-line help order.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "precision": PrecisionConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "checkpoint": CheckpointConfig,
    "task_eval": TaskEvalConfig,
    "sft": SftConfig,
    "logging": LoggingConfig,
}


@dataclass
class TrainConfig:
    model: ModelConfig
    optim: OptimConfig
    data: DataConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    task_eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def sections(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SECTIONS}

    def validate(self) -> TrainConfig:
        """Check and normalise every section, then what spans sections; returns ``self``."""
        self.model.validate()
        self.parallel.validate()
        self.precision.validate(self.parallel, self.data.reset_attention_mask)
        self.data.validate(self.parallel.device)
        self.optim.validate()
        self.checkpoint.validate()
        self.task_eval.validate(self.checkpoint.eval_interval)
        self.logging.validate(self.checkpoint.save)
        arch = self.model.architecture_for(vocab_size=0)
        self.parallel.resolve_virtual_stages(arch.num_layers)
        return self

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        """Flat ``{field: value}`` (field names are unique across sections): the body of
        ``run_args.json``, in Megatron-LM's argument names."""
        out: dict[str, Any] = {}
        for section in self.sections().values():
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (keys of other sections, such as ``derived``, are ignored).
        Records written before the typed config (flat architecture overrides such as
        ``"seq_length": 256``) are read too."""
        arch_names = {n for n, _ in architecture_fields()}
        built = {}
        for name, section_cls in SECTIONS.items():
            kwargs = {f.name: d[f.name] for f in dataclasses.fields(section_cls) if f.name in d}
            if section_cls is ModelConfig and not kwargs.get("architecture"):
                kwargs["architecture"] = {k: d[k] for k in arch_names if d.get(k) is not None}
            # records written before the typed config kept both spellings of these
            if section_cls is OptimConfig and kwargs.get("lr_warmup_iters") is not None:
                kwargs["lr_warmup_fraction"] = None
            if section_cls is ParallelConfig and kwargs.get("virtual_pipeline_model_parallel_size"):
                kwargs["num_layers_per_virtual_pipeline_stage"] = None
            try:
                built[name] = section_cls(**kwargs)
            except TypeError as e:
                raise ConfigError(f"run configuration section {name!r}: {e}") from None
        return cls(**built)


def check_unique_field_names() -> None:
    """The flat record and the argparse destinations rely on this."""
    seen: dict[str, str] = {}
    names = [(s, f.name) for s, c in SECTIONS.items() for f in dataclasses.fields(c)]
    names += [("model", n) for n, _ in architecture_fields()]
    for section, name in names:
        if name in seen:
            raise AssertionError(f"config field {name!r} is in both {seen[name]!r} and {section!r}")
        seen[name] = section
