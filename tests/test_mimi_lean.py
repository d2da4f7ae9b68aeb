"""The lean Mimi encoder path (audio/mimi_lean.py) against transformers' own MimiModel.encode:
encoder output bit for bit (torch.equal) and codes, tiny and full-size architecture with random
weights, and the fallback when transformers' Mimi internals look different."""

import logging

import numpy as np
import pytest
import torch

from megatron_soda.audio import MimiCodec, mimi_lean
from megatron_soda.audio.mimi_lean import LeanMimiEncoder, lean_encoder

# one sample, just under / over a frame, odd lengths, < 1.5 s, and > 10 s (the encoder
# transformer's 250-frame sliding window at 25 Hz then masks)
TINY_LENGTHS = [1, 1921, 31203, 88811, 12 * 24000 + 5]
FULL_LENGTHS = [1921, 29_763, 60_000]  # 0.08 s, 1.24 s (odd), 2.5 s


def _wave(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 24000
    x = 0.3 * torch.sin(2 * torch.pi * (110 + 50 * seed) * t) + 0.05 * torch.randn(n, generator=g)
    return x.view(1, 1, n).float()


@pytest.fixture(scope="module")
def tiny():
    return MimiCodec("random:tiny:0", num_codebooks=8)


@pytest.fixture(scope="module")
def full():
    return MimiCodec("random:full:1", num_codebooks=8).model


def _check(model, lengths):
    lean = LeanMimiEncoder(model)
    with torch.inference_mode():
        for seed, n in enumerate(lengths):
            x = _wave(n, seed)
            ref = model.encoder(x).latents
            got = lean.latents(x)
            assert got.shape == ref.shape and torch.equal(got, ref), n
            for nq in (8, model.config.num_quantizers) if seed == 1 else (8,):
                ref_codes = model.encode(x, num_quantizers=nq).audio_codes
                assert torch.equal(lean.encode(x, nq), ref_codes), (n, nq)
            assert torch.equal(x, _wave(n, seed))  # the input is not written to


def test_tiny_bit_identical(tiny):
    _check(tiny.model, TINY_LENGTHS)


def test_full_size_bit_identical(full):
    _check(full, FULL_LENGTHS)


def test_batch_of_clips_bit_identical(tiny):
    """A batch (the GPU path's shape) through the lean path equals the same batch through
    model.encode: padding columns are per row, not per tensor."""
    x = torch.cat([_wave(3 * 1920, 1), _wave(3 * 1920, 2) * 0.5])
    lean = LeanMimiEncoder(tiny.model)
    with torch.inference_mode():
        assert torch.equal(lean.latents(x), tiny.model.encoder(x).latents)
        assert torch.equal(lean.encode(x, 8), tiny.model.encode(x, num_quantizers=8).audio_codes)


def _padded_reference(model, wave: np.ndarray, n_codebooks: int) -> np.ndarray:
    """What MimiCodec promises: the clip zero-padded to whole frames through model.encode."""
    frames = -(-wave.size // 1920)
    x = np.zeros((1, 1, frames * 1920), np.float32)
    x[0, 0, : wave.size] = wave
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(x), num_quantizers=n_codebooks).audio_codes
    return codes[0].numpy().astype(np.int16)


def test_codec_uses_lean_path_and_keeps_codes(tiny):
    assert tiny._lean is not None
    waves = [_wave(n, i).numpy().ravel() for i, n in enumerate([1921, 24007, 31203])]
    got = tiny.encode(waves)
    for w, c in zip(waves, got):
        np.testing.assert_array_equal(c, _padded_reference(tiny.model, w, 8))
    plain = MimiCodec("random:tiny:0", num_codebooks=8, lean=False)
    assert plain._lean is None
    for a, b in zip(got, plain.encode(waves)):
        np.testing.assert_array_equal(a, b)


def test_fallback_when_internals_differ(monkeypatch, caplog):
    """transformers' Mimi with a different structure: no lean path, one log line, and the
    codec still gives model.encode's codes."""
    from transformers.models.mimi import modeling_mimi

    monkeypatch.setattr(mimi_lean, "_warned", set())
    block = modeling_mimi.MimiResnetBlock
    block.__name__ = "MimiResnetBlockV2"  # (monkeypatch cannot undo a type's __name__)
    try:
        with caplog.at_level(logging.WARNING, logger="megatron_soda.audio.mimi_lean"):
            first = MimiCodec("random:tiny:0", num_codebooks=8)
            second = MimiCodec("random:tiny:0", num_codebooks=8)
    finally:
        block.__name__ = "MimiResnetBlock"
    assert first._lean is None and second._lean is None
    lines = [r.getMessage() for r in caplog.records if "lean encoder not used" in r.getMessage()]
    assert len(lines) == 1 and "MimiResnetBlockV2" in lines[0]
    w = _wave(24007, 3).numpy().ravel()
    np.testing.assert_array_equal(first.encode([w])[0], _padded_reference(first.model, w, 8))


def test_fallback_on_changed_padding_mode(tiny, monkeypatch):
    """An attribute the lean path relies on changes meaning (a reflect-padded downsample):
    refused at construction, while model.encode follows the change."""
    monkeypatch.setattr(mimi_lean, "_warned", set())
    monkeypatch.setattr(tiny.model.encoder.downsample, "pad_mode", "reflect")
    assert lean_encoder(tiny.model) is None


def test_probe_detects_a_behaviour_change(tiny, monkeypatch):
    """With a probe, a lean path that would give other bits is refused."""
    monkeypatch.setattr(mimi_lean, "_warned", set())
    assert lean_encoder(tiny.model, probe_frames=2) is not None
    monkeypatch.setattr(mimi_lean._Conv, "extra", lambda self, length: 0)  # drops right padding
    assert lean_encoder(tiny.model, probe_frames=2) is None
