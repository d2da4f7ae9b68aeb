"""Long recordings in bounded memory: decode, resample and encode a stream, piece by piece.

A recording is read once, in decoder blocks; each requested segment's samples are resampled
to 24 kHz by a streaming soxr resampler as they arrive (bit-identical to resampling the whole
segment at once, whatever the block sizes) and handed to a *sink* (:class:`WaveSink`) instead
of being collected.  The codec's sink (:class:`CodesStream`) cuts what it receives into the
codec's pieces (``MimiCodec.chunk_samples``, 60 s for SODA) and encodes each piece as soon as it
is complete, keeping only the codes.  Mimi encodes a piece independently of every other piece
(:mod:`megatron_soda.audio.codec`), so the codes are identical to encoding the whole waveform
at once: no Mimi streaming state is needed for identity, and memory is bounded by one piece
(one batch of pieces on a GPU), not by the recording's length.

:func:`stream_segments` is the one pass over a source that every decode goes through
(:func:`megatron_soda.audio.io.decode_segments` is it with collecting sinks), and the one owner
of the per-source and per-segment checks (truncation against the container and the metadata,
segments past the end, empty segments, NaN or Inf samples): a segment's sink may have received
audio before its problem is known (a truncated file is discovered at its end), so callers use a
sink's result only when the segment's entry in the returned list is None.  A ``WAV``/``FLAC``
source read by libsndfile is first positioned at the earliest segment start (sample-exact
seeking, :meth:`megatron_soda.audio.decoders.SndfileSource.seek`), so only the needed span is
decoded; other sources are decoded from their start, samples before a segment dropped block by
block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import soxr

from megatron_soda.audio.decoders import DecodeError
from megatron_soda.audio.sources import (
    LENGTH_SLACK_REL,
    LENGTH_SLACK_S,
    TARGET_SAMPLE_RATE,
    AudioError,
    Segment,
    describe,
    open_source,
)

if TYPE_CHECKING:
    from megatron_soda.audio.codec import MimiCodec


class WaveSink(Protocol):
    """Receives one segment's 24 kHz mono float32 samples, in order, in pieces; ``close`` is
    called once, as soon as the segment is complete (its end reached, or the pass over), so a
    sink can finish its work then instead of at the end of the recording."""

    def write(self, samples: np.ndarray) -> None: ...

    def close(self) -> None: ...


class _Span:
    """One segment: source-rate pieces in, target-rate pieces out to its sink."""

    def __init__(self, start: int, end: int | None, rates: tuple[int, int] | None, sink: WaveSink):
        self.start, self.end, self.sink = start, end, sink
        self.taken, self.finite = 0, True
        self._rates = rates  # None when no resampling is needed
        self._stream = None  # made at the first piece, dropped at the last
        self.done = False

    def add(self, piece: np.ndarray) -> None:
        self.taken += piece.size
        if not self.finite or self.done:
            return
        if not np.isfinite(piece).all():
            self.finite, self._stream, self._rates = False, None, None
            self.finish()
            return
        if self._rates is None:
            self.sink.write(piece)
        else:
            if self._stream is None:
                self._stream = soxr.ResampleStream(*self._rates, 1, "float32", "HQ")
            out = self._stream.resample_chunk(piece, last=False)
            if out.size:
                self.sink.write(out)
        if self.end is not None and self.start + self.taken >= self.end:
            self.finish()

    def finish(self) -> None:
        """The segment is complete: flush the resampler and close the sink (once)."""
        if self.done:
            return
        self.done = True
        if self._stream is not None:
            out = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
            self._stream = None
            if out.size:
                self.sink.write(out)
        self.sink.close()


def stream_segments(
    src: str | bytes,
    segments: Sequence[Segment],
    sinks: Sequence[WaveSink],
    name: str | None = None,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    expected_duration: float | None = None,
) -> list[AudioError | None]:
    """Decode ``segments`` of one source in one pass, writing each one's audio (mono float32
    at ``target_sample_rate``) to the matching sink as it is decoded.

    Returns, per segment, None (its sink received all of it) or the :class:`AudioError` that
    rejects it.  Raises :class:`AudioError` when the whole source is unusable."""
    if len(segments) != len(sinks):
        raise ValueError(f"{len(segments)} segments but {len(sinks)} sinks")
    where = describe(src, name)
    with open_source(src, where) as source:
        return _stream(source, segments, sinks, where, target_sample_rate, expected_duration)


def _stream(source, segments, sinks, where, target_sample_rate, expected_duration):
    sr, declared = source.sample_rate, source.declared
    if sr <= 0:
        raise AudioError(f"{where}: invalid sample rate {sr}")
    rates = None if sr == target_sample_rate else (sr, target_sample_rate)
    spans = []
    for seg, sink in zip(segments, sinks):
        a = 0 if seg.start is None else int(round(seg.start * sr))
        b = None if seg.end is None else int(round(seg.end * sr))
        spans.append(_Span(a, b, rates, sink))
    need_to = None if any(s.end is None for s in spans) else max((s.end for s in spans), default=0)
    pos = source.seek(min(s.start for s in spans)) if spans else 0
    blocks = source.blocks()
    try:
        for mono in blocks:
            for s in spans:
                lo = max(s.start, pos)
                hi = pos + mono.shape[0] if s.end is None else min(s.end, pos + mono.shape[0])
                if hi > lo:
                    s.add(mono[lo - pos : hi - pos])
            pos += mono.shape[0]
            if need_to is not None and pos >= need_to:
                break
    except DecodeError as e:
        raise AudioError(f"{where}: decoding failed after {pos / sr:.2f}s ({e})") from e
    finally:
        blocks.close()  # stop the decoder before its source is closed
    for s in spans:
        s.finish()
    return _verdicts(spans, pos, need_to, sr, declared, where, expected_duration)


def _verdicts(spans, total, need_to, sr, declared, where, expected_duration):
    """The checks once the pass is over: raise for the source, or one verdict per span."""
    reached_end = need_to is None or total < need_to
    if total == 0:
        raise AudioError(f"{where}: no audio samples")
    short = total < declared * (1 - LENGTH_SLACK_REL) - LENGTH_SLACK_S * sr
    if reached_end and declared > 0 and short:
        raise AudioError(
            f"{where}: truncated (decoded {total / sr:.2f}s of a declared {declared / sr:.2f}s)"
        )
    if (
        reached_end
        and expected_duration is not None
        and total / sr < expected_duration * (1 - LENGTH_SLACK_REL) - LENGTH_SLACK_S
    ):
        raise AudioError(
            f"{where}: truncated or wrong file (decoded {total / sr:.2f}s, metadata says "
            f"{expected_duration:.2f}s)"
        )
    out: list[AudioError | None] = []
    for s in spans:
        a, b = s.start, s.end
        label = f"{where} [{a / sr:.2f}s-{'end' if b is None else f'{b / sr:.2f}s'}]"
        if b is not None and b > total + LENGTH_SLACK_S * sr:
            out.append(
                AudioError(f"{label}: segment ends past the end of the audio ({total / sr:.2f}s)")
            )
        elif b is not None and b <= a:
            out.append(AudioError(f"{label}: empty segment (end <= start)"))
        elif s.taken == 0:
            out.append(AudioError(f"{label}: empty segment"))
        elif not s.finite:
            out.append(AudioError(f"{label}: contains NaN or Inf samples"))
        else:
            out.append(None)
    return out


# ------------------------------------------------------------------ encoding as audio arrives
class PieceEncoder:
    """Encodes codec pieces as they complete, batching them exactly as ``MimiCodec.encode``
    always has: pieces in arrival order, a batch closed when the next piece would take the
    padded batch past ``codec.batch_samples`` (one piece per batch on CPU).  A batch is run as
    soon as no further piece could join it, so at most one batch of pieces is held."""

    def __init__(self, codec: MimiCodec) -> None:
        self.codec = codec
        self._batch: list[tuple[CodesStream, np.ndarray]] = []
        self._longest = 0

    def stream(self) -> CodesStream:
        """A new sink whose audio is one waveform to encode."""
        return CodesStream(self)

    def submit(self, stream: CodesStream, piece: np.ndarray) -> None:
        c = self.codec
        n = c.num_frames(piece.size) * c.samples_per_frame
        if self._batch and max(self._longest, n) * (len(self._batch) + 1) > c.batch_samples:
            self._run()
        self._batch.append((stream, piece))
        self._longest = max(self._longest, n)
        stream.pending += 1
        # any further piece would close this batch anyway (max(longest, n) >= longest)
        if self._longest * (len(self._batch) + 1) > c.batch_samples:
            self._run()

    def flush(self) -> None:
        """Encode what is queued (call once every stream is closed)."""
        if self._batch:
            self._run()

    def _run(self) -> None:
        batch, self._batch, self._longest = self._batch, [], 0
        for (stream, _), codes in zip(batch, self.codec._encode_batch([p for _, p in batch])):
            stream.add_codes(codes)


class CodesStream:
    """A :class:`WaveSink` that encodes: samples are cut into the codec's pieces, each piece
    is encoded once complete (the last, shorter one at :meth:`close`); only codes are kept."""

    def __init__(self, encoder: PieceEncoder) -> None:
        self._encoder = encoder
        self._size = encoder.codec.chunk_samples
        # the current piece as the copies it arrived in: memory sized to what was written (a
        # buffer of a whole piece per stream, made up front, left a 10 s utterance's pages of
        # a 60 s buffer resident in the heap for every utterance of a long recording)
        self._parts: list[np.ndarray] = []
        self._fill = 0
        self._codes: list[np.ndarray] = []
        self.samples = 0  # written so far
        self.pending = 0  # pieces submitted, codes not yet back
        self.closed = False

    def write(self, samples: np.ndarray) -> None:
        if self.closed:
            raise ValueError("write to a closed CodesStream")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples += x.size
        i = 0
        while i < x.size:
            take = min(self._size - self._fill, x.size - i)
            self._parts.append(x[i : i + take].copy())
            self._fill += take
            i += take
            if self._fill == self._size:
                self._submit()

    def _submit(self) -> None:
        parts, self._parts, self._fill = self._parts, [], 0
        piece = parts[0] if len(parts) == 1 else np.concatenate(parts)
        del parts
        self._encoder.submit(self, piece)

    def close(self) -> None:
        """The waveform is complete: its last partial piece is queued for encoding."""
        if not self.closed and self._fill:
            self._submit()
        self.closed = True

    def add_codes(self, codes: np.ndarray) -> None:
        self._codes.append(codes)
        self.pending -= 1

    def codes(self) -> np.ndarray:
        """``int16 [num_codebooks, ceil(samples / 1920)]`` (after :meth:`close` and the
        encoder's ``flush``)."""
        if not self.closed or self.pending:
            raise RuntimeError("codes asked for before the stream was closed and flushed")
        if not self._codes:
            return np.zeros((self._encoder.codec.num_codebooks, 0), np.int16)
        return np.concatenate(self._codes, axis=1)


def encode_segments(
    encoder: PieceEncoder,
    src: str | bytes,
    segments: Sequence[Segment],
    name: str | None = None,
    expected_duration: float | None = None,
) -> list[CodesStream | AudioError]:
    """Decode, resample and encode ``segments`` of one source in one streaming pass: per
    segment a closed :class:`CodesStream` (``samples``, and ``codes()`` once ``encoder`` is
    flushed) or the :class:`AudioError` that rejects it.  Memory: a codec piece per segment
    open at once plus the encoder's one batch, not the recording.  Sources of one job may share
    ``encoder`` (so a GPU batches their pieces together).  Raises :class:`AudioError` for an
    unusable source."""
    streams = [encoder.stream() for _ in segments]
    verdicts = stream_segments(src, segments, streams, name, expected_duration=expected_duration)
    return [stream if v is None else v for v, stream in zip(verdicts, streams)]
