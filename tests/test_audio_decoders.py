"""Decoding by content: AAC (M4A, ADTS), Opus (Ogg, WebM), FLAC in Matroska, MP3, FLAC.

Real speech (espeak-ng) is encoded with FFmpeg's own encoders (PyAV) and decoded through
``megatron_soda.audio``; the result must match the source resampled to 24 kHz.  Tolerances,
after aligning by cross-correlation (lag search +-0.1 s): correlation >= 0.99 and SNR >= 15 dB
for the lossy codecs (measured: 0.992-0.999, 18-29 dB), SNR >= 60 dB for lossless FLAC in
Matroska; length within one codec frame (AAC 1024, MP3 1152, Opus 960 samples at the encoder's
rate), raw ADTS within two, since it has no edit list to drop the encoder's 1024-sample delay.
"""


import av
import numpy as np
import pytest
import soxr
from helpers_audio import encode

from megatron_soda.audio import AudioError, Segment, decode_segments, load_audio
from megatron_soda.audio.decoders import FFMPEG, SNDFILE, choose_decoder
from megatron_soda.testing.sample_data import speak

TEXT = "The quick brown fox jumps over the lazy dog, and then it sleeps in the sun."


@pytest.fixture(scope="module")
def speech():
    x, sr = speak(TEXT)
    return x, sr, soxr.resample(x, sr, 24000, quality="HQ").astype(np.float32)


def align(decoded, ref):
    """(lag in samples, correlation, SNR dB) of ``decoded`` against ``ref`` after alignment."""
    m = 2400
    c = np.correlate(decoded[: ref.size + m], ref[m:-m], mode="valid")
    shift = int(np.argmax(c)) - m
    a = decoded[max(shift, 0) :][: ref.size - max(-shift, 0)]
    b = ref[max(-shift, 0) :][: a.size]
    snr = 10 * np.log10(np.sum(b.astype(np.float64) ** 2) / np.sum((a - b).astype(np.float64) ** 2))
    return shift, float(np.corrcoef(a, b)[0, 1]), float(snr)


# (name, muxer, codec, encoder rate, channels, muxer options, frame samples, frames of slack)
CASES = [
    ("aac.m4a", "ipod", "aac", 44100, 1, None, 1024, 1),
    ("aac-faststart-stereo.m4a", "ipod", "aac", 44100, 2, {"movflags": "faststart"}, 1024, 1),
    ("aac.aac", "adts", "aac", 44100, 1, None, 1024, 2),
    ("opus.ogg", "ogg", "libopus", 48000, 1, None, 960, 1),
    ("opus-stereo.webm", "webm", "libopus", 48000, 2, None, 960, 1),
    ("flac.mka", "matroska", "flac", 44100, 2, None, 1, 1),
    ("mp3.mp3", "mp3", "libmp3lame", 44100, 1, None, 1152, 1),
    ("flac.flac", "flac", "flac", 16000, 1, None, 1, 1),
]


@pytest.mark.parametrize("name,fmt,codec,rate,channels,options,frame,slack", CASES)
def test_decoded_speech_matches_source(
    tmp_path, speech, name, fmt, codec, rate, channels, options, frame, slack
):
    x, sr, ref = speech
    data = encode(tmp_path / name, x, sr, fmt, codec, rate, channels, options)
    wave = load_audio(data, name=name)
    assert wave.dtype == np.float32 and wave.ndim == 1
    if channels == 2:
        wave = wave * 2  # downmix averages: the silent right channel halves the speech
    assert abs(wave.size - ref.size) <= slack * frame * 24000 / rate + 1
    shift, corr, snr = align(wave, ref)
    assert abs(shift) <= slack * frame * 24000 / rate + 1
    assert corr >= 0.99 and snr >= (60 if codec == "flac" and rate == sr else 15), (corr, snr)
    if codec == "flac" and rate == sr:
        assert shift == 0 and wave.size == ref.size


def test_content_not_extension_decides(tmp_path, speech):
    """AAC in a file named .wav decodes, from its path and from its bytes, identically."""
    x, sr, ref = speech
    data = encode(tmp_path / "a.m4a", x, sr, "ipod", "aac", 44100)
    misnamed = tmp_path / "really_aac.wav"
    misnamed.write_bytes(data)
    from_path = load_audio(str(misnamed))
    np.testing.assert_array_equal(from_path, load_audio(data, name="cell"))
    assert align(from_path, ref)[1] >= 0.99
    # ADTS after an ID3 tag: looks like MP3, libsndfile rejects it, FFmpeg reads it
    adts = encode(tmp_path / "a.aac", x, sr, "adts", "aac", 44100)
    tagged = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + adts
    assert align(load_audio(tagged, name="tagged.mp3"), ref)[1] >= 0.99


@pytest.mark.parametrize(
    "head,decoder",
    [
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", SNDFILE),
        (b"fLaC\x00\x00\x00\x22", SNDFILE),
        (b"OggS\x00\x02", SNDFILE),
        (b"ID3\x04\x00", SNDFILE),
        (b"\xff\xfb\x90\x64", SNDFILE),  # MPEG-1 layer III frame
        (b"\xff\xf1\x50\x40", FFMPEG),  # ADTS (layer 00)
        (b"\xff\xf9\x50\x40", FFMPEG),  # ADTS, MPEG-2
        (b"\x00\x00\x00\x1cftypM4A ", FFMPEG),
        (b"\x1a\x45\xdf\xa3\x9f\x42", FFMPEG),
        (b"something else", SNDFILE),
    ],
)
def test_choose_decoder_by_magic_bytes(head, decoder):
    assert choose_decoder(head) == decoder


@pytest.mark.parametrize(
    "name,fmt,codec,rate",
    [
        ("a.m4a", "ipod", "aac", 44100),
        ("a.webm", "webm", "libopus", 48000),
        ("a.aac", "adts", "aac", 44100),
    ],
)
def test_segments_in_one_pass_equal_separate_cuts(tmp_path, speech, name, fmt, codec, rate):
    x, sr, _ = speech
    data = encode(tmp_path / name, x, sr, fmt, codec, rate)
    segs = [Segment(2.0, 3.5), Segment(0.0, 1.0), Segment(0.5, 2.5), Segment(3.0, None)]
    together = decode_segments(data, segs, name=name)
    for seg, wave in zip(segs, together):
        np.testing.assert_array_equal(wave, load_audio(data, seg.start, seg.end, name=name))
    assert [w.size for w in together[:3]] == [36000, 24000, 48000]


def _video_only(path, fmt, codec) -> bytes:
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            img = np.full((32, 32, 3), 40 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path.read_bytes()


def _corrupt(data: bytes) -> bytes:
    k = len(data) // 3
    noise = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    return data[:k] + noise + data[k + 2000 :]


@pytest.mark.parametrize(
    "container,damage,reason",
    [
        ("m4a", lambda b: b[: len(b) // 2], "not a readable audio file"),  # index at the end
        ("m4a-faststart", lambda b: b[: len(b) // 2], "decoding failed after"),
        ("m4a", _corrupt, "decoding failed after"),
        ("adts", lambda b: b[: len(b) // 2], "decoding failed after"),
        ("adts", _corrupt, "decoding failed after"),
        ("adts", lambda b: b[:64], "not a readable audio file"),
        (
            "webm",
            lambda b: b[: len(b) // 2],
            r"truncated \(decoded \d\.\d\ds of a declared \d\.\d\ds\)",
        ),
        ("webm", lambda b: b[:64], "not a readable audio file"),
        ("m4a", lambda b: b[:32] + bytes(range(256)) * 20, "not a readable audio file"),
        ("m4a", lambda b: b"", "empty file"),
        (
            "m4a",
            lambda b: b"plain text\n" * 50,
            r"not a readable audio file \(libsndfile: .*; FFmpeg: ",
        ),
    ],
)
def test_damaged_files_raise_naming_the_source(tmp_path, speech, container, damage, reason):
    x, sr, _ = speech
    fmt, codec, rate, opts = {
        "m4a": ("ipod", "aac", 44100, None),
        "m4a-faststart": ("ipod", "aac", 44100, {"movflags": "faststart"}),
        "adts": ("adts", "aac", 44100, None),
        "webm": ("webm", "libopus", 48000, None),
    }[container]
    bad = damage(encode(tmp_path / "src", x, sr, fmt, codec, rate, options=opts))
    path = tmp_path / "damaged.wav"  # the name says WAV; the content decides
    path.write_bytes(bad)
    for src in (str(path), bad):
        with pytest.raises(AudioError, match=reason) as e:
            load_audio(src, name=None if isinstance(src, str) else "damaged.wav")
        assert "damaged.wav" in str(e.value) and "\n" not in str(e.value)
        assert "0x" not in str(e.value)


@pytest.mark.parametrize("fmt,codec", [("webm", "libvpx"), ("mp4", "mpeg4")])
def test_video_only_file_has_no_audio_stream(tmp_path, fmt, codec):
    data = _video_only(tmp_path / f"v.{fmt}", fmt, codec)
    with pytest.raises(AudioError, match=r"clip\.bin: no audio stream \(only video streams"):
        load_audio(data, name="clip.bin")


def test_metadata_duration_checks_ffmpeg_sources(tmp_path, speech):
    x, sr, _ = speech
    data = encode(tmp_path / "a.m4a", x, sr, "ipod", "aac", 44100)
    with pytest.raises(AudioError, match="a.m4a: truncated or wrong file .* metadata says 10.00s"):
        decode_segments(data, name="a.m4a", expected_duration=10.0)
    (ok,) = decode_segments(data, name="a.m4a", expected_duration=x.size / sr)
    assert isinstance(ok, np.ndarray)
