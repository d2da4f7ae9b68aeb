"""Vocab-parallel cross-entropy that also returns log-sum-exp (for z-loss), with padded vocab rows
masked out, and per-token-kind accounting.

megatron-core's ``vocab_parallel_cross_entropy`` computes log(sum(exp(logits))) internally but
only returns the loss.  SODA's objective is ``CE + z_w * lse**2`` (PaLM-style z-loss), so this
fused function returns ``(ce, lse)`` from the same pass over the logits, reusing megatron's
building blocks (:class:`VocabParallelCrossEntropy`), and keeps the in-place memory behaviour.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy

from megatron_soda.format import KIND_NAMES, TokenLayout, token_kinds_torch


def mask_padded_vocab_(logits: torch.Tensor, vocab_size: int, vocab_start: int) -> None:
    """Set logits of padded rows (global index >= vocab_size) to -inf, in place.

    ``logits[..., j]`` is global row ``vocab_start + j`` (a tensor-parallel shard)."""
    first_pad = vocab_size - vocab_start
    if first_pad < logits.size(-1):
        logits[..., max(first_pad, 0) :] = float("-inf")


class _VocabParallelCEWithLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, vocab_size):  # noqa: D102
        group = parallel_state.get_tensor_model_parallel_group()
        rank = parallel_state.get_tensor_model_parallel_rank()
        partition = vocab_parallel_logits.size(-1)
        start, end = rank * partition, (rank + 1) * partition

        logits = vocab_parallel_logits.float()
        if end > vocab_size:
            mask_padded_vocab_(logits, vocab_size, start)
        logits_max = torch.max(logits, dim=-1)[0]
        torch.distributed.all_reduce(logits_max, op=torch.distributed.ReduceOp.MAX, group=group)
        target_mask, masked_target_1d, predicted, sum_exp, exp_logits = (
            VocabParallelCrossEntropy.calculate_predicted_logits(logits, target, logits_max, start, end)
        )
        torch.distributed.all_reduce(predicted, group=group)
        torch.distributed.all_reduce(sum_exp, group=group)
        softmax, loss = VocabParallelCrossEntropy.calculate_cross_entropy_loss(exp_logits, predicted, sum_exp)
        lse = torch.log(sum_exp) + logits_max
        ctx.save_for_backward(softmax, target_mask, masked_target_1d)
        return loss, lse

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):  # noqa: D102
        softmax, target_mask, masked_target_1d = ctx.saved_tensors
        grad_2d, arange_1d, softmax_update, grad_input = (
            VocabParallelCrossEntropy.prepare_gradient_calculation_operands(softmax, target_mask)
        )
        # d ce / d x = softmax - onehot ;  d lse / d x = softmax
        grad_input.mul_((grad_loss + grad_lse).unsqueeze(-1))
        grad_2d[arange_1d, masked_target_1d] -= softmax_update * grad_loss.reshape(-1)
        return grad_input, None, None


def cross_entropy_and_lse(
    logits: torch.Tensor, target: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy and log-sum-exp of tensor-parallel logits ``[..., V/tp]``.

    Rows at or beyond ``vocab_size`` (vocabulary padding) get probability zero.  ``logits`` is
    overwritten (as megatron's own vocab-parallel cross-entropy does)."""
    return _VocabParallelCEWithLSE.apply(logits, target, vocab_size)


NUM_KINDS = len(KIND_NAMES)
# Layout of the per-microbatch report vector (summed over microbatches and data-parallel ranks).
REPORT_CE, REPORT_Z, REPORT_TOKENS = 0, 1, 2
REPORT_KIND_CE = 3
REPORT_KIND_TOKENS = REPORT_KIND_CE + NUM_KINDS
# Supervised fine-tuning (zero otherwise): cross-entropy sum and count of the response targets,
# count of the prompt targets (unscored unless --sft-prompt-loss).
REPORT_RESPONSE_CE = REPORT_KIND_TOKENS + NUM_KINDS
REPORT_RESPONSE_TOKENS = REPORT_RESPONSE_CE + 1
REPORT_PROMPT_TOKENS = REPORT_RESPONSE_CE + 2
REPORT_SIZE = REPORT_PROMPT_TOKENS + 1


def loss_report(
    ce: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, layout: TokenLayout,
    response_mask: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sums for logging, as one float64 vector (one collective for all of them):
    [ce_sum, z_sum, tokens, ce_sum per kind (4), tokens per kind (4), response ce_sum, response
    tokens, prompt tokens] (the last three from the SFT masks, zero without them)."""
    mask = loss_mask.to(torch.float64)
    ce64 = ce.detach().to(torch.float64) * mask
    kinds = token_kinds_torch(labels, layout)
    onehot = torch.nn.functional.one_hot(kinds.long(), NUM_KINDS).to(torch.float64) * mask.unsqueeze(-1)
    per_kind_ce = (onehot * ce64.unsqueeze(-1)).reshape(-1, NUM_KINDS).sum(0)
    per_kind_n = onehot.reshape(-1, NUM_KINDS).sum(0)
    head = torch.stack([ce64.sum(), (lse.detach().to(torch.float64) ** 2 * mask).sum(), mask.sum()])
    sft = torch.zeros(3, dtype=torch.float64, device=mask.device)
    if response_mask is not None:
        response = response_mask.to(torch.float64)
        sft[0] = (ce.detach().to(torch.float64) * response).sum()
        sft[1] = response.sum()
    if prompt_mask is not None:
        sft[2] = prompt_mask.to(torch.float64).sum()
    return torch.cat([head, per_kind_ce, per_kind_n, sft])
