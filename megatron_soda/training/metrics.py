"""Metrics: stdout lines, a JSONL file, TensorBoard and (optionally) Weights & Biases.

JSONL schema (one object per line, written by global rank 0):

* training record, one per logged step: ``split="train"``, ``iteration``, ``consumed_samples``,
  ``lm_loss`` (token-mean cross-entropy over the logged steps, float64), ``z_loss`` (mean lse^2),
  ``loss`` (lm_loss + z_loss_weight * z_loss), ``loss_text``/``loss_semantic``/
  ``loss_acoustic``/``loss_markers`` (cross-entropy per kind of *target* token; null when no
  such token), ``tokens_<kind>`` (their token counts), ``loss_audio`` (semantic + acoustic
  targets together: the speech NLL SODA's scaling laws fit), ``lr``, ``grad_norm``, ``tokens_per_sec``, ``tflops_per_device``, ``mfu`` (null
  without a known peak), ``step_time_s``, ``skipped_iterations``, ``elapsed_s`` (wall seconds
  since this process started training), ``eta_s`` (to ``--train-iters`` at this process's mean
  time per iteration), ``peak_mem_gib`` (GPU runs only: ``torch.cuda.max_memory_allocated``);
* evaluation record: ``split="valid"``, ``iteration``, ``consumed_samples``, ``lm_loss``,
  ``z_loss``, per-kind losses and counts, ``loss_audio``, ``tokens``;
* with ``--sft`` (``finetune_soda.py``), training and evaluation records also hold
  ``response_loss`` (token-mean cross-entropy over the response targets: ``lm_loss`` itself
  unless ``--sft-prompt-loss``), ``response_tokens`` and ``prompt_tokens`` (prompt targets in the
  window, unscored unless ``--sft-prompt-loss``);
* task record (``--eval-tasks``, :mod:`megatron_soda.training.task_eval`): ``split="tasks"``,
  ``iteration``, ``consumed_samples``, per task ``<task>/accuracy``, ``<task>/n``,
  ``<task>/<subtask>/accuracy``, ``<task>/margin`` (pairs: mean score_positive - score_negative),
  ``<task>/acc`` and ``<task>/acc_norm`` (multiple choice), ``seconds``;
* run record, once per start: ``split="run"``, ``train_flops_per_token`` (the true count, actual
  head dim: what ``tflops_per_device`` and ``mfu`` use) and ``paper_train_flops_per_token``
  (Levanter's count, head dim = hidden / heads: the paper's compute axis).

FLOPs per token: :func:`megatron_soda.scaling.flops.run_flop_counts`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from megatron_soda.config import TrainConfig
from megatron_soda.models.loss import (
    NUM_KINDS,
    REPORT_CE,
    REPORT_KIND_CE,
    REPORT_KIND_TOKENS,
    REPORT_PROMPT_TOKENS,
    REPORT_RESPONSE_CE,
    REPORT_RESPONSE_TOKENS,
    REPORT_TOKENS,
    REPORT_Z,
)
from megatron_soda.tokenizer import KIND_ACOUSTIC, KIND_NAMES, KIND_SEMANTIC

# Dense bf16 peak TFLOP/s (fp8: x2) of GPUs MFU is usually quoted against.
_PEAK_BF16 = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "B200": 2250.0,
    "GB200": 2500.0,
    "L40S": 362.0,
}


def peak_tflops(config: TrainConfig) -> float | None:
    if config.logging.peak_tflops_per_device:
        return config.logging.peak_tflops_per_device
    if config.parallel.device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().upper()
    for key, value in _PEAK_BF16.items():
        if key in name:
            return value * (2.0 if config.precision.fp8_format else 1.0)
    return None


def losses_from_report(vec: torch.Tensor, z_loss_weight: float, sft: bool = False) -> dict[str, Any]:
    tokens = float(vec[REPORT_TOKENS])
    out: dict[str, Any] = {
        "lm_loss": float(vec[REPORT_CE]) / tokens if tokens else math.nan,
        "z_loss": float(vec[REPORT_Z]) / tokens if tokens else math.nan,
    }
    out["loss"] = out["lm_loss"] + z_loss_weight * out["z_loss"]
    for k in range(NUM_KINDS):
        n = float(vec[REPORT_KIND_TOKENS + k])
        out[f"loss_{KIND_NAMES[k]}"] = float(vec[REPORT_KIND_CE + k]) / n if n else None
        out[f"tokens_{KIND_NAMES[k]}"] = int(n)
    # Speech NLL (semantic + acoustic targets): SODA's scaling-law target on held-out data.
    audio = [KIND_SEMANTIC, KIND_ACOUSTIC]
    n_audio = sum(float(vec[REPORT_KIND_TOKENS + k]) for k in audio)
    out["loss_audio"] = (
        sum(float(vec[REPORT_KIND_CE + k]) for k in audio) / n_audio if n_audio else None
    )
    out["tokens"] = int(tokens)
    if sft:  # fine-tuning: the loss over response tokens and how many prompt targets went unscored
        n_response = float(vec[REPORT_RESPONSE_TOKENS])
        out["response_loss"] = float(vec[REPORT_RESPONSE_CE]) / n_response if n_response else math.nan
        out["response_tokens"] = int(n_response)
        out["prompt_tokens"] = int(vec[REPORT_PROMPT_TOKENS])
    return out


def _sft_text(record: dict[str, Any]) -> str:
    if "response_loss" not in record:
        return ""
    return (f" | response_loss {record['response_loss']:.6f} ({record['response_tokens']} tokens)"
            f" | prompt_tokens {record['prompt_tokens']}")


def wandb_run_id(save: str | None, name: str | None) -> str | None:
    """A Weights & Biases run id that a requeued job finds again: a hash of ``--save`` (absolute
    path) and the run name.  None without ``--save`` (every start is then a run of its own)."""
    if not save:
        return None
    key = f"{os.path.abspath(save)}\0{name or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def wandb_init_kwargs(config: TrainConfig, run_record: dict[str, Any]) -> dict[str, Any]:
    """``wandb.init`` arguments: the same run id at every (re)start of one ``--save``, resumed."""
    log, save = config.logging, config.checkpoint.save
    return {"project": log.wandb_project, "name": log.wandb_exp_name, "dir": log.wandb_save_dir or save,
            "config": run_record, "id": wandb_run_id(save, log.wandb_exp_name), "resume": "allow"}


class Progress:
    """Elapsed wall time since the loop started and an ETA to ``--train-iters`` at the mean
    time per iteration so far (evaluations and saves included), plus the peak GPU memory."""

    def __init__(self, start_iteration: int, train_iters: int, device: torch.device,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start_iteration, self.train_iters, self.device = start_iteration, train_iters, device
        self.clock = clock
        self.start = clock()

    def fields(self, iteration: int) -> dict[str, float]:
        elapsed = self.clock() - self.start
        done = iteration - self.start_iteration
        out = {"elapsed_s": elapsed,
               "eta_s": elapsed / done * max(self.train_iters - iteration, 0) if done > 0 else math.nan}
        if self.device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def duration(seconds: float) -> str:
    """``3h04m``, ``5m07s``, ``12s``, ``2d03h``; ``-`` when unknown."""
    if not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // sub_size:02d}{sub}"
    return f"{s}s"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


def _progress_text(record: dict[str, Any]) -> str:
    if "elapsed_s" not in record:
        return ""
    mem = record.get("peak_mem_gib")
    return (f" | elapsed {duration(record['elapsed_s'])} | ETA {duration(record['eta_s'])}"
            + ("" if mem is None else f" | peak mem {mem:.1f} GiB"))


class MetricsLogger:
    """Writes on global rank 0 only (every rank holds the same reduced numbers)."""

    def __init__(self, config: TrainConfig, run_record: dict[str, Any]) -> None:
        log = config.logging
        self.active = torch.distributed.get_rank() == 0
        self.jsonl = None
        self.tb = None
        self.wandb = None
        if not self.active:
            return
        if log.metrics_jsonl:
            os.makedirs(os.path.dirname(os.path.abspath(log.metrics_jsonl)), exist_ok=True)
            self.jsonl = open(log.metrics_jsonl, "a", buffering=1)
        if log.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=log.tensorboard_dir)
        if log.wandb_project:
            import wandb

            self.wandb = wandb.init(**wandb_init_kwargs(config, run_record))

    def print(self, msg: str) -> None:
        if self.active:
            print(msg, flush=True)

    def header(self, flop_counts: dict[str, float]) -> None:
        """The run record (``split="run"``): both FLOP counts, once at start."""
        if not self.active:
            return
        print("FLOPs/token (training): " + " | ".join(f"{k} {v:.4g}" for k, v in flop_counts.items()), flush=True)
        if self.jsonl:
            self.jsonl.write(json.dumps({"split": "run", **flop_counts}) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        split, it = record["split"], record["iteration"]
        kinds = " ".join(
            f"{k}={record[f'loss_{k}']:.4f}" for k in KIND_NAMES if record.get(f"loss_{k}") is not None
        )
        if split == "tasks":  # in-training task evaluation (training/task_eval.py)
            accuracies = " | ".join(f"{k.removesuffix('/accuracy')} {v:.4f}" for k, v in record.items()
                                    if k.endswith("/accuracy") and k.count("/") == 1)
            print(f"[tasks] iter {it} | {accuracies} | {record['seconds']:.1f} s", flush=True)
        elif split == "train":
            mfu = record["mfu"]
            print(
                f"[train] iter {it} | lm_loss {record['lm_loss']:.6f}{_sft_text(record)} | "
                f"z {record['z_loss']:.3f} | {kinds} | "
                f"lr {_fmt(record['lr'], '.3e')} | grad_norm {_fmt(record['grad_norm'], '.3f')} | "
                f"{record['tokens_per_sec']:.0f} tok/s | {record['tflops_per_device']:.2f} TFLOP/s/dev"
                + ("" if mfu is None else f" | MFU {100 * mfu:.1f}%")
                + _progress_text(record),
                flush=True,
            )
        else:
            print(
                f"[{split}] iter {it} | lm_loss {record['lm_loss']:.6f}{_sft_text(record)} | {kinds} | "
                f"{record['tokens']} tokens",
                flush=True,
            )
        if self.jsonl:
            self.jsonl.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
        scalars = {
            f"{split}/{k}": v
            for k, v in record.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and k not in ("iteration", "split")
        }
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, it)
        if self.wandb:
            self.wandb.log(scalars, step=it)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
