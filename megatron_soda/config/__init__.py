"""The typed run configuration of ``pretrain_soda.py`` (one dataclass per concern) and its
thin command-line layer.  See :mod:`megatron_soda.config.train`."""

from megatron_soda.config.checkpoint import CheckpointConfig
from megatron_soda.config.data import DataConfig
from megatron_soda.config.errors import ConfigError
from megatron_soda.config.logging import LoggingConfig
from megatron_soda.config.model import ModelConfig
from megatron_soda.config.optim import OptimConfig
from megatron_soda.config.parallel import ParallelConfig
from megatron_soda.config.precision import PrecisionConfig
from megatron_soda.config.sft import SftConfig
from megatron_soda.config.task_eval import TaskEvalConfig
from megatron_soda.config.train import TrainConfig

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "SftConfig",
    "TaskEvalConfig",
    "TrainConfig",
]
