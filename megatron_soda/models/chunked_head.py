"""The output head and its loss without materialising ``[tokens x V/tp]`` logits.

SODA's vocabulary has 144,644 entries and its models are small, so the fp32 logits of the output
layer (and their gradient) dominate activation memory: at 135M with a micro-batch of 8 x 4096
tokens they are 8 * 4096 * 144,644 * 4 B = 19 GB, against ~0.5 GB for the final hidden states.
:func:`chunked_head_ce_lse` computes the same per-token ``(cross-entropy, log-sum-exp)`` as
``output_layer`` + :func:`megatron_soda.models.loss.cross_entropy_and_lse`, ``chunk_tokens``
tokens at a time:

* forward: per chunk, logits = x @ W^T (in the weights' dtype, as ColumnParallelLinear does),
  then float32; padded vocabulary rows masked to -inf (:func:`mask_padded_vocab_`); this shard's
  max, sum of exp relative to it and target logit (:func:`chunk_stats`, one function without
  collectives, so ``--torch-compile head`` can fuse it); then, under TP, the max all-reduced and
  (target logit, rescaled sum of exp) summed in one collective, the same statistics as
  ``_VocabParallelCEWithLSE`` (models/loss.py, megatron's
  ``VocabParallelCrossEntropy.calculate_predicted_logits``).  Only ce and lse ([tokens], fp32) are
  kept, plus the inputs (hidden, weight, target) for backward.
* backward: per chunk, the logits are recomputed and
  ``dL/dlogits = softmax * (g_ce + g_lse) - onehot(target) * g_ce`` with
  ``softmax = exp(logits - lse)`` (lse is global, so no communication is needed);
  grad_hidden of the chunk = dL/dlogits @ W, grad_weight += dL/dlogits^T @ x (float32
  accumulator).  grad_hidden is this rank's partial sum over its vocabulary shard: the
  tensor-parallel reduction is done by megatron's mappings around the function, exactly as in
  ColumnParallelLinear (megatron/core/tensor_parallel/layers.py, ``ColumnParallelLinear.forward``:
  ``copy_to_tensor_model_parallel_region`` without sequence parallelism; with it, the all-gather
  of ``LinearWithGradAccumulationAndAsyncCommunication.forward`` whose backward reduce-scatters,
  here ``gather_from_sequence_parallel_region(tensor_parallel_output_grad=True)``).

The weight gradient is returned as an ordinary ``.grad`` (megatron_soda always builds with
``gradient_accumulation_fusion=False``; megatron's DDP hook then adds it to ``main_grad``, as for
``LinearWithGradAccumulationAndAsyncCommunication`` with fusion off).

Why not liger-kernel or cut-cross-entropy: see docs/gpu.md ("The output head without
materialised logits"): neither is vocab-parallel over a megatron TP group *and* fused with the
linear layer while returning lse for the z-loss, and both need Triton/CUDA (not the CPU tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)

from megatron_soda.models.loss import mask_padded_vocab_


def _group_size(group: torch.distributed.ProcessGroup | None) -> int:
    if group is None or not torch.distributed.is_initialized():
        return 1
    return torch.distributed.get_world_size(group)


def _chunk_logits(x: torch.Tensor, weight: torch.Tensor, vocab_size: int, start: int) -> torch.Tensor:
    """fp32 logits of one chunk with padded rows at -inf (matmul in the weights' dtype, as the
    output layer computes them)."""
    logits = torch.matmul(x, weight.t()).float()
    if start + weight.size(0) > vocab_size:
        mask_padded_vocab_(logits, vocab_size, start)
    return logits


def _shard_targets(target: torch.Tensor, start: int, partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target's row in this vocabulary shard, clamped into range; whether the shard holds it)."""
    local = target - start
    mine = (local >= 0) & (local < partition)
    return local.clamp(0, partition - 1), mine


def chunk_stats(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, vocab_size: int,
                start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's shard-local ``(max, sum of exp(logit - max), target logit or 0)``, each [tokens].

    Shard-local statistics are combined over tensor-parallel ranks afterwards (max, then the sums
    rescaled to it), so the whole per-chunk computation is one function with no collective inside
    (what ``torch.compile`` can fuse: cast, mask, max, exp, sum and the gather in few passes)."""
    logits = _chunk_logits(x, weight, vocab_size, start)
    local_max = logits.max(dim=-1).values
    row, mine = _shard_targets(target, start, weight.size(0))
    predicted = torch.where(mine, logits.gather(1, row.unsqueeze(-1)).squeeze(-1), 0.0)
    # in place on the chunk's own buffer: eager holds one [tokens x V/tp] fp32 array at a time.
    # A shard of padded rows only (tiny vocabularies at high TP) has max -inf: its sum must be 0.
    shift = torch.where(torch.isfinite(local_max), local_max, 0.0)
    sum_exp = logits.sub_(shift.unsqueeze(-1)).exp_().sum(dim=-1)
    return local_max, sum_exp, predicted


def chunk_grad_logits(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                      g_ce: torch.Tensor, g_lse: torch.Tensor, vocab_size: int, start: int) -> torch.Tensor:
    """``dL/dlogits`` of one chunk in the hidden states' dtype:
    ``softmax * (g_ce + g_lse) - onehot(target) * g_ce`` with ``softmax = exp(logits - lse)``
    (lse is global, so no communication is needed)."""
    grad = _chunk_logits(x, weight, vocab_size, start)
    grad.sub_(lse.unsqueeze(-1)).exp_().mul_((g_ce + g_lse).unsqueeze(-1))  # in place, as above
    row, mine = _shard_targets(target, start, weight.size(0))
    grad.scatter_add_(1, row.unsqueeze(-1), torch.where(mine, -g_ce, 0.0).unsqueeze(-1))
    return grad.to(x.dtype)


@functools.cache
def _compiled(fn: Callable, backend: str | None) -> Callable:
    """``fn`` itself, or compiled with ``backend`` (once per process).  Shapes: the first chunk size
    is compiled static; the next one (the last chunk of a step, task evaluation's buckets) makes
    dynamo recompile with a dynamic token dimension that serves every later size."""
    return fn if backend is None else torch.compile(fn, backend=backend)


class ChunkedVocabParallelHeadCE(torch.autograd.Function):
    """``(ce, lse)`` per token of ``hidden [T, h] @ weight[V/tp, h]^T`` without the logits.

    ``hidden`` must already be the full (sequence-gathered) tokens of this rank and identical on
    every tensor-parallel rank; ``target [T]`` holds global vocabulary ids; ``compile_backend``:
    run the per-chunk math through ``torch.compile`` with that backend (None: eager)."""

    @staticmethod
    def forward(ctx, hidden, weight, target, vocab_size, chunk_tokens, group, compile_backend=None):  # noqa: D102
        tp = _group_size(group)
        start = (torch.distributed.get_rank(group) if tp > 1 else 0) * weight.size(0)
        stats_fn = _compiled(chunk_stats, compile_backend)
        tokens = hidden.size(0)
        ce = torch.empty(tokens, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(ce)
        for i in range(0, tokens, chunk_tokens):
            local_max, sum_exp, predicted = stats_fn(hidden[i : i + chunk_tokens], weight,
                                                     target[i : i + chunk_tokens], vocab_size, start)
            logits_max = local_max.clone()
            if tp > 1:  # megatron's order: the global max, then both sums in one collective
                torch.distributed.all_reduce(logits_max, op=torch.distributed.ReduceOp.MAX, group=group)
                # exp(-inf - max) = 0 for an all-padding shard (its sum_exp is 0 anyway)
                sums = torch.stack((predicted, sum_exp * torch.exp(local_max - logits_max)))
                torch.distributed.all_reduce(sums, group=group)
                predicted, sum_exp = sums[0], sums[1]
            log_sum_exp = torch.log(sum_exp)
            ce[i : i + chunk_tokens] = log_sum_exp - (predicted - logits_max)
            lse[i : i + chunk_tokens] = log_sum_exp + logits_max
        ctx.save_for_backward(hidden, weight, target, lse)
        ctx.vocab_size, ctx.chunk_tokens, ctx.start = vocab_size, chunk_tokens, start
        ctx.compile_backend = compile_backend
        return ce, lse

    @staticmethod
    def backward(ctx, grad_ce, grad_lse):  # noqa: D102
        hidden, weight, target, lse = ctx.saved_tensors
        start, chunk = ctx.start, ctx.chunk_tokens
        grad_fn = _compiled(chunk_grad_logits, ctx.compile_backend)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        single = hidden.size(0) <= chunk  # one chunk: one GEMM in the weights' dtype, as megatron
        grad_weight = torch.zeros(weight.shape, dtype=weight.dtype if single else torch.float32,
                                  device=weight.device) if ctx.needs_input_grad[1] else None
        for i in range(0, hidden.size(0), chunk):
            x = hidden[i : i + chunk]
            grad_logits = grad_fn(x, weight, target[i : i + chunk], lse[i : i + chunk],
                                  grad_ce[i : i + chunk].float(), grad_lse[i : i + chunk].float(),
                                  ctx.vocab_size, start)
            if grad_hidden is not None:
                torch.matmul(grad_logits, weight, out=grad_hidden[i : i + chunk])
            if grad_weight is not None and grad_weight.dtype == x.dtype:
                grad_weight.addmm_(grad_logits.t(), x)
            elif grad_weight is not None:  # low precision: each chunk's GEMM, summed in fp32
                grad_weight.add_(torch.matmul(grad_logits.t(), x))
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def chunked_head_ce_lse(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    chunk_tokens: int,
    *,
    sequence_parallel: bool = False,
    group: torch.distributed.ProcessGroup | None = None,
    compile_backend: str | None = None,
) -> torch.Tensor:
    """Per-token ``(ce, lse)`` as the ``[2, b, s]`` tensor of ``SodaGPTModel`` with labels.

    ``hidden``: the final hidden states ``[s, b, h]`` (``[s/tp, b, h]`` under sequence
    parallelism); ``weight``: this rank's output-layer shard ``[V/tp, h]``; ``labels`` ``[b, s]``;
    ``vocab_size``: the unpadded vocabulary (rows at or beyond it are never predicted);
    ``compile_backend``: ``torch.compile`` the per-chunk math with it (``--torch-compile head``)."""
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
    if _group_size(group) > 1:
        if sequence_parallel:
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True, group=group)
        else:
            hidden = copy_to_tensor_model_parallel_region(hidden, group=group)
    s, b, h = hidden.shape
    target = labels.transpose(0, 1).reshape(-1)
    ce, lse = ChunkedVocabParallelHeadCE.apply(hidden.reshape(s * b, h), weight, target, vocab_size,
                                               chunk_tokens, group, compile_backend)
    return torch.stack((ce.view(s, b), lse.view(s, b))).transpose(1, 2).contiguous()
