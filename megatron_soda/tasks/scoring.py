"""Scoring rules: per-token log-probabilities -> item scores -> task metrics.

Pairs (the authors' rule, ``blueberry-eval`` ``sWUGGY/inference_speech_0shot.py`` line 183):
the positive member wins when its score is strictly higher (a tie counts as wrong).
HellaSwag: lm-evaluation-harness's ``acc`` (sum of log-probabilities of the ending) and
``acc_norm`` (that sum divided by the ending's length in characters); ``acc_norm`` is the
number reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` logits and ``[B, T]`` ids -> ``[B, T]`` float64 ``log p(ids[t] | ids[:t])``;
    column 0 (nothing predicts it) is 0.  Computed in float64 so that scores do not depend on
    batch composition beyond the model's own arithmetic."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = logp.gather(-1, ids[:, 1:, None].long()).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0))


def masked_sum(logprobs: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of scored log-probabilities, number of scored tokens)."""
    m = scored.to(logprobs.dtype)
    return (logprobs * m).sum(-1), m.sum(-1)


def mean_score(total: float, count: int) -> float:
    if count <= 0:
        raise ValueError("an item with no scored tokens")
    return total / count


def pair_correct(score_positive: float, score_negative: float) -> bool:
    return score_positive > score_negative


def choice_predictions(sums: Sequence[float], lengths: Sequence[int]) -> tuple[int, int]:
    """(argmax of sums, argmax of sums / lengths): the ``acc`` and ``acc_norm`` choices."""
    raw = max(range(len(sums)), key=lambda i: sums[i])
    norm = max(range(len(sums)), key=lambda i: sums[i] / max(lengths[i], 1))
    return raw, norm
