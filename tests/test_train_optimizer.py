"""Optimizer and schedule as SODA trains: Cautious Adam with AdamC weight decay (or, with
--optimizer adam, megatron's AdamW) with betas 0.98/0.98, eps 1e-16, weight decay 0.033 except on
norms and the input embedding, clip 1.0, WSD or cosine schedule; and the fine-tuning recipe's flags."""

from __future__ import annotations

import pytest
import torch
from helpers_train import SingleProcessMegatron
from test_train_flags import INTERFACE

from megatron_soda.config.cli import parse_argv
from megatron_soda.optim import CautiousAdamC
from megatron_soda.training import model_setup
from megatron_soda.training.optimizer import build_optimizer, build_scheduler


@pytest.fixture(scope="module", params=["cautious", "adam"])
def built(request):
    config = parse_argv(INTERFACE + ["--optimizer", request.param])
    arch = config.model.architecture_for(vocab_size=1000)
    with SingleProcessMegatron():
        tc = model_setup.transformer_config(arch, config.parallel, config.precision)
        model = model_setup.build_model(config, arch, tc)
        optimizer = build_optimizer(config, model, lr=1e-3)
        yield config, model, optimizer


def test_weight_decay_skips_norms_and_the_input_embedding(built):
    config, model, optimizer = built
    names = {id(p): n for n, p in model[0].named_parameters()}
    scheduler = build_scheduler(config.optim, optimizer, lr=1e-3)
    scheduler.step(1)
    decay = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decay[names[id(p)]] = group["weight_decay"]
    assert len(decay) == len(names)
    for name, wd in decay.items():
        no_decay = "norm" in name or "word_embeddings" in name
        assert wd == (0.0 if no_decay else 0.033), name
    assert decay["module.output_layer.weight"] == 0.033  # the untied head is a linear layer
    inner = optimizer.chained_optimizers[0].optimizer
    assert type(inner) is (CautiousAdamC if config.optim.optimizer == "cautious" else torch.optim.AdamW)
    assert inner.defaults["betas"] == (0.98, 0.98) and inner.defaults["eps"] == 1e-16
    assert all(g["max_lr"] == 1e-3 for g in inner.param_groups)  # the peak AdamC divides by
    assert optimizer.config.clip_grad == 1.0


def test_cautious_statistics_are_levanters_arrays(built):
    """One statistic per projection type over all layers, q/k/v and gate/up apart, the padded
    vocabulary rows left out."""
    config, model, optimizer = built
    inner = optimizer.chained_optimizers[0].optimizer
    if config.optim.optimizer == "adam":
        assert not hasattr(inner, "statistics")
        return
    stats = inner.statistics
    layer = "decoder.layers.*."
    assert set(stats.names) == {
        "embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight",
        *(layer + "self_attention.linear_qkv.weight:" + x for x in "qkv"),
        *(layer + "mlp.linear_fc1.weight:" + x for x in ("gate", "up")),
        *(layer + n for n in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight",
                              "self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight",
                              "input_layernorm.weight", "pre_mlp_layernorm.weight")),  # local spec
    }
    counted = sum(e - s for runs in stats.runs.values() for s, e, g in runs if g >= 0)
    total = sum(p.numel() for p in model[0].parameters())
    padded_rows = 1024 - 1000  # embedding and head
    assert counted == total - 2 * padded_rows * 64


@pytest.mark.parametrize("lr", [1e-3, 5e-4])
def test_weight_decay_is_adamc_through_megatron(built, lr):
    """With zero gradients a step only decays: by lr * wd * lr / peak (cautious, AdamC) or lr * wd
    (adam), on the decayed parameters only."""
    config, model, optimizer = built
    for chunk in model:
        chunk.zero_grad_buffer()
    for group in optimizer.param_groups:
        group["lr"] = lr
    before = {n: p.detach().clone() for n, p in model[0].named_parameters()}
    optimizer.step()
    factor = lr * 0.033 * (lr / 1e-3 if config.optim.optimizer == "cautious" else 1.0)
    for n, p in model[0].named_parameters():
        decayed = not ("norm" in n or "word_embeddings" in n)
        want = before[n] * (1 - factor) if decayed else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0, msg=n)


@pytest.mark.parametrize("style", ["WSD", "cosine"])
def test_schedules(built, style):
    _, _, optimizer = built
    config = parse_argv(INTERFACE + ["--train-iters", "100", "--lr-decay-style", style])
    scheduler = build_scheduler(config.optim, optimizer, lr=1e-3)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(1)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-4) and lrs[10] == pytest.approx(1e-3)  # 10% warmup
    if style == "WSD":
        assert lrs[80] == pytest.approx(1e-3) and lrs[90] == pytest.approx(5e-4) and lrs[100] == 0.0
    else:
        assert lrs[55] == pytest.approx(5e-4) and lrs[100] == pytest.approx(0.0)


FINETUNE = ["--optimizer", "cautious", "--adam-beta1", "0.9", "--adam-beta2", "0.999", "--adam-eps", "1e-8",
            "--weight-decay", "0.01", "--lr-decay-style", "cosine", "--lr-warmup-fraction", "0.03",
            "--min-lr-ratio", "0.1", "--train-iters", "200"]


def test_the_fine_tuning_recipe_is_expressible(built):
    """SODA_SPEC.md section 7: Cautious 0.9/0.999, eps 1e-8, wd 0.01, cosine to 0.1x with 3% warmup
    (marin experiments/audio/audio_sft_cvss.py: min_lr_ratio=0.1, warmup=0.03)."""
    _, model, _ = built
    config = parse_argv(INTERFACE + FINETUNE)
    o = config.optim
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.weight_decay) == (0.9, 0.999, 1e-8, 0.01)
    assert o.lr_warmup_iters == 6 and o.min_lr is None and o.min_lr_for(2e-5) == pytest.approx(2e-6)
    optimizer = build_optimizer(config, model, lr=2e-5)  # megatron's param groups carry max/min LR
    assert all(g["max_lr"] == 2e-5 and g["min_lr"] == pytest.approx(2e-6) for g in optimizer.param_groups)
    scheduler = build_scheduler(o, optimizer, lr=2e-5)
    lrs = []
    for _ in range(201):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(1)
    assert lrs[0] == 0.0 and lrs[6] == pytest.approx(2e-5) and lrs[200] == pytest.approx(2e-6)
    assert lrs[103] == pytest.approx(2e-6 + 0.5 * (2e-5 - 2e-6))  # cosine midpoint


def test_min_lr_and_its_ratio_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        parse_argv(INTERFACE + ["--min-lr", "1e-5", "--min-lr-ratio", "0.1"])
    assert "give --min-lr or --min-lr-ratio, not both" in capsys.readouterr().err
    assert parse_argv(INTERFACE).optim.min_lr == 0.0 and parse_argv(INTERFACE).optim.optimizer == "cautious"
