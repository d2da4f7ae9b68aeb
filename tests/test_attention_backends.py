"""--attention-backend sdpa|flex (models/attention.py TorchCoreAttention) against megatron-core's
local DotProductAttention with dense masks: same loss and gradients (fp32, CPU) on causal and on
document-packed batches, the same checkpoint keys, and the config's choices and refusals.

FlexAttention on CPU: torch 2.13 refuses backward through ``flex_attention`` on CPU, so training
steps here run the flex higher-order op's eager reference (the same BlockMask and mask_mod on the
dense score matrix, see models/attention.py ``_flex``); no-grad forwards use the public API."""

from __future__ import annotations

import pytest
import torch
from helpers_train import SingleProcessMegatron

from megatron_soda.config import ConfigError, ParallelConfig, PrecisionConfig
from megatron_soda.models import attention, te
from megatron_soda.training.data import document_ids, make_batch

EOD = 7
VOCAB = 256
SEQ = 256


@pytest.fixture(scope="module")
def megatron(one_torch_thread):
    with SingleProcessMegatron() as m:
        yield m


def build(backend: str, recompute: bool = False):
    """The tiny model with ``backend``'s core attention, initialised from the same seed."""
    from megatron_soda.models import preset
    from megatron_soda.models.gpt import build_model_chunk
    from megatron_soda.models.init import initialize_parameters
    from megatron_soda.training.model_setup import transformer_config

    cfg = preset("tiny").with_overrides(vocab_size=VOCAB, seq_length=SEQ)
    precision = PrecisionConfig(attention_backend=backend,
                                **(dict(recompute_granularity="full", recompute_method="uniform",
                                        recompute_num_layers=1) if recompute else {}))
    tc = transformer_config(cfg, ParallelConfig(device="cpu"), precision)
    model = build_model_chunk(cfg, tc, False, True, True, attention=backend)
    initialize_parameters([model], 3, cfg)
    return model


def documents_raw() -> dict:
    """Three rows: several EOS incl. a one-token document (EOS right after EOS) and one ending the
    row; no EOS at all; EOS first (a one-token document at position 0) and across the 128-block."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(8, VOCAB, (3, SEQ + 1), generator=g)
    tokens[0, [5, 6, 40, 41, 42, 130, 200, SEQ - 1]] = EOD
    tokens[2, [0, 127, 128, 129]] = EOD
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(3, SEQ)}


def loss_and_grads(model, raw: dict, backend: str, documents: bool) -> tuple[torch.Tensor, dict]:
    batch = make_batch(raw, EOD, torch.device("cpu"), reset_attention_mask=documents, reset_position_ids=documents,
                       eod_mask_loss=False, packed=False, attention=backend)
    model.zero_grad(set_to_none=True)
    out = model(**batch.model_kwargs())  # [2, b, s]: per-token CE and log-sum-exp
    loss = (out[0] * batch.loss_mask).sum() / batch.loss_mask.sum() + 1e-4 * (out[1] ** 2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(got: tuple, want: tuple) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert got[1].keys() == want[1].keys()
    for name, g in want[1].items():
        torch.testing.assert_close(got[1][name], g, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_sdpa_and_flex_match_local_loss_and_gradients(megatron, documents):
    raw = documents_raw()
    want = loss_and_grads(build("local"), raw, "local", documents)
    assert_same(loss_and_grads(build("flex"), raw, "flex", documents), want)
    if not documents:
        assert_same(loss_and_grads(build("sdpa"), raw, "sdpa", documents), want)
    # the dense [b,1,s,s] mask of a local batch through TorchCoreAttention: SDPA with that mask
    assert_same(loss_and_grads(build("sdpa"), raw, "local", documents), want)


def test_document_masking_changes_the_loss(megatron):
    """The parity above is not vacuous: rows with EOS give another loss without document masking."""
    raw = documents_raw()
    model = build("flex")
    masked = loss_and_grads(model, raw, "flex", True)[0]
    batch = make_batch(raw, EOD, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                       eod_mask_loss=False, packed=False, attention="flex")
    assert batch.attention_mask.shape == (3, SEQ) and not batch.attention_mask.is_floating_point()
    batch.attention_mask = torch.zeros_like(batch.attention_mask)  # one document per row
    with torch.no_grad():
        out = model(**batch.model_kwargs())
    unmasked = (out[0] * batch.loss_mask).sum() / batch.loss_mask.sum() + 1e-4 * (out[1] ** 2).mean()
    assert abs(float(unmasked - masked)) > 1e-3


def test_flex_public_api_forward_matches_local(megatron):
    """No gradients: the public flex_attention (eager on CPU), not the higher-order op."""
    raw = documents_raw()
    outs = {}
    for backend in ("local", "flex"):
        model = build(backend).eval()
        batch = make_batch(raw, EOD, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                           eod_mask_loss=False, packed=False, attention=backend)
        with torch.no_grad():
            outs[backend] = model(**batch.model_kwargs())
    torch.testing.assert_close(outs["flex"], outs["local"], rtol=1e-5, atol=1e-5)


def test_flex_under_full_recompute_matches_local(megatron):
    """The document ids travel through megatron's activation checkpointing (save_for_backward)."""
    raw = documents_raw()
    want = loss_and_grads(build("local", recompute=True), raw, "local", True)
    assert_same(loss_and_grads(build("flex", recompute=True), raw, "flex", True), want)


def test_block_mask_is_built_once_per_micro_batch():
    doc = document_ids(documents_raw()["tokens"], EOD)
    first = attention.document_block_mask(doc)
    assert attention.document_block_mask(doc) is first
    assert attention.document_block_mask(doc.detach()) is first  # the recomputation's alias
    assert attention.document_block_mask(doc.clone()) is not first  # another micro-batch
    doc[1, 10:] += 1  # changed in place: rebuilt, and the new mask separates the new document
    second = attention.document_block_mask(doc)
    assert second is not first
    b, h, q, kv = torch.tensor(1), torch.tensor(0), torch.tensor(12), torch.tensor(3)
    assert not bool(second.mask_mod(b, h, q, kv)) and bool(second.mask_mod(b, h, q, q - 1))


def test_checkpoint_keys_and_shapes_are_the_local_specs(megatron):
    local, flex = build("local"), build("flex")
    shapes = {k: tuple(v.shape) for k, v in local.state_dict().items() if v is not None}
    assert {k: tuple(v.shape) for k, v in flex.state_dict().items() if v is not None} == shapes
    assert set(flex.sharded_state_dict().keys()) == set(local.sharded_state_dict().keys())
    with torch.no_grad():
        for p in local.parameters():
            p.add_(0.01 * torch.randn_like(p))
    flex.load_state_dict(local.state_dict(), strict=True)  # a local checkpoint loads into flex
    raw = documents_raw()
    assert_same(loss_and_grads(flex, raw, "flex", True), loss_and_grads(local, raw, "local", True))


# ---------------------------------------------------------------------- the flag
def resolved(backend: str, device: str, documents: bool = True, have_te: bool = False, **kw) -> PrecisionConfig:
    p = PrecisionConfig(attention_backend=backend, **kw)
    p.validate(ParallelConfig(device=device), documents)
    return p


@pytest.mark.parametrize("device,documents,have_te,want", [
    ("cpu", True, False, ("local", "local")),
    ("cuda", True, False, ("flex", "local")),
    ("cuda", False, False, ("sdpa", "local")),
    ("cuda", True, True, ("te", "transformer_engine")),
])
def test_auto_backend(monkeypatch, device, documents, have_te, want):
    monkeypatch.setattr(te, "te_available", lambda: have_te)
    p = resolved("auto", device, documents, bf16=device == "cuda")
    assert (p.attention_backend, p.transformer_impl) == want
    assert resolved(p.attention_backend, device, documents, transformer_impl=p.transformer_impl,
                    bf16=device == "cuda") == p  # idempotent (run_args.json)


def test_explicit_torch_backend_picks_the_local_spec_even_with_te(monkeypatch):
    monkeypatch.setattr(te, "te_available", lambda: True)
    assert resolved("flex", "cuda", bf16=True).transformer_impl == "local"
    with pytest.raises(ConfigError, match="runs on megatron-core's local spec"):
        resolved("flex", "cuda", transformer_impl="transformer_engine", bf16=True)


def test_refusals(monkeypatch):
    monkeypatch.setattr(te, "te_available", lambda: False)
    with pytest.raises(ConfigError, match="Transformer Engine is not installed"):
        resolved("te", "cuda")
    with pytest.raises(ConfigError, match="sdpa cannot mask documents"):
        resolved("sdpa", "cpu", documents=True)
    assert resolved("sdpa", "cpu", documents=False).attention_backend == "sdpa"
    monkeypatch.setattr(attention, "flex_available", lambda: False)
    with pytest.raises(ConfigError, match="no torch.nn.attention.flex_attention"):
        resolved("flex", "cpu")
    assert resolved("auto", "cuda").attention_backend == "local"  # no flex: the dense local path


def test_model_setup_maps_the_backend_to_megatrons_enum():
    from megatron.core.transformer.enums import AttnBackend

    from megatron_soda.models import preset
    from megatron_soda.training.model_setup import transformer_config

    cfg = preset("tiny").with_overrides(vocab_size=VOCAB)
    for backend in ("local", "sdpa", "flex"):
        tc = transformer_config(cfg, ParallelConfig(device="cpu"), PrecisionConfig(attention_backend=backend))
        assert tc.attention_backend == AttnBackend.local
