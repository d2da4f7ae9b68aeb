"""The output head and its loss without materialising ``[tokens x V/tp]`` logits.

SODA's vocabulary has 144,644 entries and its models are small, so the fp32 logits of the output
layer (and their gradient) dominate activation memory: at 135M with a micro-batch of 8 x 4096
tokens they are 8 * 4096 * 144,644 * 4 B = 19 GB, against ~0.5 GB for the final hidden states.
:func:`chunked_head_ce_lse` computes the same per-token ``(cross-entropy, log-sum-exp)`` as
``output_layer`` + :func:`megatron_soda.models.loss.cross_entropy_and_lse`, ``chunk_tokens``
tokens at a time:

* forward: per chunk, logits = x @ W^T (in the weights' dtype, as ColumnParallelLinear does),
  then float32; padded vocabulary rows masked to -inf (:func:`mask_padded_vocab_`); the max, then
  (target logit, sum of exp) all-reduced over the tensor-parallel group, as
  ``_VocabParallelCEWithLSE`` does (models/loss.py) with megatron's
  ``VocabParallelCrossEntropy.calculate_predicted_logits``.  Only ce and lse ([tokens], fp32) are
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

import torch
from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy
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


class ChunkedVocabParallelHeadCE(torch.autograd.Function):
    """``(ce, lse)`` per token of ``hidden [T, h] @ weight[V/tp, h]^T`` without the logits.

    ``hidden`` must already be the full (sequence-gathered) tokens of this rank and identical on
    every tensor-parallel rank; ``target [T]`` holds global vocabulary ids."""

    @staticmethod
    def forward(ctx, hidden, weight, target, vocab_size, chunk_tokens, group):  # noqa: D102
        tp = _group_size(group)
        rank = torch.distributed.get_rank(group) if tp > 1 else 0
        partition = weight.size(0)
        start, end = rank * partition, (rank + 1) * partition
        tokens = hidden.size(0)
        ce = torch.empty(tokens, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(ce)
        for i in range(0, tokens, chunk_tokens):
            logits = _chunk_logits(hidden[i : i + chunk_tokens], weight, vocab_size, start)
            logits_max = torch.max(logits, dim=-1)[0]
            if tp > 1:
                torch.distributed.all_reduce(logits_max, op=torch.distributed.ReduceOp.MAX, group=group)
            _, _, predicted, sum_exp, _ = VocabParallelCrossEntropy.calculate_predicted_logits(
                logits, target[i : i + chunk_tokens], logits_max, start, end
            )
            del logits
            stats = torch.stack((predicted, sum_exp))  # one collective for both sums
            if tp > 1:
                torch.distributed.all_reduce(stats, group=group)
            log_sum_exp = torch.log(stats[1])
            ce[i : i + chunk_tokens] = log_sum_exp - stats[0]
            lse[i : i + chunk_tokens] = log_sum_exp + logits_max
        ctx.save_for_backward(hidden, weight, target, lse)
        ctx.vocab_size, ctx.chunk_tokens, ctx.start = vocab_size, chunk_tokens, start
        return ce, lse

    @staticmethod
    def backward(ctx, grad_ce, grad_lse):  # noqa: D102
        hidden, weight, target, lse = ctx.saved_tensors
        start, chunk = ctx.start, ctx.chunk_tokens
        partition = weight.size(0)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        single = hidden.size(0) <= chunk  # one chunk: one GEMM in the weights' dtype, as megatron
        grad_weight = torch.zeros(weight.shape, dtype=weight.dtype if single else torch.float32,
                                  device=weight.device) if ctx.needs_input_grad[1] else None
        for i in range(0, hidden.size(0), chunk):
            x = hidden[i : i + chunk]
            g_ce, g_lse = grad_ce[i : i + chunk].float(), grad_lse[i : i + chunk].float()
            grad_logits = _chunk_logits(x, weight, ctx.vocab_size, start)
            grad_logits.sub_(lse[i : i + chunk].unsqueeze(-1)).exp_()  # softmax (global lse)
            # d ce / d logits = softmax - onehot ;  d lse / d logits = softmax
            grad_logits.mul_((g_ce + g_lse).unsqueeze(-1))
            local = target[i : i + chunk] - start
            mine = (local >= 0) & (local < partition)
            rows = torch.nonzero(mine).squeeze(-1)
            grad_logits[rows, local[rows]] -= g_ce[rows]
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                torch.matmul(grad_logits, weight, out=grad_hidden[i : i + chunk])
            if grad_weight is not None and grad_weight.dtype == x.dtype:
                grad_weight.addmm_(grad_logits.t(), x)
            elif grad_weight is not None:  # low precision: each chunk's GEMM, summed in fp32
                grad_weight.add_(torch.matmul(grad_logits.t(), x))
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunked_head_ce_lse(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    chunk_tokens: int,
    *,
    sequence_parallel: bool = False,
    group: torch.distributed.ProcessGroup | None = None,
) -> torch.Tensor:
    """Per-token ``(ce, lse)`` as the ``[2, b, s]`` tensor of ``SodaGPTModel`` with labels.

    ``hidden``: the final hidden states ``[s, b, h]`` (``[s/tp, b, h]`` under sequence
    parallelism); ``weight``: this rank's output-layer shard ``[V/tp, h]``; ``labels`` ``[b, s]``;
    ``vocab_size``: the unpadded vocabulary (rows at or beyond it are never predicted)."""
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
                                               chunk_tokens, group)
    return torch.stack((ce.view(s, b), lse.view(s, b))).transpose(1, 2).contiguous()
