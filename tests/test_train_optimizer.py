"""Optimizer and schedule as SODA trains: Adam(0.98, 0.98), weight decay 0.033 except on norms and
the input embedding, clip 1.0, WSD or cosine schedule."""

from __future__ import annotations

import pytest
from helpers_train import SingleProcessMegatron
from test_train_flags import INTERFACE

from megatron_soda.config.cli import parse_argv
from megatron_soda.training import model_setup


@pytest.fixture(scope="module")
def built():
    config = parse_argv(INTERFACE)
    arch = config.model.architecture_for(vocab_size=1000)
    with SingleProcessMegatron():
        tc = model_setup.transformer_config(arch, config.parallel, config.precision)
        model = model_setup.build_model(config, arch, tc)
        optimizer = model_setup.build_optimizer(config, model, lr=1e-3)
        yield config, model, optimizer


def test_weight_decay_skips_norms_and_the_input_embedding(built):
    config, model, optimizer = built
    names = {id(p): n for n, p in model[0].named_parameters()}
    scheduler = model_setup.build_scheduler(config.optim, optimizer, lr=1e-3)
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
    assert inner.defaults["betas"] == (0.98, 0.98) and inner.defaults["eps"] == 1e-16
    assert optimizer.config.clip_grad == 1.0


@pytest.mark.parametrize("style", ["WSD", "cosine"])
def test_schedules(built, style):
    _, _, optimizer = built
    config = parse_argv(INTERFACE + ["--train-iters", "100", "--lr-decay-style", style])
    scheduler = model_setup.build_scheduler(config.optim, optimizer, lr=1e-3)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(1)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-4) and lrs[10] == pytest.approx(1e-3)  # 10% warmup
    if style == "WSD":
        assert lrs[80] == pytest.approx(1e-3) and lrs[90] == pytest.approx(5e-4) and lrs[100] == 0.0
    else:
        assert lrs[55] == pytest.approx(5e-4) and lrs[100] == pytest.approx(0.0)
