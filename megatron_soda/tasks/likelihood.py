"""Batched likelihood scoring with a Hugging Face causal LM.

Sequences are sorted by length and batched with right padding: attention is causal, so padding
after a sequence cannot change its positions, and no attention mask is needed.  The output head
runs only on the positions whose next token is scored, and the log-softmax is taken in float64
(:func:`megatron_soda.tasks.scoring.token_logprobs` is the same rule written for full logits):
SODA's 144,644-way head never materialises ``[batch, length, vocab]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from megatron_soda.tasks.sequences import Scored

HEAD_CHUNK = 256  # positions per output-head call: 256 x 144,644 float64 = 0.3 GB at most


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module, seqs: Sequence[Scored], batch_size: int = 8
) -> list[tuple[float, int]]:
    """(sum of scored log-probabilities, number of scored tokens) per sequence, in input order."""
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[tuple[float, int] | None] = [None] * len(seqs)
    for start in range(0, len(order), max(1, batch_size)):
        rows = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(seqs[i])] = torch.from_numpy(seqs[i].ids)
        ids = ids.to(device)
        hidden = model.model(input_ids=ids).last_hidden_state
        rows_at, cols, targets = [], [], []
        for r, i in enumerate(rows):
            pos = torch.from_numpy(np.flatnonzero(seqs[i].scored)).to(device)
            rows_at.append(torch.full_like(pos, r))
            cols.append(pos)
        at_row, at_col = torch.cat(rows_at), torch.cat(cols)
        targets = ids[at_row, at_col]
        picked = torch.cat([  # the head on the scored positions only, a bounded chunk at a time
            model.lm_head(hidden[at_row[c : c + HEAD_CHUNK], at_col[c : c + HEAD_CHUNK] - 1])
            .double().log_softmax(-1).gather(1, targets[c : c + HEAD_CHUNK, None])[:, 0]
            for c in range(0, at_row.numel(), HEAD_CHUNK)
        ])
        sums = torch.zeros(len(rows), dtype=torch.float64, device=device).index_add_(0, at_row, picked)
        counts = torch.bincount(at_row, minlength=len(rows))
        for r, i in enumerate(rows):
            out[i] = (float(sums[r]), int(counts[r]))
    return out  # type: ignore[return-value]
