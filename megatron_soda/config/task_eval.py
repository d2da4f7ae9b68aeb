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

    @property
    def enabled(self) -> bool:
        return bool(self.eval_tasks_data)

    def validate(self, eval_interval: int) -> None:
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
