"""``--torch-compile mlp,norm,head``: the compiled model computes what the eager one does, keeps
its checkpoint keys, and really runs compiled graphs.  The CPU tests use the ``aot_eager``
backend (dynamo tracing + AOT autograd, no C++ code generation: inductor costs ~20 s here)."""

from __future__ import annotations

import pytest
import torch
from helpers_train import SingleProcessMegatron
from test_train_flags import INTERFACE

from megatron_soda.config.cli import parse_argv
from megatron_soda.config.errors import ConfigError
from megatron_soda.models.compile import parse_compile_targets
from megatron_soda.training import model_setup

B, S, VOCAB = 2, 24, 1000


def test_targets_are_parsed_and_checked():
    assert parse_compile_targets("") == ()
    assert parse_compile_targets("head, mlp") == ("mlp", "head")
    assert parse_compile_targets("all") == ("mlp", "norm", "head")
    with pytest.raises(ValueError, match="unknown target.*layer"):
        parse_compile_targets("mlp,layer")
    with pytest.raises(SystemExit):
        parse_argv(INTERFACE + ["--torch-compile", "attention"])
    with pytest.raises(SystemExit):  # the chunked head is what "head" compiles
        parse_argv(INTERFACE + ["--torch-compile", "head"])
    with pytest.raises(ConfigError, match="needs --head-chunk-tokens"):
        from megatron_soda.config.model import ModelConfig

        ModelConfig(model_size="tiny", tokenizer="t", torch_compile="head").validate()


def _batch():
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (B, S), generator=gen)
    labels = torch.randint(0, VOCAB, (B, S), generator=gen)
    mask = (torch.rand(B, S, generator=gen) > 0.2).float()
    attn = torch.ones(S, S, dtype=torch.bool).triu(1).expand(B, 1, S, S)
    return tokens, labels, mask, attn, torch.arange(S).expand(B, S)


def _loss_and_grads(ddp, batch):
    """Per-token (ce, lse) and every parameter's gradient (megatron's DDP keeps it in main_grad)."""
    tokens, labels, mask, attn, pos = batch
    ddp.zero_grad_buffer()
    out = ddp(tokens, pos, attn, labels=labels)
    ce, lse = out[0], out[1]  # [2, b, s]: ce and lse per token
    loss = ((ce + 1e-2 * lse.square()) * mask).sum() / mask.sum()
    loss.backward()
    return out.detach(), {n: p.main_grad.clone() for n, p in ddp.module.named_parameters()}


def test_compiled_model_matches_eager(one_torch_thread):
    import torch._dynamo

    flags = INTERFACE + ["--head-chunk-tokens", "7"]  # 48 tokens: 7 chunks, the last of 6
    batch = _batch()
    results = {}
    for compiled in (False, True):
        extra = ["--torch-compile", "all", "--torch-compile-backend", "aot_eager"] if compiled else []
        config = parse_argv(flags + extra)
        arch = config.model.architecture_for(vocab_size=VOCAB)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        with SingleProcessMegatron():
            tc = model_setup.transformer_config(arch, config.parallel, config.precision)
            ddp = model_setup.build_model(config, arch, tc)[0]
            model = ddp.module
            keys = list(model.state_dict())
            results[compiled] = (keys, *_loss_and_grads(ddp, batch))
            if compiled:
                mlps = [layer.mlp for layer in model.decoder.layers]
                norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
                assert all(m._compiled_call_impl is not None for m in mlps + norms)
                assert model.head_compile_backend == "aot_eager"
                # graphs were really captured: the MLPs, norms and the head's forward and backward
                assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 4
    (keys, ref, ref_grads), (keys_c, out, grads) = results[False], results[True]
    assert keys_c == keys and not any("_orig_mod" in k for k in keys_c)  # checkpoints unchanged
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, ref_grad in ref_grads.items():
        atol = 1e-5 * max(1.0, ref_grad.abs().max().item())
        torch.testing.assert_close(grads[name], ref_grad, atol=atol, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_compiled_head_does_not_recompile_per_tail_shape(one_torch_thread):
    """Each step's last chunk and task evaluation's buckets give new token counts: after the first
    recompile the token dimension is dynamic, so dynamo compiles a bounded number of graphs."""
    import torch._dynamo

    from megatron_soda.models.chunked_head import chunked_head_ce_lse

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 16, generator=gen).requires_grad_(True)
    for tokens in (16, 13, 21, 29, 35, 42, 50, 59, 61, 70):  # chunks of 8: tails 5, 5, 5, 3, 2, 2, 3, 5, 6
        hidden = torch.randn(tokens, 1, 16, generator=gen).requires_grad_(True)
        labels = torch.randint(0, 60, (1, tokens), generator=gen)
        out = chunked_head_ce_lse(hidden, weight, labels, 60, 8, compile_backend="aot_eager")
        (out[0].sum() + out[1].sum()).backward()
        want = torch.logsumexp((hidden.detach()[:, 0] @ weight.detach().t())[:, :60], dim=-1)
        torch.testing.assert_close(out[1, 0], want, rtol=1e-5, atol=1e-5)
    # forward and backward function: a static and a dynamic graph each
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4
