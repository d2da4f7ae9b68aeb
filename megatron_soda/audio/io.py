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
seeking.  Lengths are checked
against what the container declares and against metadata, so truncation is caught.

Every failure raises :class:`AudioError` with a one-line reason that names the source, so
the caller can log and skip exactly that input.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from megatron_soda.audio.decoders import (
    SNDFILE,
    DecodeError,
    FFmpegSource,
    NotAudioError,
    choose_decoder,
    is_mpeg_audio,
)

TARGET_SAMPLE_RATE = 24_000
_BLOCK = 1 << 18  # frames per sequential read
# Tolerances when checking that audio is as long as its container or metadata claims.
_LENGTH_SLACK_S = 0.05
_LENGTH_SLACK_REL = 0.02


class AudioError(Exception):
    """An audio input that cannot be used; ``str(e)`` is the reason."""


@dataclass(frozen=True)
class Segment:
    """A span of a source in seconds (``None`` = from the start / to the end)."""

    start: float | None = None
    end: float | None = None


def _describe(src: str | bytes, name: str | None) -> str:
    return name or (src if isinstance(src, str) else "<bytes>")


def _check_wav_truncation(head: bytes, total_size: int, where: str) -> None:
    """libsndfile silently shortens a truncated WAV; compare the data chunk with the file size."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return
    endian = "<" if head[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack(endian + "I", head[pos + 4 : pos + 8])[0]
        if cid == b"data":
            if size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                return
            if pos + 8 + size > total_size:
                raise AudioError(
                    f"{where}: truncated WAV (data chunk declares {size} bytes, "
                    f"{max(0, total_size - pos - 8)} present)"
                )
            return
        pos += 8 + size + (size & 1)


def _check_ogg_truncation(tail: bytes, where: str) -> None:
    """A complete Ogg stream ends with a page whose header has the end-of-stream flag."""
    last = tail.rfind(b"OggS")
    if last >= 0 and last + 5 < len(tail) and not tail[last + 5] & 0x04:
        raise AudioError(f"{where}: truncated Ogg stream (last page has no end-of-stream flag)")


def _read_head(src: str | bytes, where: str) -> tuple[bytes, int]:
    """The first 4 KiB and the size of a source; a missing, directory or empty source is an
    :class:`AudioError`."""
    if isinstance(src, bytes):
        size, head = len(src), src[:4096]
    else:
        if not os.path.exists(src):
            raise AudioError(f"{where}: no such file")
        if os.path.isdir(src):
            raise AudioError(f"{where}: is a directory, not an audio file")
        size = os.path.getsize(src)
        with open(src, "rb") as f:
            head = f.read(4096)
    if size == 0:
        raise AudioError(f"{where}: empty file (0 bytes)")
    return head, size


def _read_tail(src: str | bytes, size: int) -> bytes:
    if isinstance(src, bytes):
        return src[-65536:]
    with open(src, "rb") as f:
        f.seek(max(0, size - 65536))
        return f.read()


class _SndfileSource:
    """libsndfile behind the interface of :class:`~megatron_soda.audio.decoders.FFmpegSource`."""

    def __init__(self, f: sf.SoundFile):
        self._f = f
        self.sample_rate, self.declared = f.samplerate, f.frames

    def blocks(self):
        try:
            while True:
                block = self._f.read(_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DecodeError(_short(e)) from e

    def close(self) -> None:
        self._f.close()


def _open(src: str | bytes, where: str, head: bytes, size: int) -> _SndfileSource | FFmpegSource:
    """Open a source whose head was read by :func:`_read_head` with the decoder its content
    calls for, after the container checks that catch truncation libsndfile would not report."""
    _check_wav_truncation(head, size, where)
    if head[:4] == b"OggS":
        _check_ogg_truncation(_read_tail(src, size), where)
    sndfile_reason = None
    if choose_decoder(head) == SNDFILE:
        try:
            return _SndfileSource(sf.SoundFile(io.BytesIO(src) if isinstance(src, bytes) else src))
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            sndfile_reason = _short(e)
    try:
        return FFmpegSource(src)
    except NotAudioError as e:
        why = str(e) if sndfile_reason is None else f"libsndfile: {sndfile_reason}; {e}"
        raise AudioError(f"{where}: not a readable audio file ({why})") from e
    except DecodeError as e:  # a container FFmpeg reads, but with no usable audio stream
        raise AudioError(f"{where}: {e}") from e


@contextlib.contextmanager
def _quiet_native_stderr():
    """libmpg123 prints recoverable frame warnings straight to fd 2 (millions of lines on a
    large corpus); real damage is caught by the length checks here, so mute them."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_OBJECT_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _short(e: Exception) -> str:
    """One line; no memory addresses (error reports must be identical across runs)."""
    msg = _OBJECT_REPR.sub("<bytes>", str(e).replace("\n", " ").strip())
    return msg[:200] if msg else type(e).__name__


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
    where = _describe(src, name)
    head, size = _read_head(src, where)
    with _quiet_native_stderr() if is_mpeg_audio(head) else contextlib.nullcontext():
        source = _open(src, where, head, size)
        try:
            return _decode_segments(source, segments, where, target_sample_rate, expected_duration)
        finally:
            source.close()


def _decode_segments(
    source: _SndfileSource | FFmpegSource,
    segments: Sequence[Segment],
    where: str,
    target_sample_rate: int,
    expected_duration: float | None,
) -> list[np.ndarray | AudioError]:
    sr, declared = source.sample_rate, source.declared
    if sr <= 0:
        raise AudioError(f"{where}: invalid sample rate {sr}")
    spans = []
    for seg in segments:
        a = 0 if seg.start is None else int(round(seg.start * sr))
        b = None if seg.end is None else int(round(seg.end * sr))
        spans.append((a, b))
    need_to = None if any(b is None for _, b in spans) else max(b for _, b in spans)
    outs = [_SegmentOut(a, b, sr, target_sample_rate) for a, b in spans]
    pos = 0
    blocks = source.blocks()
    try:
        for mono in blocks:
            for out in outs:
                lo = max(out.start, pos)
                hi = pos + mono.shape[0] if out.end is None else min(out.end, pos + mono.shape[0])
                if hi > lo:
                    out.add(mono[lo - pos : hi - pos])
            pos += mono.shape[0]
            if need_to is not None and pos >= need_to:
                break
    except DecodeError as e:
        raise AudioError(f"{where}: decoding failed after {pos / sr:.2f}s ({e})") from e
    finally:
        blocks.close()  # stop the decoder before its source is closed
    total = pos
    reached_end = need_to is None or pos < need_to
    if total == 0:
        raise AudioError(f"{where}: no audio samples")
    if (
        reached_end
        and declared > 0
        and total < declared * (1 - _LENGTH_SLACK_REL) - _LENGTH_SLACK_S * sr
    ):
        raise AudioError(
            f"{where}: truncated (decoded {total / sr:.2f}s of a declared {declared / sr:.2f}s)"
        )
    if (
        reached_end
        and expected_duration is not None
        and total / sr < expected_duration * (1 - _LENGTH_SLACK_REL) - _LENGTH_SLACK_S
    ):
        raise AudioError(
            f"{where}: truncated or wrong file (decoded {total / sr:.2f}s, metadata says "
            f"{expected_duration:.2f}s)"
        )
    results: list[np.ndarray | AudioError] = []
    for out in outs:
        a, b = out.start, out.end
        label = f"{where} [{a / sr:.2f}s-{'end' if b is None else f'{b / sr:.2f}s'}]"
        if b is not None and b > total + _LENGTH_SLACK_S * sr:
            results.append(
                AudioError(f"{label}: segment ends past the end of the audio ({total / sr:.2f}s)")
            )
            continue
        if b is not None and b <= a:
            results.append(AudioError(f"{label}: empty segment (end <= start)"))
            continue
        if out.taken == 0:
            results.append(AudioError(f"{label}: empty segment"))
            continue
        if not out.finite:
            results.append(AudioError(f"{label}: contains NaN or Inf samples"))
            continue
        results.append(out.result())
    return results


class _SegmentOut:
    """One segment's output, resampled as its pieces arrive (soxr's streaming resampler, whose
    output equals a one-shot resample of the whole segment): the source-rate audio of a long
    recording is never held, only the 24 kHz result."""

    def __init__(self, start: int, end: int | None, sample_rate: int, target_sample_rate: int):
        self.start, self.end = start, end
        self.taken, self.finite = 0, True
        self._parts: list[np.ndarray] = []
        self._rates = (
            None if sample_rate == target_sample_rate else (sample_rate, target_sample_rate)
        )
        self._stream = None  # made at the first piece, dropped at the last: few exist at once

    def add(self, piece: np.ndarray) -> None:
        self.taken += piece.size
        if not self.finite:
            return
        if not np.isfinite(piece).all():
            self.finite, self._parts, self._stream, self._rates = False, [], None, None
            return
        if self._rates is None:
            self._parts.append(piece)
            return
        if self._stream is None:
            self._stream = soxr.ResampleStream(*self._rates, 1, "float32", "HQ")
        self._parts.append(self._stream.resample_chunk(piece, last=False))
        if self.end is not None and self.start + self.taken >= self.end:
            self._flush()

    def _flush(self) -> None:
        if self._stream is not None:
            self._parts.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
            self._stream = None

    def result(self) -> np.ndarray:
        self._flush()
        wave = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        self._parts = []  # the pieces are not held next to their concatenation
        return np.ascontiguousarray(wave, dtype=np.float32)


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
