"""Long recordings are decoded, resampled and encoded as a stream, in bounded memory.

References are computed independently of the code under test: the source read whole with
libsndfile, resampled whole with ``soxr.resample``, and Mimi (a real, randomly initialised
``random:tiny``) called directly on each zero-padded codec piece, the definition of the codes.
"""

import functools
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers_audio import encode

from megatron_soda.audio import AudioError, MimiCodec, Segment
from megatron_soda.audio.streaming import PieceEncoder, encode_segments, stream_segments

SR = 44_100
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _signal(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Speech-like: a few amplitude-modulated harmonics plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.02 * rng.standard_normal(t.size)
    for _ in range(4):
        f0, rate = rng.uniform(90, 300), rng.uniform(2, 7)
        env = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28)))
        x += 0.08 * env * np.sin(2 * np.pi * f0 * t)
    return x.astype(np.float32)


@functools.cache
def _codec(seed: int, codebooks: int, chunk_seconds: float = 60.0, batch_seconds=None) -> MimiCodec:
    return MimiCodec(f"random:tiny:{seed}", codebooks, chunk_seconds=chunk_seconds, batch_seconds=batch_seconds)


def _reference_codes(codec: MimiCodec, wave: np.ndarray, piece: int) -> np.ndarray:
    """Mimi on each piece of ``piece`` samples, zero-padded to whole frames, concatenated."""
    out = []
    for s in range(0, wave.size, piece):
        p = wave[s : s + piece]
        frames = -(-p.size // 1920)
        x = np.zeros((1, 1, frames * 1920), np.float32)
        x[0, 0, : p.size] = p
        with torch.inference_mode():
            c = codec.model.encode(torch.from_numpy(x), num_quantizers=codec.num_codebooks)
        out.append(c.audio_codes[0, :, :frames].numpy().astype(np.int16))
    return np.concatenate(out, axis=1)


def _whole_segment(path: str, start: float | None, end: float | None) -> np.ndarray:
    """The segment read whole from the file and resampled whole (the non-streaming answer)."""
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1, dtype=np.float32)
    a = 0 if start is None else int(round(start * sr))
    b = x.size if end is None else int(round(end * sr))
    return soxr.resample(x[a:b], sr, 24000, quality="HQ").astype(np.float32)


class _Collect:
    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

        self.closed = 0

    def write(self, samples: np.ndarray) -> None:
        assert not self.closed
        self.parts.append(np.array(samples, np.float32))

    def close(self) -> None:
        self.closed += 1

    def wave(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


@pytest.fixture(scope="module")
def stereo_flac(tmp_path_factory) -> str:
    """13 s of 44.1 kHz stereo FLAC (channels differ, so the down-mix is exercised)."""
    left = _signal(13.0, SR, 1)
    path = str(tmp_path_factory.mktemp("audio") / "rec.flac")
    sf.write(path, np.stack([left, 0.5 * left[::-1]], axis=1), SR, subtype="PCM_16")
    return path


@pytest.mark.parametrize("chunk_seconds", [0.8, 2.0, 4.8])
@pytest.mark.parametrize("write_size", [997, 24_000, 300_000])
def test_streamed_codes_equal_whole_wave_codes(chunk_seconds, write_size):
    """Audio several codec pieces long, written in pieces of any size, gives exactly the codes
    of Mimi on the whole waveform's pieces, and those of ``MimiCodec.encode`` of the whole."""
    codec = _codec(3, 8, chunk_seconds)
    wave = _signal(11.3, 24000, 7)
    enc = PieceEncoder(codec)
    stream = enc.stream()
    for s in range(0, wave.size, write_size):
        stream.write(wave[s : s + write_size])
    stream.close()
    enc.flush()
    ref = _reference_codes(codec, wave, codec.chunk_samples)
    assert ref.shape == (8, -(-wave.size // 1920)) and wave.size > 2 * codec.chunk_samples
    np.testing.assert_array_equal(stream.codes(), ref)
    np.testing.assert_array_equal(codec.encode([wave])[0], ref)
    assert stream.samples == wave.size


def test_batched_pieces_equal_one_at_a_time():
    """With a batch budget (the GPU arrangement), pieces of several streams batched together
    give the codes each piece gets alone (the batch is held, at most one, until full)."""
    codec = _codec(3, 4, 0.8, 3.0)
    waves = [_signal(s, 24000, i) for i, s in enumerate((2.9, 0.5, 4.1))]
    for w, codes in zip(waves, codec.encode(waves)):  # one PieceEncoder for all three streams
        np.testing.assert_array_equal(codes, _reference_codes(codec, w, codec.chunk_samples))


@pytest.mark.parametrize(
    "segments",
    [
        [Segment()],
        [Segment(0.31, 3.77), Segment(3.77, 9.02), Segment(8.5, 12.9)],  # overlapping too
        [Segment(9.7, 12.2)],  # late in the file: the source is positioned there first
    ],
)
def test_segments_stream_resampled_and_encoded(stereo_flac, segments):
    """Each segment's streamed 24 kHz audio equals the segment read and resampled whole, and
    its codes equal Mimi on that whole segment's pieces."""
    sinks = [_Collect() for _ in segments]
    assert stream_segments(stereo_flac, segments, sinks) == [None] * len(segments)
    assert [s.closed for s in sinks] == [1] * len(segments)
    codec = _codec(0, 8, 1.6)
    enc = PieceEncoder(codec)
    streams = encode_segments(enc, stereo_flac, segments)
    enc.flush()
    for seg, sink, st in zip(segments, sinks, streams):
        whole = _whole_segment(stereo_flac, seg.start, seg.end)
        assert sink.wave().size == whole.size
        np.testing.assert_allclose(sink.wave(), whole, rtol=0, atol=1e-6)
        assert st.samples == whole.size
        np.testing.assert_array_equal(st.codes(), _reference_codes(codec, whole, codec.chunk_samples))


def test_only_the_needed_span_is_decoded(stereo_flac, monkeypatch):
    """A segment near the end of a FLAC costs decoding that segment (plus a block), not the
    recording before it."""
    read = []
    real_read = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        read.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    sink = _Collect()
    assert stream_segments(stereo_flac, [Segment(11.0, 12.5)], [sink]) == [None]
    assert 1.5 * SR <= sum(read) <= 1.5 * SR + (1 << 18)
    assert sum(read) < 11.0 * SR  # sequential decoding would read 12.5 s
    assert sink.wave().size == _whole_segment(stereo_flac, 11.0, 12.5).size


def _pyav_segment(path: str, start: float, end: float | None) -> np.ndarray:
    """The segment of a file decoded whole by PyAV directly and resampled whole (independent of
    megatron_soda's sources and streams)."""
    with av.open(path) as container:
        frames = [f.to_ndarray().astype(np.float32) for f in container.decode(audio=0)]
        sr = container.streams.audio[0].rate
    x = np.concatenate(frames, axis=1).mean(axis=0)
    b = x.size if end is None else int(round(end * sr))
    return soxr.resample(x[int(round(start * sr)):b], sr, 24000, quality="HQ").astype(np.float32)


def test_ffmpeg_source_streams_like_a_whole_decode(tmp_path):
    """AAC in M4A (FFmpeg path): streamed segments equal the file decoded whole by PyAV."""
    path = str(tmp_path / "rec.m4a")
    x = _signal(6.0, SR, 4)
    encode(tmp_path / "rec.m4a", x, SR, "ipod", "aac", SR)
    segments = [Segment(0.2, 2.5), Segment(2.5, None)]
    sinks = [_Collect() for _ in segments]
    assert stream_segments(path, segments, sinks) == [None, None]
    for sink, segment in zip(sinks, segments):
        want = _pyav_segment(path, segment.start, segment.end)
        got = sink.wave()
        assert abs(got.size - want.size) <= 1  # sample rounding at the cut
        n = min(got.size, want.size)
        np.testing.assert_allclose(got[:n], want[:n], atol=1e-5)


def test_bad_segments_and_sources_are_rejected_with_their_reasons(tmp_path):
    """Per-segment problems come back per segment (the messages ``decode_segments`` gives, which
    is built on the same stream), whole-source problems raise."""
    x = _signal(3.0, 24000, 2)
    x[30000:30010] = np.nan
    path = str(tmp_path / "nan.wav")
    sf.write(path, x, 24000, subtype="FLOAT")
    segments = [Segment(0.0, 1.0), Segment(1.0, 2.0), Segment(2.5, 4.0), Segment(2.0, 2.0)]
    codec = _codec(0, 2)
    enc = PieceEncoder(codec)
    got = encode_segments(enc, path, segments)
    enc.flush()
    assert not isinstance(got[0], AudioError)
    np.testing.assert_array_equal(got[0].codes(), codec.encode([x[:24000]])[0])  # 24 kHz already
    reasons = ["[1.00s-2.00s]: contains NaN or Inf samples",
               "[2.50s-4.00s]: segment ends past the end of the audio (3.00s)",
               "[2.00s-2.00s]: empty segment (end <= start)"]
    for g, reason in zip(got[1:], reasons):
        assert isinstance(g, AudioError) and str(g) == f"{path} {reason}"
    truncated = str(tmp_path / "cut.wav")
    sf.write(truncated, x[:24000], 24000, subtype="PCM_16")
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) - 20000)
    with pytest.raises(AudioError, match="truncated WAV"):
        encode_segments(PieceEncoder(codec), truncated, [Segment()])


# A fresh interpreter: warm up on a codec piece, then encode the long recording through the
# codec stage's job function, as one utterance or as 10-s utterances; ru_maxrss growth.
_MEASURE = """
import json, resource, sys
import torch
from megatron_soda.data import codec_workers as cw, encode_stage as es
from megatron_soda.data.records import AudioRef, Recording, Utterance
path, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
cw._init_worker(es.EncodeConfig(codec="random:tiny:0", cache_codebooks=8, chunk_seconds=10.0), 1)
def job(spans):
    utts = [Utterance(f"u{i}", "", AudioRef(path=path, start=a, end=b, name=path))
            for i, (a, b) in enumerate(spans)]
    return cw.encode_job([Recording("r", "manifest", utts)])
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
warm = job([(None, 25.0), (25.0, 35.0)])
assert not warm["errors"], warm["errors"]
if mode == "whole":
    spans = [(None, None)]
else:
    spans = [(i * 10.0, i * 10.0 + 10.0) for i in range(int(seconds // 10))]
before = peak()
out = job(spans)
growth = peak() - before
assert not out["errors"], out["errors"]
seconds = sum(u[0] for u in out["encoded"][0])
frames = sum(u[1].shape[1] for u in out["encoded"][0])
print(json.dumps({"growth": growth, "seconds": seconds, "frames": frames}))
"""


def test_long_recording_peak_memory_is_bounded(tmp_path):
    """Encoding 16 minutes of 44.1 kHz audio through the codec stage, as one utterance or as 96
    utterances of 10 s, grows the peak RSS by far less than the recording's 24 kHz waveform
    (88 MiB; the source-rate one is 161 MiB): what is held is a codec piece (10 s here) per
    open utterance, not the recording.  Measured at 12 minutes: 0.1-11 MiB of growth (not
    growing with the length, 3 to 24 minutes); before streaming, 93 MiB (one utterance) and
    76 MiB (10-s utterances)."""
    seconds = 960.0
    path = str(tmp_path / "long.wav")
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        loop = _signal(30.0, SR, 5)
        for _ in range(int(seconds // 30)):
            f.write(loop)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    wave_bytes = seconds * 24000 * 4
    for mode in ("whole", "segments"):  # one utterance; 72 utterances of 10 s
        res = subprocess.run(
            [sys.executable, "-c", _MEASURE, path, str(seconds), mode],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        m = json.loads(res.stdout.strip().splitlines()[-1])
        assert m["seconds"] == pytest.approx(seconds, abs=1e-3)
        assert m["frames"] == seconds * 12.5
        assert m["growth"] < wave_bytes / 4, f"{mode}: peak RSS grew by {m['growth'] / 2**20:.1f} MiB"
