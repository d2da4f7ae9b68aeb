"""FLOP and parameter counts against values worked out by hand from the formula's terms.

F = L * (2*m*d*ffn + 2*d*(h*hd + 2*kv*hd) + 2*(h*hd)*d + 4*s*h*hd + 3*s*h) + 2*d*V
"""

from __future__ import annotations

import pytest

from megatron_soda.scaling.flops import (
    ModelShape,
    compare_flop_conventions,
    flops_breakdown,
    forward_flops_per_token,
    kaplan_flops_per_token,
    paper_training_flops_per_token,
    param_counts,
    run_flop_counts,
    training_flops_per_token,
)

ANCHOR = ModelShape(768, 8, 6, 6, 128, 3072, 144644, 4096)  # SODA's worked anchor at 3e18
SODA_600M = ModelShape(1024, 28, 16, 8, 128, 3072, 144644, 4096)  # GQA: 16 heads, 8 kv heads
PLAIN_MLP = ModelShape(256, 2, 4, 2, 64, 1024, 1000, 256, swiglu=False, qk_norm=False)


def test_anchor_forward_flops_by_hand():
    # per layer, d=768 h=kv=6 hd=128 ffn=3072 s=4096, SwiGLU (m=3)
    mlp = 2 * 3 * 768 * 3072  # 14,155,776
    qkv = 2 * 768 * (6 * 128 + 2 * 6 * 128)  # 3,538,944
    out = 2 * (6 * 128) * 768  # 1,179,648
    attn = 4 * 4096 * 6 * 128  # 12,582,912
    mask = 3 * 4096 * 6  # 73,728
    assert (mlp, qkv, out, attn, mask) == (14_155_776, 3_538_944, 1_179_648, 12_582_912, 73_728)
    per_layer = 31_531_008
    assert mlp + qkv + out + attn + mask == per_layer
    head = 2 * 768 * 144644  # 222,173,184
    expected = 8 * per_layer + head
    assert expected == 474_421_248
    assert forward_flops_per_token(ANCHOR) == expected
    assert training_flops_per_token(ANCHOR) == 3 * expected
    # the anchor's step count: round(3e18 / (3 F * 8 * 4096)) = 64,326
    assert round(3e18 / (3 * expected * 8 * 4096)) == 64_326


def test_gqa_shape_forward_flops_by_hand():
    # SODA 600M: d=1024 L=28 h=16 kv=8 hd=128 ffn=3072
    mlp = 18_874_368  # 2*3*1024*3072
    qkv = 8_388_608  # 2*1024*(16*128 + 2*8*128) = 2*1024*4096
    out = 4_194_304  # 2*2048*1024
    attn = 33_554_432  # 4*4096*16*128
    mask = 196_608  # 3*4096*16
    head = 296_230_912  # 2*1024*144644
    expected = 28 * (mlp + qkv + out + attn + mask) + head
    assert expected == 2_122_063_872
    assert forward_flops_per_token(SODA_600M) == expected


def test_non_swiglu_and_breakdown_by_hand():
    # m=2: d=256 L=2 h=4 kv=2 hd=64 ffn=1024 V=1000 s=256
    terms = {
        "mlp": 2 * (2 * 2 * 256 * 1024),  # 2 layers x 1,048,576
        "qkv_proj": 2 * (2 * 256 * (4 * 64 + 2 * 2 * 64)),  # 2 x 262,144
        "out_proj": 2 * (2 * 256 * 256),  # 2 x 131,072
        "attn_logits_values": 2 * (4 * 256 * 4 * 64),  # 2 x 262,144
        "attn_mask_softmax": 2 * (3 * 256 * 4),  # 2 x 3,072
        "output_head": 2 * 256 * 1000,  # 512,000
    }
    assert flops_breakdown(PLAIN_MLP) == pytest.approx(terms)
    # per layer 1,048,576 + 262,144 + 131,072 + 262,144 + 3,072 = 1,707,008
    assert forward_flops_per_token(PLAIN_MLP) == 2 * 1_707_008 + 512_000 == 3_926_016
    causal = forward_flops_per_token(PLAIN_MLP, attention="causal")
    assert causal == 3_926_016 - (262_144 + 3_072)  # half of the two layers' s-terms
    assert forward_flops_per_token(PLAIN_MLP, attention="none") == 3_926_016 - 2 * (262_144 + 3_072)
    with pytest.raises(ValueError):
        forward_flops_per_token(PLAIN_MLP, attention="sliding")


def test_param_counts_by_hand():
    # anchor: per layer attn 4*768^2 + mlp 3*768*3072 + norms 2*768 + qk-norm 2*128
    per_layer = 4 * 768 * 768 + 3 * 768 * 3072 + 2 * 768 + 2 * 128  # 9,439,488
    emb = 144644 * 768  # 111,086,592 (input) and again for the untied head
    total = 8 * per_layer + 768 + 2 * emb
    assert total == 297_685_760
    p = param_counts(ANCHOR)
    assert p["total"] == total
    assert p["soda"] == total - emb == 186_599_168
    assert p["non_embedding"] == total - 2 * emb
    # SODA's "600M" name counts all but the input embedding
    assert param_counts(SODA_600M)["soda"] == 588_582_912


def test_kaplan_6n_vs_levanter():
    assert kaplan_flops_per_token(ANCHOR, include_embeddings=True) == 6 * 297_685_760
    cmp = compare_flop_conventions(ANCHOR)
    # the spec's "6ND overestimates these embedding-heavy small models by about 25%"
    assert cmp["ratio_6n_total"] == pytest.approx(1.2546, abs=1e-3)
    assert cmp["ratio_6n_non_embedding"] < 1


# ---- the paper's convention (Levanter, head dim = d / h) vs the true count (kv_channels) -------

SODA_4B = ModelShape(2560, 36, 32, 8, 128, 9728, 144644, 4096)


def _levanter(d, ffn, layers, kv, h, s, v):
    """Levanter's lm_flops_per_token written out term by term from its source
    (stanford-crfm/levanter src/levanter/utils/flop_utils.py @9263f81e L10-38, glu=True, one
    expert): head dim d/h, qkv 2d(h hd + 2 kv hd), out 2d^2, attention (2 s^2 h hd + 3 s^2 h +
    2 s^2 h hd) / s, head 2dV."""
    hd = d / h
    per_layer = 2 * 3 * d * ffn + 2 * d * (h * hd + 2 * kv * hd) + 2 * d * d
    per_layer += (2 * s * s * h * hd + 3 * s * s * h + 2 * s * s * hd * h) / s
    return layers * per_layer + 2 * d * v


def test_paper_convention_is_levanters_count():
    for shape in (
        SODA_600M,
        SODA_4B,
        ANCHOR,
        ModelShape(1000, 3, 3, 1, 128, 2816, 5000, 512),
    ):  # d/h not whole
        args = (shape.hidden_size, shape.ffn_hidden_size, shape.num_layers, shape.num_query_groups,
                shape.num_attention_heads, shape.seq_length, shape.vocab_size)  # fmt: skip
        assert forward_flops_per_token(shape, convention="paper") == pytest.approx(
            _levanter(*args), rel=1e-12
        )
        assert paper_training_flops_per_token(shape) == pytest.approx(
            3 * _levanter(*args), rel=1e-12
        )
    # where head dim == d / h (the anchor, every IsoFLOP sweep shape) the two counts agree
    assert forward_flops_per_token(ANCHOR, convention="paper") == forward_flops_per_token(ANCHOR)


def test_true_over_paper_is_1_44_at_600m_and_1_18_at_4b():
    # 600M, paper convention hd = 1024/16 = 64: per layer mlp 18,874,368 + qkv 2*1024*(16*64 +
    # 2*8*64) = 4,194,304 + out 2*1024*1024 = 2,097,152 + attn 4*4096*16*64 = 16,777,216 + mask
    # 196,608 = 42,139,648; x 28 + head 296,230,912
    paper_600m = 28 * 42_139_648 + 296_230_912
    assert paper_600m == 1_476_141_056
    assert forward_flops_per_token(SODA_600M, convention="paper") == paper_600m
    assert forward_flops_per_token(SODA_600M) == 2_122_063_872  # true, hd 128 (above)
    assert 2_122_063_872 / paper_600m == pytest.approx(1.4376, abs=1e-4)
    # 4B: d=2560 L=36 h=32 kv=8 ffn=9728.  True (hd 128): mlp 149,422,080 + qkv 2*2560*6144 =
    # 31,457,280 + out 2*4096*2560 = 20,971,520 + attn 4*4096*32*128 = 67,108,864 + mask 393,216
    # = 269,352,960 per layer.  Paper (hd 80): qkv 2*2560*3840 = 19,660,800, out 2*2560^2 =
    # 13,107,200, attn 4*4096*32*80 = 41,943,040: 224,526,336 per layer.  Head 2*2560*144,644.
    head = 740_577_280
    true_4b, paper_4b = 36 * 269_352_960 + head, 36 * 224_526_336 + head
    assert (true_4b, paper_4b) == (10_437_283_840, 8_823_525_376)
    assert forward_flops_per_token(SODA_4B) == true_4b
    assert forward_flops_per_token(SODA_4B, convention="paper") == paper_4b
    assert true_4b / paper_4b == pytest.approx(1.1829, abs=1e-4)
    assert compare_flop_conventions(SODA_4B)["ratio_true_over_paper"] == pytest.approx(
        true_4b / paper_4b
    )
    with pytest.raises(ValueError):
        forward_flops_per_token(SODA_4B, convention="kaplan")


class _Arch:
    """What the trainer passes: shape_dict(), padded_vocab_size, seq_length, vocab_size."""

    vocab_size, padded_vocab_size, seq_length = 144_644, 144_768, 4096

    def shape_dict(self):
        return {"hidden_size": 1024, "num_layers": 28, "num_attention_heads": 16, "num_query_groups": 8,
                "kv_channels": 128, "ffn_hidden_size": 3072}  # fmt: skip


def test_trainer_counts_true_padded_and_paper_unpadded():
    counts = run_flop_counts(_Arch())
    # true: hd 128 and the padded vocabulary the model computes (124 extra rows x 2d)
    assert counts["train_flops_per_token"] == 3 * (2_122_063_872 + 2 * 1024 * 124)
    # paper: Levanter's count with the tokenizer's vocabulary, as SODA's sweep counted
    assert counts["paper_train_flops_per_token"] == 3 * 1_476_141_056
