"""Audio decoding: formats, rates, channels, bit depths, segments, and every bad-input kind."""

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.audio import AudioError, Segment, decode_segments, load_audio


def _tone(seconds, sr, channels=1, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize(
    "fmt,subtype,sr,channels",
    [
        ("WAV", "PCM_16", 24000, 1),
        ("WAV", "PCM_U8", 8000, 1),
        ("WAV", "FLOAT", 48000, 2),
        ("FLAC", "PCM_24", 44100, 2),
        ("OGG", "VORBIS", 16000, 1),
        ("MP3", "MPEG_LAYER_III", 22050, 1),
    ],
)
def test_formats_resample_to_24k_mono(tmp_path, fmt, subtype, sr, channels):
    path = str(tmp_path / f"a.{fmt.lower()}")
    sf.write(path, _tone(2.0, sr, channels), sr, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 48000) <= 0.01 * 48000  # mp3 encoders add a little padding
    # the 440 Hz tone survives decoding + resampling
    spec = np.abs(np.fft.rfft(wave[2400:-2400]))
    peak = np.argmax(spec) * 24000 / (wave.size - 4800)
    assert abs(peak - 440) < 5


def test_from_bytes_equals_from_file(tmp_path):
    path = str(tmp_path / "a.flac")
    sf.write(path, _tone(1.0, 44100), 44100)
    with open(path, "rb") as f:
        data = f.read()
    np.testing.assert_array_equal(load_audio(path), load_audio(data, name="a.flac"))


def test_stereo_is_downmixed_by_averaging(tmp_path):
    path = str(tmp_path / "st.wav")
    left = _tone(1.0, 24000)
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), 24000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), left / 2, atol=1e-6)


def test_segments_in_one_pass_are_exact(tmp_path):
    path = str(tmp_path / "ramp.wav")
    sr = 24000
    sf.write(path, (np.arange(3 * sr) / (3 * sr)).astype(np.float32), sr, subtype="FLOAT")
    outs = decode_segments(path, [Segment(2.0, 2.5), Segment(0.0, 1.0), Segment(1.0, None)])
    assert [o.size for o in outs] == [12000, 24000, 48000]
    np.testing.assert_allclose(outs[0][0], 2.0 / 3, atol=1e-6)
    np.testing.assert_allclose(outs[2][0], 1.0 / 3, atol=1e-6)


def test_ten_minutes_of_silence_is_valid(tmp_path):
    path = str(tmp_path / "silence.flac")
    sf.write(path, np.zeros(600 * 16000, dtype=np.int16), 16000)
    wave = load_audio(path)
    assert wave.size == 600 * 24000 and not wave.any()


def _wav_bytes(tmp_path):
    path = str(tmp_path / "ok.wav")
    sf.write(path, _tone(1.0, 24000), 24000)
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p, b: None, "no such file"),
        (lambda p, b: open(p, "wb").close(), "empty file"),
        (lambda p, b: open(p, "wb").write(b[: len(b) // 2]), "truncated WAV"),
        (
            lambda p, b: open(p, "w").write("this is a text file, not audio"),
            "not a readable audio file",
        ),
    ],
)
def test_bad_files_raise_with_reason_and_name(tmp_path, make, reason):
    data = _wav_bytes(tmp_path)
    path = str(tmp_path / "bad.wav")
    make(path, data)
    with pytest.raises(AudioError, match=reason) as e:
        load_audio(path)
    assert "bad.wav" in str(e.value)


@pytest.mark.parametrize(
    "fmt,subtype,reason",
    [
        ("FLAC", "PCM_16", "decoding failed"),
        ("OGG", "VORBIS", "truncated Ogg"),
        ("MP3", "MPEG_LAYER_III", "truncated"),
    ],
)
def test_truncated_compressed_files(tmp_path, fmt, subtype, reason):
    path = str(tmp_path / f"a.{fmt.lower()}")
    sf.write(
        path,
        (np.random.default_rng(0).standard_normal(96000) * 0.1).astype(np.float32),
        24000,
        format=fmt,
        subtype=subtype,
    )
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(AudioError, match=reason):
        load_audio(data[: len(data) // 2], name=f"cut.{fmt.lower()}")


def test_nan_and_out_of_range_segments_fail_alone(tmp_path):
    path = str(tmp_path / "nan.wav")
    x = _tone(2.0, 24000)
    x[30000] = np.nan
    sf.write(path, x, 24000, subtype="FLOAT")
    ok, bad, past = decode_segments(path, [Segment(0.0, 1.0), Segment(1.0, 2.0), Segment(1.5, 9.0)])
    assert isinstance(ok, np.ndarray) and ok.size == 24000
    assert isinstance(bad, AudioError) and "NaN" in str(bad)
    assert isinstance(past, AudioError) and "past the end" in str(past)


def test_metadata_duration_catches_short_files(tmp_path):
    path = str(tmp_path / "short.wav")
    sf.write(path, _tone(1.0, 24000), 24000)
    with pytest.raises(AudioError, match="metadata says"):
        decode_segments(path, expected_duration=5.0)
