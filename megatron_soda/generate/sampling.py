"""Choosing the next token: grammar mask, temperature, top-k, top-p, one generator per row.

The order is Hugging Face's (``generate``'s logits warpers: temperature, then top-k, then
top-p), which is what the authors' harness ran (blueberry-eval ``asr_librispeech/
inference_0shot.py`` lines 147-155), except that the grammar mask comes first, so the filters
and the renormalisation see only the ids the grammar allows.  Top-p keeps the smallest set of
most probable ids whose probability reaches ``top_p`` (an id is dropped when the mass of the
ids ranked above it already reaches ``top_p``; the most probable id is always kept).

A draw is an inverse-CDF lookup of one float64 uniform from the row's own CPU generator, over
the kept ids in id order: a row's samples depend only on its seed and its logits, not on the
other rows of the batch nor on the device's random-number streams.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_soda.generate.settings import SamplingSettings


def row_generator(seed: int, row: int) -> torch.Generator:
    """The generator of row ``row`` of a run seeded ``seed`` (independent streams)."""
    state = np.random.SeedSequence([int(seed), int(row)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def filtered_logits(
    logits: torch.Tensor, allowed: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """``[rows, vocab]`` float32 logits with every id that may not be drawn at -inf."""
    x = logits.float().masked_fill(~allowed, float("-inf"))
    if temperature > 0:
        x = x / temperature
    if top_k > 0 and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the ids ranked above
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def distribution(
    logits: torch.Tensor, allowed: torch.Tensor, settings: SamplingSettings
) -> torch.Tensor:
    """The probabilities each row is sampled from (float64); greedy: one-hot at the argmax."""
    if settings.greedy:
        x = logits.float().masked_fill(~allowed, float("-inf"))
        return torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).double()
    x = filtered_logits(logits, allowed, settings.temperature, settings.top_k, settings.top_p)
    return torch.softmax(x.double(), dim=-1)


def choose(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    settings: SamplingSettings,
    generators: list[torch.Generator],
) -> list[int]:
    """One id per row.  Greedy takes the allowed argmax (lowest id on ties) and draws nothing."""
    if not allowed.any(-1).all():
        raise RuntimeError("the grammar allows no token for some row")
    if settings.greedy:
        x = logits.float().masked_fill(~allowed, float("-inf"))
        return x.argmax(-1).tolist()
    x = filtered_logits(logits, allowed, settings.temperature, settings.top_k, settings.top_p)
    out = []
    for row, g in zip(x, generators):
        kept = torch.isfinite(row).nonzero().squeeze(-1)
        probs = torch.softmax(row[kept].double(), dim=-1).cpu()
        cdf = torch.cumsum(probs, dim=0)
        u = torch.rand((), generator=g, dtype=torch.float64) * cdf[-1]
        i = int(torch.searchsorted(cdf, u, right=True).clamp(max=kept.numel() - 1))
        out.append(int(kept[i]))
    return out
