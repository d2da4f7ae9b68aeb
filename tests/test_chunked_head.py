"""The chunked output head (models/chunked_head.py) against the materialised-logits path.

Reference: megatron's output layer (a plain matmul at TP=1) + models/loss.py
``cross_entropy_and_lse``, plus torch.logsumexp over the unpadded vocabulary as an independent
recomputation.  fp32: only the order of float additions differs (per-chunk weight-gradient sums),
so everything agrees within 1e-5.  TP=2 (with and without sequence parallelism) runs in a
torchrun worker (tests/chunked_head_tp_worker.py) against plain torch on the whole weight."""

from __future__ import annotations

import os

import pytest
import torch
from helpers_train import SingleProcessMegatron, build_tiny_model, torchrun

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.model import ModelConfig
from megatron_soda.models.chunked_head import chunked_head_ce_lse
from megatron_soda.models.loss import cross_entropy_and_lse

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def megatron(one_torch_thread):
    with SingleProcessMegatron() as m:
        yield m


def _loss(out: torch.Tensor, mask: torch.Tensor, z: float) -> torch.Tensor:
    """training/step.py's loss on a [2, b, s] (ce, lse) tensor."""
    return ((out[0] + z * out[1].square()) * mask).sum()


def _inputs(s: int, b: int, h: int, padded: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(s, b, h, generator=gen)
    weight = torch.randn(padded, h, generator=gen) * 0.5
    labels = torch.randint(0, vocab, (b, s), generator=gen)
    mask = (torch.rand(b, s, generator=gen) > 0.3).float()  # loss-mask zeros
    return hidden, weight, labels, mask


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # 7 and 64 do not divide 3 * 29 = 87 tokens
def test_function_matches_full_logits(megatron, chunk):
    s, b, h, vocab, padded, z = 29, 3, 16, 250, 256, 0.3  # 6 padded rows; z large: grad_lse matters
    hidden, weight, labels, mask = _inputs(s, b, h, padded, vocab)

    ref_h, ref_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logits = torch.matmul(ref_h, ref_w.t())  # [s, b, V] as the output layer returns them
    ce, lse = cross_entropy_and_lse(logits, labels.t().contiguous(), vocab)
    ref = torch.stack((ce, lse)).transpose(1, 2)
    _loss(ref, mask, z).backward()

    h_, w_ = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out = chunked_head_ce_lse(h_, w_, labels, vocab, chunk)
    _loss(out, mask, z).backward()

    assert out.shape == (2, b, s)
    torch.testing.assert_close(out, ref.detach(), **TOL)
    plain = torch.einsum("sbh,vh->bsv", hidden, weight)[..., :vocab]
    torch.testing.assert_close(out[1], torch.logsumexp(plain, -1), **TOL)
    torch.testing.assert_close(h_.grad, ref_h.grad, **TOL)
    torch.testing.assert_close(w_.grad, ref_w.grad, **TOL)
    assert torch.all(w_.grad[vocab:] == 0)  # padded rows: no probability, no gradient
    assert torch.all(w_.grad[:vocab].abs().sum(-1) > 0)


def test_bf16_inputs_accumulate_in_fp32(megatron):
    s, b, h, vocab = 40, 2, 32, 500
    hidden, weight, labels, mask = _inputs(s, b, h, vocab, vocab, seed=1)
    hidden, weight = hidden.bfloat16(), weight.bfloat16()
    h_, w_ = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out = chunked_head_ce_lse(h_, w_, labels, vocab, 16)
    _loss(out, mask, 1e-4).backward()
    assert out.dtype == torch.float32 and h_.grad.dtype == w_.grad.dtype == torch.bfloat16
    ref_h, ref_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ref = torch.matmul(ref_h, ref_w.t())  # the output layer's bf16 logits (fp32 inside the loss)
    ce, lse = cross_entropy_and_lse(ref, labels.t().contiguous(), vocab)
    ref = torch.stack((ce, lse)).transpose(1, 2)
    _loss(ref, mask, 1e-4).backward()
    torch.testing.assert_close(out, ref.detach(), **TOL)
    # 5 chunks' weight gradients summed in fp32 vs one bf16 GEMM: bf16 rounding apart
    for mine, theirs in ((w_.grad, ref_w.grad), (h_.grad, ref_h.grad)):
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=2e-2,
                                   atol=2e-2 * theirs.float().abs().max().item())


def test_model_loss_and_gradients_match_megatrons_output_layer(megatron):
    model, cfg = build_tiny_model(vocab_size=1000)  # padded to 1024
    b, s = 2, 16
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 1000, (b, s), generator=gen)
    labels = torch.randint(0, 1000, (b, s), generator=gen)
    mask = (torch.rand(b, s, generator=gen) > 0.25).float()
    attn = torch.ones(s, s, dtype=torch.bool).triu(1).expand(b, 1, s, s)
    pos = torch.arange(s).expand(b, s)
    results, head_calls = [], []
    model.output_layer.register_forward_hook(lambda *_: head_calls.append(1))
    for chunk in (0, 5):
        model.head_chunk_tokens = chunk
        model.zero_grad()
        out = model(tokens, pos, attn, labels=labels)
        _loss(out, mask, 0.3).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(head_calls) == 1  # the chunked run never called megatron's output layer
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, **TOL)
    assert ref_grads.keys() == grads.keys()
    for name, ref_grad in ref_grads.items():
        # 1e-5 of the tensor's scale: the embedding gradient reaches ~1e2 (measured difference
        # 1e-4 there, ~1e-6 of its scale; every other tensor's within 4e-6 absolute)
        atol = 1e-5 * max(1.0, ref_grad.abs().max().item())
        torch.testing.assert_close(grads[name], ref_grad, atol=atol, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
    model.head_chunk_tokens = 5
    with torch.no_grad():  # without labels: logits, padded rows masked, as before
        logits = model(tokens, pos, attn)
    assert logits.shape == (b, s, 1024) and torch.isneginf(logits[..., 1000:]).all()


def test_head_chunk_tokens_is_validated():
    ModelConfig(model_size="tiny", tokenizer="t", head_chunk_tokens=0).validate()
    with pytest.raises(ConfigError, match="--head-chunk-tokens must be >= 0"):
        ModelConfig(model_size="tiny", tokenizer="t", head_chunk_tokens=-1).validate()


@pytest.mark.torchrun
def test_tensor_parallel_and_sequence_parallel_parity():
    proc = torchrun(2, [], timeout=180, script=os.path.join("tests", "chunked_head_tp_worker.py"))
    assert proc.stdout.count(": ok") == 6, proc.stdout
