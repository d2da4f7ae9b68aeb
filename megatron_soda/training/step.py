"""One training step and one evaluation pass through megatron's pipeline schedules.

The loss of a micro-batch is a *sum* over its tokens (``calculate_per_token_loss``); megatron's
``finalize_model_grads`` divides the gradients by the global token count.  So the update is
exactly the mean over the global batch whatever the TP/PP/DP layout and micro-batch split.  Under
context parallelism each rank's sum covers its chunks of the rows; the token count
(``finalize_model_grads``), the gradients (DDP) and :func:`global_report` all reduce over the
data+context-parallel group, so CP needs nothing here (docs/context_parallel.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_soda.models.loss import REPORT_CE, REPORT_SIZE, REPORT_Z, loss_report
from megatron_soda.tokenizer import TokenLayout
from megatron_soda.training.data import Batch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf."""


@dataclass
class StepContext:
    model: list
    layout: TokenLayout
    z_loss_weight: float
    seq_length: int
    micro_batch_size: int


def _loss_func(batch: Batch, ctx: StepContext, output: torch.Tensor):
    ce, lse = output[0], output[1]
    mask = batch.loss_mask
    loss = ((ce + ctx.z_loss_weight * lse.square()) * mask).sum()
    report = loss_report(ce, lse, batch.labels, mask, ctx.layout, batch.response_mask, batch.prompt_mask)
    return loss, mask.sum().to(torch.int), {"report": report}


def _forward_step(ctx: StepContext, data_iterator: Iterator[Batch], model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(**batch.model_kwargs())
    return output, partial(_loss_func, batch, ctx)


def _run_schedule(ctx: StepContext, batches: list[Batch], forward_only: bool) -> torch.Tensor:
    iters = [iter(batches) for _ in ctx.model]
    outputs = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, ctx),
        data_iterator=iters if len(iters) > 1 else iters[0],
        model=ctx.model,
        num_microbatches=len(batches),
        seq_length=ctx.seq_length,
        micro_batch_size=ctx.micro_batch_size,
        decoder_seq_length=ctx.seq_length,
        forward_only=forward_only,
    )
    return global_report(outputs)


def global_report(outputs: list[dict]) -> torch.Tensor:
    """Sum the micro-batch reports of this rank, then over data(+context)-parallel ranks, and
    hand the result from the last pipeline stage to every rank (float64, so lm_loss keeps full
    precision)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    vec = torch.zeros(REPORT_SIZE, dtype=torch.float64, device=device)
    for out in outputs or []:
        vec += out["report"].to(device)
    torch.distributed.all_reduce(vec, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(vec, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    return vec.cpu()


def report_is_finite(vec: torch.Tensor) -> bool:
    return bool(torch.isfinite(vec[REPORT_CE]) and torch.isfinite(vec[REPORT_Z]))


@dataclass
class StepResult:
    report: torch.Tensor
    grad_norm: float | None
    updated: bool
    lr: float | None = None  # the learning rate this step's update used


def train_step(ctx: StepContext, optimizer, scheduler, batches: list[Batch], on_nonfinite: str,
               describe: Callable[[], str]) -> StepResult:
    for chunk in ctx.model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    vec = _run_schedule(ctx, batches, forward_only=False)
    lr = get_canonical_lr_for_logging(optimizer.param_groups)
    if not report_is_finite(vec):
        if on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss (cross-entropy sum {vec[REPORT_CE].item()}, z sum {vec[REPORT_Z].item()}) "
                f"at {describe()}; stopping. Resume from the last checkpoint with a lower --lr or more "
                "warmup, or pass --on-nonfinite-loss skip to skip such updates."
            )
        return StepResult(vec, None, updated=False, lr=lr)
    updated, grad_norm, _ = optimizer.step()
    if updated:
        scheduler.step(increment=1)
    return StepResult(vec, float(grad_norm) if grad_norm is not None else None, bool(updated), lr)


@torch.no_grad()
def evaluate(ctx: StepContext, global_batches: Iterable[list[Batch]]) -> torch.Tensor:
    """Summed report over the given global batches (forward only)."""
    for chunk in ctx.model:
        chunk.eval()
    total = torch.zeros(REPORT_SIZE, dtype=torch.float64)
    try:
        for batches in global_batches:
            total += _run_schedule(ctx, batches, forward_only=True)
    finally:
        for chunk in ctx.model:
            chunk.train()
    return total
