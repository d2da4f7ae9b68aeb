"""In-training evaluation: SODA's likelihood tasks (``--eval-tasks``) scored by the training model.

The items come from a prepared directory (:mod:`megatron_soda.tasks.prepared`): the same token
sequences the standalone evaluator (``python -m megatron_soda.eval``) scores, and the same rules
(:func:`~megatron_soda.tasks.prepared.item_results`, :func:`~megatron_soda.tasks.prepared.summarize`),
so a checkpoint's in-training numbers are the standalone evaluator's numbers.

How a pass runs, under any TP/PP/DP layout:

* every sequence is its own row (position 0 is its ``<bos>``, positions count from 0 as in the
  standalone), right-padded to a length bucket (a multiple of 64, at most ``--seq-length``).
  Attention is plain causal (no document masks: one item per row), so the padding after a
  sequence cannot change its positions; the loss mask keeps only the scored tokens;
* sequences are sorted by length and cut into micro-batches of ``--micro-batch-size`` rows;
  micro-batch ``j`` goes to data-parallel rank ``j % dp`` (its tensor and pipeline peers build
  the same plan from the same list, so they agree on every shape);
* each run of micro-batches of one length goes through megatron's pipeline schedule forward
  only, as :func:`megatron_soda.training.step.evaluate` does; the model's own loss path gives
  the per-token cross-entropy ``-log p(label)`` of the vocab-parallel logits (fp32, padded
  vocabulary rows excluded), summed per row in float64 on the last pipeline stage;
* the per-sequence sums are summed over data-parallel ranks (each sequence is scored by one)
  and broadcast from the last pipeline stage, as :func:`~megatron_soda.training.step.global_report`
  does for losses, so every rank holds every score.

With ``--eval-tasks-steer VEC`` every evaluation scores the items a second time with the steering
vector added to one decoder layer's output (:mod:`megatron_soda.models.steering`, the placement
under TP/SP/PP that ``steer/megatron_hooks.py`` uses too): metrics ``steered/<task>/...``, item
lines with ``"steered": true``; equal to ``python -m megatron_soda.eval pairs --steer VEC ...``
(tests/test_steer_megatron.py).

Agreement with the standalone evaluator (HF forward, float64 log-softmax of fp32 logits): the
logits differ by float rounding only (~1e-6, tests/test_convert.py) and the fp32 cross-entropy
by ~1e-6 per token, so item mean scores agree to ~1e-5; tests/test_train_task_eval.py checks
1e-4.  Under ``--bf16`` the numbers are the bf16 model's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from megatron_soda.config import ConfigError, TrainConfig
from megatron_soda.models.steering import in_units, layer_addition, position_mask, read_layer
from megatron_soda.tasks.prepared import (
    PreparedError,
    PreparedTask,
    item_results,
    read_meta,
    read_prepared,
    summarize,
)
from megatron_soda.tokenizer import SodaTokenizer

if TYPE_CHECKING:
    from megatron_soda.checkpointing import TrainState
    from megatron_soda.training.step import StepContext

BUCKET = 64  # row lengths are rounded up to a multiple of this (fewer distinct shapes)


@dataclass(frozen=True)
class MicroBatch:
    rows: tuple[int, ...]  # sequence indices; -1 = an empty row (shape filler)
    length: int  # tokens per row


def plan(lengths: list[int], micro_batch_size: int, dp_rank: int, dp_size: int, seq_length: int,
         multiple: int = BUCKET) -> list[MicroBatch]:
    """This data-parallel rank's micro-batches: sequences of ``lengths`` input tokens (ids - 1)
    sorted by length, ``micro_batch_size`` rows each, every ``dp_size``-th one from ``dp_rank``."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out = []
    for j, start in enumerate(range(0, len(order), micro_batch_size)):
        if j % dp_size != dp_rank:
            continue
        rows = order[start:start + micro_batch_size]
        longest = max(lengths[i] for i in rows)
        length = min(-(-longest // multiple) * multiple, seq_length)
        out.append(MicroBatch(tuple(rows) + (-1,) * (micro_batch_size - len(rows)), length))
    return out


def schedule_runs(batches: list[MicroBatch], group: int = 1) -> list[list[MicroBatch]]:
    """Consecutive micro-batches of one length (one pipeline schedule call each: its P2P shapes
    are fixed per call), each run padded with empty micro-batches to a multiple of ``group``
    (the interleaved schedule's micro-batch group)."""
    runs: list[list[MicroBatch]] = []
    for mb in batches:
        if runs and runs[-1][0].length == mb.length:
            runs[-1].append(mb)
        else:
            runs.append([mb])
    for run in runs:
        empty = MicroBatch((-1,) * len(run[0].rows), run[0].length)
        run.extend([empty] * (-len(run) % group))
    return runs


def row_multiple(tp: int, cp: int) -> int:
    """What every row length must be a multiple of: the bucket; the tensor-parallel shards of the
    sequence must be equal under --sequence-parallel; context parallelism cuts a row into 2 x CP
    equal chunks, and each rank's S / CP tokens are split again by TP."""
    return math.lcm(BUCKET, (2 * cp if cp > 1 else 1) * tp)


class TaskEvaluator:
    """The tasks of one run, read and checked once at start-up; :meth:`evaluate` scores them."""

    def __init__(self, config: TrainConfig, tasks: dict[str, PreparedTask], tokenizer: SodaTokenizer,
                 seq_length: int, codec: tuple[str | None, str | None] = (None, None)) -> None:
        self.cfg = config.task_eval
        self.codec = codec  # (spec, fingerprint) the prepared audio was encoded with
        self.tasks = tasks
        self.eod = tokenizer.eod
        self.layout = tokenizer.layout
        self.vocab_size = tokenizer.vocab_size
        self.steer = self._steering_vector(config)  # (layer, alpha x vector) with --eval-tasks-steer
        self.seq_length = seq_length
        self.packed = config.precision.use_te  # the trainer's batch layout (THD under Transformer Engine)
        self.attention = config.precision.attention_backend
        self.multiple = row_multiple(config.parallel.tensor_model_parallel_size,
                                     config.parallel.context_parallel_size)
        self.sequences = [s for task in tasks.values() for s in task.sequences()]
        self.counts = [int(s.scored.sum()) for s in self.sequences]
        for name, task in tasks.items():
            for seq in task.sequences():
                if len(seq) - 1 > seq_length:
                    raise ConfigError(f"--eval-tasks {name}: an item of {len(seq)} tokens does not fit "
                                      f"--seq-length {seq_length} (drop the task or prepare shorter items)")

    @classmethod
    def from_config(cls, config: TrainConfig, tokenizer: SodaTokenizer, seq_length: int) -> TaskEvaluator | None:
        """None without ``--eval-tasks-data``; a prepared directory made for another tokenizer
        or layout is a :class:`ConfigError` here, before any process group exists."""
        cfg = config.task_eval
        if not cfg.enabled:
            return None
        try:
            tasks = read_prepared(cfg.eval_tasks_data, tokenizer, cfg.eval_tasks_score_span, cfg.eval_tasks)
            meta = read_meta(cfg.eval_tasks_data)
        except PreparedError as e:
            raise ConfigError(f"--eval-tasks-data: {e}") from None
        if cfg.eval_tasks_limit:
            tasks = {n: PreparedTask(t.name, t.kind, t.items[:cfg.eval_tasks_limit]) for n, t in tasks.items()}
        return cls(config, tasks, tokenizer, seq_length, (meta.get("codec"), meta.get("codec_fingerprint")))

    def _steering_vector(self, config: TrainConfig) -> tuple[int, torch.Tensor] | None:
        """``--eval-tasks-steer``: the layer and the vector added (alpha x the vector in its
        units, computed as steer/hooks.py does), read once."""
        cfg = self.cfg
        if not cfg.eval_tasks_steer:
            return None
        if config.parallel.context_parallel_size > 1:
            raise ConfigError("--eval-tasks-steer does not support --context-parallel-size > 1")
        try:
            layer, vector, norm = read_layer(cfg.eval_tasks_steer, cfg.eval_tasks_steer_layer)
            vector = in_units(vector, cfg.eval_tasks_steer_alpha_units, norm, f"{cfg.eval_tasks_steer} layer {layer}")
        except ValueError as e:
            raise ConfigError(f"--eval-tasks-steer: {e}") from None
        # the model's shape, checked here, before any process group exists (layer_addition's own
        # checks only run when its context is entered, at the first evaluation)
        arch = config.model.architecture_for(self.vocab_size)
        if not 0 <= layer < arch.num_layers:
            raise ConfigError(f"--eval-tasks-steer: layer {layer}, the model has layers 0..{arch.num_layers - 1}")
        if vector.shape != (arch.hidden_size,):
            raise ConfigError(f"--eval-tasks-steer {cfg.eval_tasks_steer}: a vector of shape {tuple(vector.shape)}, "
                              f"the model's hidden size is {arch.hidden_size}")
        return layer, cfg.eval_tasks_steer_alpha * vector.float()

    def _steered(self, ctx: StepContext) -> contextlib.AbstractContextManager:
        layer, delta = self.steer
        positions = self.cfg.eval_tasks_steer_positions
        return layer_addition(ctx.model, layer, delta, lambda ids: position_mask(ids, self.layout, positions))

    def start(self, data_codec: dict, log: Callable[[str], None]) -> None:
        """Refuse audio items encoded by another codec than the training data's; say what runs."""
        codec, fingerprint = self.codec
        theirs = data_codec.get("codec_fingerprint")
        if fingerprint and theirs and fingerprint != theirs:
            raise ConfigError(f"--eval-tasks-data {self.cfg.eval_tasks_data} was encoded with codec {codec} "
                              f"({fingerprint}), the training data with {data_codec.get('codec')} ({theirs}): "
                              "prepare the tasks with the training data's codec")
        names = ", ".join(f"{n} ({len(t.items)})" for n, t in self.tasks.items())
        log(f"task evaluation every {self.cfg.eval_tasks_interval} iterations: {names}; "
            f"{len(self.sequences)} sequences, score span {self.cfg.eval_tasks_score_span}")
        if self.steer:
            c = self.cfg
            log(f"task evaluation also steered: {c.eval_tasks_steer} layer {self.steer[0]}, alpha "
                f"{c.eval_tasks_steer_alpha} ({c.eval_tasks_steer_alpha_units}), {c.eval_tasks_steer_positions} "
                f"positions, added norm {float(self.steer[1].norm()):.4g}")

    def due(self, iteration: int, last: int) -> bool:
        return iteration % self.cfg.eval_tasks_interval == 0 or iteration == last

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def scores(self, ctx: StepContext, device: torch.device) -> list[tuple[float, int]]:
        """(sum of scored log-probabilities, scored tokens) per sequence, on every rank."""
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.utils import get_model_config

        lengths = [len(s) - 1 for s in self.sequences]
        mine = plan(lengths, ctx.micro_batch_size, parallel_state.get_data_parallel_rank(),
                    parallel_state.get_data_parallel_world_size(), self.seq_length, self.multiple)
        group = get_model_config(ctx.model[0]).microbatch_group_size_per_vp_stage if len(ctx.model) > 1 else 1
        comm = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        sums = torch.zeros(len(self.sequences), dtype=torch.float64, device=comm)
        for chunk in ctx.model:
            chunk.eval()
        try:
            for run in schedule_runs(mine, group):
                iters = [self._batches(run, device) for _ in ctx.model]
                outputs = get_forward_backward_func()(
                    forward_step_func=_forward_step, data_iterator=iters if len(iters) > 1 else iters[0],
                    model=ctx.model, num_microbatches=len(run), seq_length=run[0].length,
                    micro_batch_size=ctx.micro_batch_size, decoder_seq_length=run[0].length, forward_only=True)
                for out in outputs or []:  # the last pipeline stage only
                    rows, row_sums = out["rows"].to(comm), out["sums"].to(comm)
                    keep = rows >= 0
                    sums[rows[keep]] = row_sums[keep]
        finally:
            for chunk in ctx.model:
                chunk.train()
        torch.distributed.all_reduce(sums, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            last = parallel_state.get_pipeline_model_parallel_last_rank()
            torch.distributed.broadcast(sums, src=last, group=parallel_state.get_pipeline_model_parallel_group())
        return list(zip(sums.cpu().tolist(), self.counts, strict=True))

    def _batches(self, run: list[MicroBatch], device: torch.device) -> Iterator[tuple[Any, torch.Tensor]]:
        from megatron_soda.training.data import make_batch

        for mb in run:
            n = len(mb.rows)
            tokens = torch.full((n, mb.length), self.eod, dtype=torch.long)
            labels = torch.zeros((n, mb.length), dtype=torch.long)
            mask = torch.zeros((n, mb.length), dtype=torch.float32)
            for r, i in enumerate(mb.rows):
                if i < 0:
                    continue
                seq = self.sequences[i]
                t = len(seq) - 1  # megatron's convention: tokens = ids[:-1], labels = ids[1:]
                tokens[r, :t] = torch.from_numpy(seq.ids[:-1])
                labels[r, :t] = torch.from_numpy(seq.ids[1:])
                mask[r, :t] = torch.from_numpy(seq.scored[1:].astype(np.float32))
            raw = {"tokens": tokens, "labels": labels, "loss_mask": mask}
            batch = make_batch(raw, self.eod, device, reset_attention_mask=False, reset_position_ids=False,
                               eod_mask_loss=False, packed=self.packed, attention=self.attention)
            yield batch, torch.tensor(mb.rows, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ the record
    def evaluate(self, ctx: StepContext, device: torch.device, state: TrainState) -> dict[str, Any]:
        """Score every task; the ``split="tasks"`` metrics record (and ``--eval-tasks-items``)."""
        start = time.perf_counter()
        record: dict[str, Any] = {"split": "tasks", "iteration": state.iteration,
                                  "consumed_samples": state.consumed_samples}
        lines: list[str] = []
        for steered in (False, True) if self.steer else (False,):
            # --eval-tasks-steer: the same items once more with the vector added
            with self._steered(ctx) if steered else contextlib.nullcontext():
                scores = self.scores(ctx, device)
            prefix, mark = ("steered/", {"steered": True}) if steered else ("", {})
            i = 0
            for name, task in self.tasks.items():
                n = len(task.sequences())
                items = item_results(task, scores[i:i + n])
                i += n
                record.update({prefix + k: v for k, v in task_metrics(task, items).items()})
                lines += [json.dumps({"iteration": state.iteration, "task": name, **mark, **it}) for it in items]
        record["seconds"] = time.perf_counter() - start
        if self.cfg.eval_tasks_items and torch.distributed.get_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.cfg.eval_tasks_items)), exist_ok=True)
            with open(self.cfg.eval_tasks_items, "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
        return record


def task_metrics(task: PreparedTask, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{task}/accuracy``, ``{task}/n``, ``{task}/acc`` + ``{task}/acc_norm`` (choice),
    ``{task}/{subtask}/accuracy``, and for pairs ``{task}/margin``: the mean of score_positive -
    score_negative, a continuous companion of the accuracy (smoother along a run)."""
    summary = summarize(task, items)
    out = {f"{task.name}/{k}": v for k, v in summary.items() if k not in ("task", "subtasks")}
    for sub, metrics in summary.get("subtasks", {}).items():
        out[f"{task.name}/{sub}/accuracy"] = metrics["accuracy"]
    if task.kind == "pairs":
        out[f"{task.name}/margin"] = (sum(r["score_positive"] - r["score_negative"] for r in items) / len(items)
                                      if items else math.nan)
    return out


def _loss_func(rows: torch.Tensor, mask: torch.Tensor, output: torch.Tensor):
    """``output[0]`` is the per-token cross-entropy (``[b, s]``, or ``[1, b*s]`` packed)."""
    ce = output[0].reshape(mask.shape)
    sums = -(ce.to(torch.float64) * mask.to(torch.float64)).sum(-1)
    return ce.sum() * 0.0, mask.sum().to(torch.int), {"rows": rows, "sums": sums}


def _forward_step(data_iterator: Iterator, model: torch.nn.Module):
    batch, rows = next(data_iterator)
    output = model(**batch.model_kwargs())
    return output, partial(_loss_func, rows, batch.loss_mask.reshape(rows.numel(), -1))
