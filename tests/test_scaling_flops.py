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
    param_counts,
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
