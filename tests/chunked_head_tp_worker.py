"""torchrun worker for tests/test_chunked_head.py: the chunked head at TP=2 over gloo (CPU),
with and without sequence parallelism, against a plain-torch recomputation on the full weight.

Every rank builds the same full inputs from one seed, takes its shard, runs
``chunked_head_ce_lse`` and checks (ce, lse), grad of its hidden slice and of its weight shard.
Exits non-zero (AssertionError) on any mismatch; prints one ok line per rank and mode."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from megatron_soda import compat
from megatron_soda.models.chunked_head import chunked_head_ce_lse

S, B, H, VOCAB, PADDED, CHUNK = 12, 2, 16, 250, 256, 7


def reference(hidden, weight, labels, mask, a, c, vocab):
    """Plain torch on the whole weight: padded rows excluded, loss = sum(mask*(a*ce + c*lse^2))."""
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    logits = torch.einsum("sbh,vh->bsv", hidden, weight)[..., :vocab]
    lse = torch.logsumexp(logits, dim=-1)
    ce = lse - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (mask * (a * ce + c * lse.square())).sum().backward()
    return torch.stack((ce, lse)).detach(), hidden.grad, weight.grad


def check(sequence_parallel: bool, vocab: int = VOCAB) -> None:
    """``vocab`` < PADDED / 2: rank 1's shard is padded rows only."""
    rank, group = parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_group()
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(S, B, H, generator=gen)
    weight = torch.randn(PADDED, H, generator=gen) * 0.5
    labels = torch.randint(0, vocab, (B, S), generator=gen)
    mask = (torch.rand(B, S, generator=gen) > 0.3).float()
    a, c = 1.0, 0.3  # c large enough that a missing lse gradient shows
    ref_out, ref_gh, ref_gw = reference(hidden, weight, labels, mask, a, c, vocab)

    part = PADDED // 2
    rows = slice(rank * part, (rank + 1) * part)
    toks = slice(rank * S // 2, (rank + 1) * S // 2) if sequence_parallel else slice(None)
    my_hidden = hidden[toks].clone().requires_grad_(True)
    my_weight = weight[rows].clone().requires_grad_(True)
    out = chunked_head_ce_lse(my_hidden, my_weight, labels, vocab, CHUNK,
                              sequence_parallel=sequence_parallel, group=group)
    (mask * (a * out[0] + c * out[1].square())).sum().backward()
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(my_hidden.grad, ref_gh[toks], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(my_weight.grad, ref_gw[rows], atol=1e-5, rtol=1e-5)
    print(f"rank {rank} sequence_parallel={sequence_parallel} vocab={vocab}: ok", flush=True)


def main() -> None:
    torch.distributed.init_process_group("gloo")
    compat.enable()
    parallel_state.initialize_model_parallel(2, 1)
    for sequence_parallel in (False, True):
        check(sequence_parallel)
    check(False, vocab=100)  # rank 1 holds padding only: must not turn every rank's loss into NaN
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    compat.disable()


if __name__ == "__main__":
    main()
