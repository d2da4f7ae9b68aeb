"""Audio decoding: any common format, rate, channel count and bit depth -> 24 kHz mono float32.

Two decoders, chosen by the content of the source (its first bytes), never by its name
(:func:`megatron_soda.audio.decoders.choose_decoder`):

* libsndfile (``soundfile``) for RIFF/WAVE, FLAC, Ogg (Vorbis, Opus), MP3 and anything not
  recognised; when libsndfile rejects a source it is handed to FFmpeg;
* FFmpeg through PyAV (:mod:`megatron_soda.audio.decoders`) for ISO-BMFF (MP4/M4A: AAC,
  ALAC, ...), EBML (WebM/Matroska: Opus, Vorbis, ...) and raw ADTS AAC.

Both decode in blocks; channels are averaged, and each segment is resampled by soxr's
streaming resampler as its blocks arrive (bit-identical to resampling it whole).  Segments of
one source are cut in a single sequential pass, so utterances of an hour-long recording cost
one decode and hold only their 24 kHz result, and there is no reliance on (fuzzy) MP3 or AAC
seeking.  Lengths are checked against what the container declares and against metadata, so
truncation is caught.

This module is the public face; the pass itself is
:func:`megatron_soda.audio.streaming.stream_segments` (here with sinks that collect), and a
source is opened, once, by :func:`megatron_soda.audio.sources.open_source`.  Every failure
raises :class:`AudioError` with a one-line reason that names the source, so the caller can log
and skip exactly that input.  A path that is not a regular file (a FIFO, a device, a socket, a
directory) is refused before it is opened, and the decoders read the file that was checked, so
a manifest cannot hang the run or read ``/dev/zero`` forever.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr

from megatron_soda.audio.sources import TARGET_SAMPLE_RATE, AudioError, Segment
from megatron_soda.audio.streaming import stream_segments

__all__ = [
    "TARGET_SAMPLE_RATE",
    "AudioError",
    "Segment",
    "decode_segments",
    "load_audio",
    "resample",
]


class _Collect:
    """A sink that keeps what it is given: one segment's 24 kHz waveform."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []

    def write(self, samples: np.ndarray) -> None:
        self._parts.append(samples)

    def close(self) -> None:
        pass

    def result(self) -> np.ndarray:
        wave = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        self._parts = []  # the pieces are not held next to their concatenation
        return np.ascontiguousarray(wave, dtype=np.float32)


def decode_segments(
    src: str | bytes,
    segments: Sequence[Segment] = (Segment(),),
    name: str | None = None,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    expected_duration: float | None = None,
) -> list[np.ndarray | AudioError]:
    """Decode ``segments`` of one source to mono float32 at ``target_sample_rate``.

    Returns one array per segment, or an :class:`AudioError` for a segment that is bad on
    its own (out of range, empty, NaN).  Raises :class:`AudioError` when the whole source is
    unusable (missing, empty, not audio, truncated, undecodable).
    """
    sinks = [_Collect() for _ in segments]
    verdicts = stream_segments(
        src, segments, sinks, name, target_sample_rate, expected_duration=expected_duration
    )
    return [sink.result() if v is None else v for v, sink in zip(verdicts, sinks)]


def resample(
    wave: np.ndarray, sample_rate: int, target_sample_rate: int = TARGET_SAMPLE_RATE
) -> np.ndarray:
    if sample_rate == target_sample_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return soxr.resample(
        wave.astype(np.float32), sample_rate, target_sample_rate, quality="HQ"
    ).astype(np.float32, copy=False)


def load_audio(
    src: str | bytes,
    start: float | None = None,
    end: float | None = None,
    name: str | None = None,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
) -> np.ndarray:
    """One segment (default: the whole source) as 24 kHz mono float32; raises AudioError."""
    (out,) = decode_segments(
        src, [Segment(start, end)], name=name, target_sample_rate=target_sample_rate
    )
    if isinstance(out, AudioError):
        raise out
    return out
