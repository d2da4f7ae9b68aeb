"""Audio for the tests: files encoded by FFmpeg (PyAV), and a deadline that turns a hang (a FIFO
opened for reading) into a failure."""

from __future__ import annotations

import contextlib
import signal
from fractions import Fraction

import av
import numpy as np
import soxr


def encode(path, x, sr, fmt, codec, rate, channels=1, options=None) -> bytes:
    """``x`` (mono) encoded by FFmpeg; with 2 channels the right one is silent."""
    y = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32) if rate != sr else x
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        ctx = stream.codec_context
        data = np.stack([y, np.zeros_like(y)]) if channels == 2 else y[None]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        fmt_name = ctx.codec.audio_formats[0].name
        resampler = av.AudioResampler(fmt_name, layout, rate, frame_size=ctx.frame_size or None)
        for f in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return path.read_bytes()


@contextlib.contextmanager
def deadline(seconds: int, what: str = "hung"):
    """A hang becomes a ``TimeoutError`` after ``seconds`` instead of a stuck test run."""

    def fail(*_):
        raise TimeoutError(f"still running after {seconds}s: {what}")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fail_codec_on(monkeypatch, samples: int, message: str) -> None:
    """Make the codec raise ``RuntimeError(message)`` on any batch holding a piece of exactly
    ``samples`` samples (an unforeseen failure of one clip's encoding)."""
    from megatron_soda.audio.codec import MimiCodec

    real = MimiCodec._encode_batch

    def encode_batch(self, waves, *args, **kwargs):
        if any(w.size == samples for w in waves):
            raise RuntimeError(message)
        return real(self, waves, *args, **kwargs)

    monkeypatch.setattr(MimiCodec, "_encode_batch", encode_batch)
