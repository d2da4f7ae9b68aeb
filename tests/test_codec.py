"""Mimi codec through transformers.MimiModel (random tiny weights: the real architecture)."""

import shutil

import numpy as np
import pytest

from megatron_soda.audio import CodecError, MimiCodec, parse_codec_spec
from megatron_soda.audio.codec import codec_fingerprint


@pytest.fixture(scope="module")
def codec():
    return MimiCodec("random:tiny:0", num_codebooks=8)


def _speechy(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    f0 = 100 + 80 * rng.random()
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    return (env * np.sin(2 * np.pi * f0 * t) * 0.3 + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def test_spec_parsing():
    assert str(parse_codec_spec("random:tiny")) == "random:tiny:0"
    assert parse_codec_spec("random:full:7").seed == 7
    assert parse_codec_spec("/models/mimi").kind == "pretrained"
    with pytest.raises(CodecError):
        parse_codec_spec("random:huge")
    with pytest.raises(CodecError, match="seed"):
        parse_codec_spec("random:tiny:x")


def test_frames_codebooks_and_varied_codes(codec):
    codes = codec.encode([_speechy(2.0, 0), _speechy(0.5, 1)])
    assert [c.shape for c in codes] == [(8, 25), (8, 7)]  # ceil(samples / 1920)
    assert codes[0].dtype == np.int16
    assert all(((c >= 0) & (c < 2048)).all() for c in codes)
    # random init must randomise the codebooks: a fresh MimiModel would give all zeros
    assert all(len(np.unique(codes[0][k])) > 3 for k in range(8))


def test_deterministic_per_seed():
    w = [_speechy(1.0, 3)]
    a = MimiCodec("random:tiny:5", 2).encode(w)[0]
    b = MimiCodec("random:tiny:5", 2).encode(w)[0]
    c = MimiCodec("random:tiny:6", 2).encode(w)[0]
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_batched_equals_one_at_a_time(codec):
    waves = [_speechy(s, i) for i, s in enumerate([1.3, 0.2, 2.7, 0.9])]
    batched = codec.encode(waves)
    for w, b in zip(waves, batched):
        np.testing.assert_array_equal(codec.encode([w])[0], b)


def test_long_audio_in_pieces_concatenated():
    pieces = MimiCodec("random:tiny:0", 8, chunk_seconds=0.96)  # 12 frames a piece
    assert pieces.chunk_samples == 12 * 1920
    w = _speechy(3.5, 9)
    codes = pieces.encode([w])[0]
    assert codes.shape == (8, 44)
    # each piece encodes exactly as that piece alone, and the result is their concatenation
    n = pieces.chunk_samples
    np.testing.assert_array_equal(codes[:, 12:24], pieces.encode([w[n : 2 * n]])[0])
    assert (codes != MimiCodec("random:tiny:0", 8).encode([w])[0]).any()  # pieces do matter


def test_semantic_only_is_the_first_codebook(codec):
    w = [_speechy(1.0, 4)]
    one = MimiCodec("random:tiny:0", 1).encode(w)[0]
    np.testing.assert_array_equal(one[0], codec.encode(w)[0][0])


def test_codebook_limits_and_missing_weights(tmp_path):
    with pytest.raises(CodecError, match="num_codebooks"):
        MimiCodec("random:tiny", 33)
    with pytest.raises(CodecError, match="never downloaded"):
        MimiCodec(str(tmp_path / "no-such-mimi"))


def test_local_pretrained_directory_round_trip(tmp_path):
    src = MimiCodec("random:tiny:3", 8)
    src.model.save_pretrained(str(tmp_path / "mimi"))
    loaded = MimiCodec(str(tmp_path / "mimi"), 8)
    w = [_speechy(1.0, 2)]
    np.testing.assert_array_equal(src.encode(w)[0], loaded.encode(w)[0])
    assert codec_fingerprint(str(tmp_path / "mimi")) != codec_fingerprint("random:tiny:3")
    # the same weights elsewhere (HF cache vs --local-dir): the shards' fingerprint agrees,
    # the codes cache's key keeps the path; a random spec is the same either way
    shutil.copytree(tmp_path / "mimi", tmp_path / "copy")
    here, there = str(tmp_path / "mimi"), str(tmp_path / "copy")
    portable = [codec_fingerprint(p, with_location=False) for p in (here, there)]
    assert portable[0] == portable[1] and codec_fingerprint(here) != codec_fingerprint(there)
    tiny = "random:tiny:3"
    assert codec_fingerprint(tiny, with_location=False) == codec_fingerprint(tiny)


def test_decoder_round_trip_shape():
    full = MimiCodec("random:tiny:0", 8, decoder=True)
    codes = full.encode([_speechy(1.0, 0)])[0]
    audio = full.decode(codes)
    assert audio.shape == (codes.shape[1] * 1920,)


def test_random_codec_encodes_the_same_with_or_without_its_decoder():
    """Generation builds the codec with its decoder, preprocessing without: a random codec must
    give both the same codes, or prompts would not match the training data."""
    wave = np.random.default_rng(3).standard_normal(3 * 24000).astype(np.float32) * 0.1
    for spec in ("random:tiny:0", "random:tiny:7"):
        plain = MimiCodec(spec).encode([wave])[0]
        with_decoder = MimiCodec(spec, decoder=True).encode([wave])[0]
        assert np.array_equal(plain, with_decoder)
