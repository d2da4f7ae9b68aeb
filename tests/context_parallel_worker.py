"""torchrun worker for tests/test_context_parallel.py: the tiny model with ``--attention-backend
flex`` at context parallelism 2 (two processes, gloo, CPU) against the same model at CP=1.

Each rank first computes the reference itself: megatron's parallel state at CP=1, the whole
document-packed batch, loss = sum(mask * (ce + z lse^2)) / tokens (training/step.py's loss, the
division megatron's ``finalize_model_grads`` does), and every parameter's gradient.  Then the state
is rebuilt at CP=2 and the same weights (same seed) see this rank's half of the batch
(``make_batch`` with megatron's CP group): the per-token (ce, lse) must equal the reference's at
this rank's global positions, and the loss sums, token counts and gradients summed over the CP
group (what megatron's DDP does over the data+context-parallel group) must give the reference's
loss and gradients within 1e-5.  Cases: 256 tokens (chunks of 64, across flex's 128-blocks), under
full recompute; 512 tokens (chunks of 128, block-aligned).  Exits non-zero on a mismatch; prints
one ok line per rank and case."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_soda import compat
from megatron_soda.config import ParallelConfig, PrecisionConfig
from megatron_soda.models import preset
from megatron_soda.models.context_parallel import chunk_positions
from megatron_soda.models.gpt import build_model_chunk
from megatron_soda.models.init import initialize_parameters
from megatron_soda.training.data import make_batch
from megatron_soda.training.model_setup import transformer_config

EOD, VOCAB, Z = 7, 256, 1e-2  # z large enough that the lse gradient shows
TOL = dict(atol=1e-5, rtol=1e-5)


def documents_raw(seq: int) -> dict:
    """Three rows: documents across the chunk boundaries (seq/4, seq/2, 3seq/4) and across flex's
    128-blocks, a one-token document, EOS first and last; one row without EOS; loss-mask zeros."""
    g = torch.Generator().manual_seed(seq)
    tokens = torch.randint(8, VOCAB, (3, seq + 1), generator=g)
    q = seq // 4
    tokens[0, [5, 6, q - 1, q + 3, 2 * q, 2 * q + 1, 3 * q - 2, seq - 1]] = EOD
    tokens[2, [0, 127, 128, 129, seq - 3]] = EOD
    mask = (torch.rand(3, seq, generator=g) > 0.2).float()
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask}


def build(cp: int, seq: int, recompute: bool):
    cfg = preset("tiny").with_overrides(vocab_size=VOCAB, seq_length=seq)
    precision = PrecisionConfig(attention_backend="flex",
                                **(dict(recompute_granularity="full", recompute_method="uniform",
                                        recompute_num_layers=1) if recompute else {}))
    tc = transformer_config(cfg, ParallelConfig(device="cpu", context_parallel_size=cp), precision)
    model = build_model_chunk(cfg, tc, False, True, True, attention="flex")
    initialize_parameters([model], 3, cfg)
    return model


def run(model, raw: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(per-token [2, b, s] output, loss sum, token count, gradients of the loss sum)."""
    batch = make_batch(raw, EOD, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                       eod_mask_loss=False, packed=False, attention="flex")
    out = model(**batch.model_kwargs())
    loss = ((out[0] + Z * out[1].square()) * batch.loss_mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), loss.detach(), batch.loss_mask.sum(), grads


def initialize(cp: int) -> None:
    parallel_state.initialize_model_parallel(1, 1, context_parallel_size=cp)
    model_parallel_cuda_manual_seed(1)


def check(seq: int, recompute: bool) -> None:
    raw = documents_raw(seq)
    initialize(1)
    ref_out, ref_loss, ref_tokens, ref_grads = run(build(1, seq, recompute), raw)
    parallel_state.destroy_model_parallel()

    initialize(2)
    rank, group = parallel_state.get_context_parallel_rank(), parallel_state.get_context_parallel_group()
    out, loss, tokens, grads = run(build(2, seq, recompute), raw)
    torch.testing.assert_close(out, ref_out[..., chunk_positions(seq, rank, 2)], **TOL)
    sums = torch.stack([loss, tokens])
    torch.distributed.all_reduce(sums, group=group)
    assert sums[1] == ref_tokens, (sums, ref_tokens)
    torch.testing.assert_close(sums[0] / sums[1], ref_loss / ref_tokens, **TOL)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.distributed.all_reduce(g, group=group)
        torch.testing.assert_close(g / sums[1], ref_grads[name] / ref_tokens, **TOL,
                                   msg=lambda m, n=name: f"{n}: {m}")
    parallel_state.destroy_model_parallel()
    print(f"rank {rank} seq={seq} recompute={recompute}: ok", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    compat.enable()
    for seq, recompute in ((256, True), (512, False)):
        check(seq, recompute)
    torch.distributed.destroy_process_group()
    compat.disable()


if __name__ == "__main__":
    main()
