"""In-training task evaluation section: SODA's likelihood benchmarks scored by the training model.

The tasks come from a prepared directory (``python -m megatron_soda.eval prepare``: items
tokenized, audio encoded), so a training run never loads a codec; see
:mod:`megatron_soda.training.task_eval` and docs/evaluation.md.  What can be checked without the
tokenizer is checked here (the directory is a prepared one and holds every named task); the
tokenizer's agreement with the directory and the item lengths are checked when the trainer
starts, before any process group exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option
from megatron_soda.models.steering import ALPHA_UNITS, POSITIONS
from megatron_soda.tasks.sequences import SCORE_SPANS


@dataclass
class TaskEvalConfig:
    eval_tasks: list[str] | None = option(
        None, "likelihood tasks of --eval-tasks-data to score with the training model, comma- or "
        "space-separated (e.g. swuggy,sblimp,salmon); default with --eval-tasks-data: all of them",
        metavar="TASK")
    eval_tasks_data: str | None = option(
        None, "a prepared-task directory (python -m megatron_soda.eval prepare) made with this "
        "run's tokenizer and codec", metavar="DIR")
    eval_tasks_interval: int | None = option(
        None, "score the tasks every N iterations and after the last one (default: --eval-interval)",
        metavar="N")
    eval_tasks_score_span: str = option(
        "all_audio", "audio tokens a score averages: all codebooks, or codebook 0 only (semantic)",
        choices=SCORE_SPANS)
    eval_tasks_limit: int | None = option(
        None, "score only the first N items of each task (cheaper, noisier)", metavar="N")
    eval_tasks_items: str | None = option(
        None, "append every item's scores at every task evaluation to this JSONL file", metavar="FILE")
    eval_tasks_steer: str | None = option(
        None, "also score the tasks steered by this vector (python -m megatron_soda.steer extract; "
        "docs/steering.md): metrics steered/<task>/..., items with steered: true", metavar="VEC.safetensors")
    eval_tasks_steer_layer: int | None = option(
        None, "decoder layer (0-based) whose output is steered (default: the file's only layer)", metavar="L")
    eval_tasks_steer_alpha: float | None = option(
        None, "steering strength (required with --eval-tasks-steer)", metavar="A")
    eval_tasks_steer_alpha_units: str = option(
        "raw", "raw: alpha x the stored vector; norm: alpha x the layer's median residual norm x the "
        "unit vector", choices=ALPHA_UNITS)
    eval_tasks_steer_positions: str = option(
        "audio", "which tokens are steered (markers never)", choices=POSITIONS)

    @property
    def enabled(self) -> bool:
        return bool(self.eval_tasks_data)

    def validate(self, eval_interval: int) -> None:
        self._validate_steer()
        if self.eval_tasks is not None:
            # --eval-tasks a,b c -> [a, b, c]; order kept, repeats dropped
            names = [n.strip() for item in self.eval_tasks for n in item.split(",") if n.strip()]
            self.eval_tasks = list(dict.fromkeys(names))
        if self.eval_tasks_interval is None:
            self.eval_tasks_interval = eval_interval
        if self.eval_tasks_interval < 1:
            raise ConfigError("--eval-tasks-interval must be >= 1")
        if self.eval_tasks_limit is not None and self.eval_tasks_limit < 1:
            raise ConfigError("--eval-tasks-limit must be >= 1")
        if not self.eval_tasks_data:
            if self.eval_tasks:
                raise ConfigError("--eval-tasks needs --eval-tasks-data DIR (a prepared-task directory: "
                                  "python -m megatron_soda.eval prepare)")
            return
        from megatron_soda.tasks.prepared import PreparedError, read_meta

        if not os.path.isdir(self.eval_tasks_data):
            raise ConfigError(f"--eval-tasks-data {self.eval_tasks_data}: no such directory")
        try:
            available = sorted(read_meta(self.eval_tasks_data)["tasks"])
        except PreparedError as e:
            raise ConfigError(f"--eval-tasks-data: {e}") from None
        if not self.eval_tasks:
            self.eval_tasks = available
        unknown = [n for n in self.eval_tasks if n not in available]
        if unknown:
            raise ConfigError(f"--eval-tasks: {', '.join(unknown)} not in {self.eval_tasks_data} "
                              f"(it has {', '.join(available) or 'no tasks'})")

    def _validate_steer(self) -> None:
        """The steering flags hang together and name a vector the file holds (read here, before
        any process group; the hidden size and layer count are checked against the model)."""
        if not self.eval_tasks_steer:
            given = [flag for flag, value, default in (
                ("--eval-tasks-steer-layer", self.eval_tasks_steer_layer, None),
                ("--eval-tasks-steer-alpha", self.eval_tasks_steer_alpha, None),
                ("--eval-tasks-steer-alpha-units", self.eval_tasks_steer_alpha_units, "raw"),
                ("--eval-tasks-steer-positions", self.eval_tasks_steer_positions, "audio")) if value != default]
            if given:
                raise ConfigError(f"{', '.join(given)} needs --eval-tasks-steer VEC.safetensors")
            return
        if not self.eval_tasks_data:
            raise ConfigError("--eval-tasks-steer needs --eval-tasks-data DIR (the tasks it scores)")
        if self.eval_tasks_steer_alpha is None:
            raise ConfigError("--eval-tasks-steer needs --eval-tasks-steer-alpha A (the strength)")
        if not os.path.isfile(self.eval_tasks_steer):
            raise ConfigError(f"--eval-tasks-steer {self.eval_tasks_steer}: no such file")
        from safetensors import SafetensorError

        from megatron_soda.models.steering import in_units, read_layer

        try:
            layer, vector, norm = read_layer(self.eval_tasks_steer, self.eval_tasks_steer_layer)
            in_units(vector, self.eval_tasks_steer_alpha_units, norm, f"{self.eval_tasks_steer} layer {layer}")
        except (ValueError, OSError, SafetensorError) as e:
            raise ConfigError(f"--eval-tasks-steer: {e}") from None
        self.eval_tasks_steer_layer = layer
