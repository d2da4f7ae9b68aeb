"""Duration-sorted batched Mimi encoding (audio/batched_encode.py) against the codec's one
piece per pass (tiny Mimi architecture, random weights, CPU)."""

import numpy as np
import pytest
import torch

from megatron_soda.audio import MimiCodec
from megatron_soda.audio.batched_encode import code_agreement, encode_batched, plan_batches

# < 1.5 s clips, odd lengths, whole frames, a 7 s clip; lengths all distinct
LENGTHS = [12_003, 24_000, 31_211, 36_000, 52_807, 60_000, 69_611, 72_001, 120_007, 175_200]
FP32_MIN_AGREEMENT = 0.99  # measured 1.0 on CPU (tiny: 1 and 2 threads; full size: 1 thread)


def _waves(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 24000
        f0 = 90 + 150 * rng.random()
        w = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        out.append((w + 0.02 * rng.standard_normal(n)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def codec():
    return MimiCodec("random:tiny:0", num_codebooks=8)


@pytest.fixture(scope="module")
def reference(codec):
    waves = _waves(LENGTHS)
    return waves, codec.encode(waves)  # unbatched fp32: one clip per forward pass


def test_code_agreement_matches_numpy():
    rng = np.random.default_rng(1)
    a = [rng.integers(0, 4, (8, n)) for n in (3, 11, 1)]
    b = [x.copy() for x in a]
    b[1][2, 4] = (b[1][2, 4] + 1) % 4
    b[0][:, 0] = 9
    total = sum(x.size for x in a)
    assert code_agreement(a, b) == (total - 1 - 8) / total
    assert code_agreement(a[2], b[2]) == 1.0 and code_agreement([], []) == 1.0
    with pytest.raises(ValueError):
        code_agreement(a, b[:2])
    with pytest.raises(ValueError):
        code_agreement([a[0]], [a[1]])


def test_plan_batches_sorted_within_budget():
    lengths = [50, 10, 30, 10, 200, 40, 20]
    batches = plan_batches(lengths, 100)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert flat[:2] == [1, 3]  # ties keep input order
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    for prev, nxt in zip(batches, batches[1:]):  # a batch closes only when the next would not fit
        assert (len(prev) + 1) * lengths[nxt[0]] > 100


@pytest.mark.parametrize("seconds", [2.0, 8.0])
def test_batched_fp32_agrees_with_unbatched(codec, reference, seconds):
    waves, ref = reference
    got = encode_batched(codec, waves, seconds, device="cpu", dtype="fp32")
    assert len(got) == len(waves)
    for w, r, g in zip(waves, ref, got):
        assert g.shape == r.shape == (8, -(-w.size // 1920))
        assert g.dtype == np.int16
    per_clip = [code_agreement(r, g) for r, g in zip(ref, got)]
    print(f"fp32 batched ({seconds} s) vs unbatched per clip: {per_clip}")
    assert code_agreement(ref, got) >= FP32_MIN_AGREEMENT


def test_order_restored(codec, reference):
    waves, _ = reference
    perm = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    direct = encode_batched(codec, waves, 8.0)
    permuted = encode_batched(codec, [torch.from_numpy(waves[i]) for i in perm], 8.0)
    for k, i in enumerate(perm):  # same batches (distinct lengths): identical codes
        np.testing.assert_array_equal(permuted[k], direct[i])


def test_empty_and_one_clip(codec, reference):
    waves, ref = reference
    assert encode_batched(codec, [], 4.0) == []
    one = encode_batched(codec, [waves[4]], 4.0)
    assert len(one) == 1
    np.testing.assert_array_equal(one[0], ref[4])  # a batch of one is the unbatched pass
    with pytest.raises(ValueError, match="non-empty"):
        encode_batched(codec, [waves[0], np.zeros(0, np.float32)], 4.0)


def test_long_clips_cut_into_codec_pieces():
    pieces = MimiCodec("random:tiny:0", 8, chunk_seconds=0.96)  # 12 frames a piece
    waves = _waves([70_001, 23_040, 46_081], seed=2)
    ref = pieces.encode(waves)
    got = encode_batched(pieces, waves, 4.0)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert code_agreement(ref, got) >= FP32_MIN_AGREEMENT


def test_padding_mask_is_not_needed_for_valid_frames(codec):
    """What the batching rests on: right zero-padding does not change a clip's valid frames
    (causal model; MimiModel.encode's padding_mask is not used by its encoder)."""
    w = _waves([31_211], seed=3)[0]
    frames = -(-w.size // 1920)
    x = torch.zeros(1, 1, (frames + 5) * 1920)
    x[0, 0, : w.size] = torch.from_numpy(w)
    ones = torch.ones(1, x.shape[-1], dtype=torch.long)
    mask = ones.clone()
    mask[:, w.size :] = 0
    with torch.inference_mode():
        padded = codec.model.encode(x, num_quantizers=8).audio_codes[0, :, :frames]
        masked = codec.model.encode(x, padding_mask=mask, num_quantizers=8).audio_codes
        alone = codec.model.encode(x[..., : frames * 1920], num_quantizers=8).audio_codes[0]
    assert torch.equal(padded, alone) and torch.equal(masked[0, :, :frames], alone)


def test_bf16_agreement_with_fp32_is_measured(codec, reference):
    waves, ref = reference
    got = encode_batched(codec, waves, 8.0, dtype=torch.bfloat16)
    assert [g.shape for g in got] == [r.shape for r in ref]
    frac = code_agreement(ref, got)
    first = code_agreement([r[:1] for r in ref], [g[:1] for g in got])
    print(f"bf16 batched vs fp32 unbatched: {frac:.4f} of codes, {first:.4f} of codebook 0")
    # random weights: far above chance (1/2048), far from exact
    assert 0.3 < frac < 1.0
