"""The SODA model on megatron-core: presets, architecture, loss, padded vocabulary."""

from __future__ import annotations

import pytest
import torch
from helpers_train import SingleProcessMegatron, build_tiny_model

from megatron_soda.models import PRESETS, SodaModelConfig, paper_learning_rate
from megatron_soda.scaling.flops import model_shape, param_counts

LLAMA3_SODA_VOCAB = 144_644  # SODA_SPEC.md section 2


@pytest.fixture(scope="module")
def megatron():
    with SingleProcessMegatron() as m:
        yield m


@pytest.mark.parametrize(
    "name,shape,billions",
    [
        ("135m", (512, 15, 8, 8, 64, 1792), 0.135),
        ("600m", (1024, 28, 16, 8, 128, 3072), 0.600),
        ("1.7b", (2048, 28, 16, 8, 128, 6144), 1.7),
        ("4b", (2560, 36, 32, 8, 128, 9728), 4.0),
    ],
)
def test_presets_have_the_papers_shapes_and_sizes(name, shape, billions):
    cfg = PRESETS[name].with_overrides(vocab_size=LLAMA3_SODA_VOCAB)
    got = (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels,
           cfg.ffn_hidden_size)
    assert got == shape
    # size names count parameters without the input embedding (SODA_SPEC.md section 4)
    assert param_counts(model_shape(cfg))["soda"] == pytest.approx(billions * 1e9, rel=0.05)


def test_padded_vocab_is_the_same_for_every_tensor_parallel_size():
    cfg = PRESETS["600m"].with_overrides(vocab_size=LLAMA3_SODA_VOCAB)
    assert cfg.padded_vocab_size % 128 == 0 and 0 <= cfg.padded_vocab_size - LLAMA3_SODA_VOCAB < 128
    for tp in (1, 2, 4, 8):
        cfg.check_tensor_parallel(tp)
    with pytest.raises(ValueError, match="--tensor-model-parallel-size 3 does not divide --num-attention-heads 16"):
        cfg.check_tensor_parallel(3)


def test_paper_learning_rate():
    assert paper_learning_rate(512, 1024) == pytest.approx(4.24e-3, rel=0.01)
    assert paper_learning_rate(512, 2560) == pytest.approx(2.68e-3, rel=0.01)


def test_config_rejects_heads_not_multiple_of_groups():
    with pytest.raises(ValueError, match="multiple of num_query_groups"):
        SodaModelConfig(num_layers=2, hidden_size=64, num_attention_heads=6, num_query_groups=4,
                        kv_channels=16, ffn_hidden_size=128)


def test_tiny_model_is_a_qwen3_block_stack(megatron):
    model, cfg = build_tiny_model(vocab_size=1000)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == param_counts(model_shape(cfg))["total"]
    assert not any(n.endswith("bias") for n in params)
    assert model.embedding.word_embeddings.weight is not model.output_layer.weight  # untied
    assert "decoder.layers.0.self_attention.q_layernorm.weight" in params  # QK-norm
    assert isinstance(model.decoder.final_layernorm, torch.nn.RMSNorm)
    assert model.decoder.layers[0].mlp.linear_fc1.weight.shape[0] == 2 * cfg.ffn_hidden_size  # SwiGLU


def test_checkpoint_keys_are_transformer_engine_names(megatron):
    """The local spec saves under TE's fused names, so checkpoints move between specs."""
    model, _ = build_tiny_model(vocab_size=1000)
    keys = {v.key for v in model.sharded_state_dict().values() if hasattr(v, "key")}
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys
    assert "decoder.layers.mlp.linear_fc1.layer_norm_weight" in keys
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in keys)


def test_cross_entropy_and_lse_match_a_reference_on_the_unpadded_vocab(megatron):
    from megatron_soda.models.loss import cross_entropy_and_lse

    torch.manual_seed(0)
    vocab, padded = 90, 128
    logits = torch.randn(5, 3, padded) * 3
    target = torch.randint(0, vocab, (5, 3))
    w_ce, w_z = torch.rand(5, 3), torch.rand(5, 3)

    mine = logits.clone().requires_grad_(True)
    ce, lse = cross_entropy_and_lse(mine.clone(), target, vocab)
    ((ce * w_ce).sum() + (lse.square() * w_z).sum()).backward()

    ref = logits.clone().requires_grad_(True)
    real = ref[..., :vocab]
    ref_ce = torch.nn.functional.cross_entropy(real.reshape(-1, vocab), target.reshape(-1), reduction="none").view(5, 3)
    ref_lse = torch.logsumexp(real, dim=-1)
    ((ref_ce * w_ce).sum() + (ref_lse.square() * w_z).sum()).backward()

    torch.testing.assert_close(ce, ref_ce.detach())
    torch.testing.assert_close(lse, ref_lse.detach())
    torch.testing.assert_close(mine.grad, ref.grad)
    assert torch.all(mine.grad[..., vocab:] == 0)  # padded rows get no probability, no gradient


def test_padded_vocab_rows_are_never_predicted(megatron):
    model, cfg = build_tiny_model(vocab_size=1000)
    assert cfg.padded_vocab_size == 1024
    tokens = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(16, 16, dtype=torch.bool).triu(1).expand(2, 1, 16, 16)
    with torch.no_grad():
        logits = model(tokens, torch.arange(16).expand(2, 16), mask)
    assert logits.shape[-1] == 1024
    assert torch.isneginf(logits[..., 1000:]).all()
    assert torch.isfinite(logits[..., :1000]).all()
