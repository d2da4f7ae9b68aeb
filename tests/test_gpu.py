"""The torch-native GPU path on a real GPU (skipped without CUDA; run by benchmarks/gpu_check.sh):
the compiled FlexAttention kernel and SDPA against megatron's local attention, the chunked head
against the materialised logits (values and peak memory), the compiled head (inductor, Triton)
against eager, and the batched GPU codec path against the CPU codec."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EOD = 2
VOCAB = 256
SEQ = 512


@pytest.fixture(scope="module")
def cuda_megatron():
    """megatron's parallel state (TP=PP=1) over NCCL in this process, on GPU 0."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    torch.cuda.set_device(0)
    store = tempfile.NamedTemporaryFile(delete=False)
    torch.distributed.init_process_group("nccl", init_method=f"file://{store.name}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(1)
    yield
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    os.unlink(store.name)


def build(backend: str):
    from megatron_soda.config import ParallelConfig, PrecisionConfig
    from megatron_soda.models import preset
    from megatron_soda.models.gpt import build_model_chunk
    from megatron_soda.models.init import initialize_parameters
    from megatron_soda.training.model_setup import transformer_config

    cfg = preset("tiny").with_overrides(vocab_size=VOCAB, seq_length=SEQ)
    tc = transformer_config(cfg, ParallelConfig(device="cuda"), PrecisionConfig(attention_backend=backend))
    model = build_model_chunk(cfg, tc, False, True, True, attention=backend)
    initialize_parameters([model], 3, cfg)
    return model.cuda()


def documents_raw() -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(8, VOCAB, (3, SEQ + 1), generator=g)
    tokens[0, [5, 6, 40, 41, 42, 130, 300, SEQ - 1]] = EOD
    tokens[2, [0, 127, 128, 129, 400]] = EOD
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(3, SEQ)}


def loss_and_grads(model, backend: str, documents: bool) -> tuple[torch.Tensor, dict]:
    from megatron_soda.training.data import make_batch

    batch = make_batch(documents_raw(), EOD, torch.device("cuda"), reset_attention_mask=documents,
                       reset_position_ids=documents, eod_mask_loss=False, packed=False, attention=backend)
    model.zero_grad(set_to_none=True)
    out = model(**batch.model_kwargs())
    loss = (out[0] * batch.loss_mask).sum() / batch.loss_mask.sum() + 1e-4 * (out[1] ** 2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend,documents", [("flex", True), ("flex", False), ("sdpa", False)])
def test_torch_kernels_match_local_attention(cuda_megatron, backend, documents):
    torch.backends.cuda.matmul.allow_tf32 = False
    want = loss_and_grads(build("local"), "local", documents)
    got = loss_and_grads(build(backend), backend, documents)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    for name, g in want[1].items():  # fp32; the kernels sum in another order than the dense path
        torch.testing.assert_close(got[1][name], g, rtol=1e-3, atol=1e-3 * max(1.0, g.abs().max().item()),
                                   msg=lambda m, n=name: f"{n}: {m}")


def _head_inputs(tokens: int, hidden: int, vocab: int, padded: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, 1, hidden, device="cuda", generator=g, dtype=torch.bfloat16)
    w = (torch.randn(padded, hidden, device="cuda", generator=g) / hidden**0.5).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (1, tokens), device="cuda", generator=g)
    return x.requires_grad_(), w.requires_grad_(), labels


def _materialised(x, w, labels, vocab):
    from megatron_soda.models.loss import cross_entropy_and_lse, mask_padded_vocab_

    logits = torch.matmul(x, w.t())  # [s, b, V], as the output layer
    mask_padded_vocab_(logits, vocab, 0)
    ce, lse = cross_entropy_and_lse(logits, labels.t(), vocab)
    return torch.stack((ce, lse)).transpose(1, 2)


def test_chunked_head_matches_and_saves_memory(cuda_megatron):
    """SODA's vocabulary at 135M's width, 8192 tokens, bf16: same ce/lse/grads as the logits path,
    and less than half its peak memory (the activation part the chunking removes)."""
    from megatron_soda.models.chunked_head import chunked_head_ce_lse

    vocab, padded, hidden, tokens = 144_644, 144_768, 512, 8192
    results, peaks = [], []
    for chunk in (0, 1024):
        x, w, labels = _head_inputs(tokens, hidden, vocab, padded)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = (chunked_head_ce_lse(x, w, labels, vocab, chunk) if chunk
               else _materialised(x, w, labels, vocab))
        (out[0].sum() + 1e-4 * out[1].square().sum()).backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        results.append((out.detach().float(), x.grad.float(), w.grad.float()))
        del x, w, out
    (ref_out, ref_gx, ref_gw), (out, gx, gw) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-3, atol=2e-2)
    for got, want in ((gx, ref_gx), (gw, ref_gw)):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * want.abs().max().item())
    print(f"head peak over inputs: materialised {peaks[0] / 2**20:.0f} MiB, chunked {peaks[1] / 2**20:.0f} MiB")
    assert peaks[1] * 2 < peaks[0]


def test_compiled_head_matches_eager(cuda_megatron):
    from megatron_soda.models.chunked_head import chunked_head_ce_lse

    vocab, padded, hidden, tokens = 5000, 5120, 256, 2048
    runs = []
    for backend in (None, "inductor"):
        x, w, labels = _head_inputs(tokens, hidden, vocab, padded)
        out = chunked_head_ce_lse(x, w, labels, vocab, 512, compile_backend=backend)
        (out[0].sum() + 1e-4 * out[1].square().sum()).backward()
        runs.append((out.detach().float(), x.grad.float(), w.grad.float()))
    for got, want in zip(runs[1], runs[0]):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * max(1.0, want.abs().max().item()))
