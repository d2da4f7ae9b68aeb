"""Logging section: stdout, JSONL metrics, TensorBoard, Weights & Biases."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option


@dataclass
class LoggingConfig:
    log_interval: int = option(100)
    metrics_jsonl: str | None = option(
        None, "one JSON record per logged step and per evaluation (default: SAVE/metrics.jsonl, "
        "else TENSORBOARD_DIR/metrics.jsonl)")
    tensorboard_dir: str | None = option(None)
    wandb_project: str | None = option(None, "log to Weights & Biases (needs wandb)")
    wandb_exp_name: str | None = option(None)
    wandb_save_dir: str | None = option(None)
    peak_tflops_per_device: float | None = option(
        None, "dense peak for MFU (default: known GPUs' bf16 peak; none on CPU)")

    def validate(self, save: str | None) -> None:
        if self.log_interval < 1:
            raise ConfigError("--log-interval must be >= 1")
        if self.metrics_jsonl is None:
            base = save or self.tensorboard_dir
            if base:
                self.metrics_jsonl = os.path.join(base, "metrics.jsonl")
        if self.wandb_project and importlib.util.find_spec("wandb") is None:
            raise ConfigError("--wandb-project: wandb is not installed (pip install 'megatron_soda[wandb]')")
