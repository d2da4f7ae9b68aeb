"""Opening one audio source for decoding: the one place a path named by an input is opened.

A path is opened once, by :func:`megatron_soda.audio.files.open_regular` (regular files only: a
FIFO would hang the run, a device never end), and everything is read from that one file object:
its first bytes (which choose the decoder, see :func:`megatron_soda.audio.decoders.choose_decoder`),
its last bytes (the Ogg end-of-stream check) and the audio itself (libsndfile and FFmpeg are both
handed the file object).  The path is never opened again, so a file swapped for a FIFO or a
device after the check cannot reach a decoder.

Container checks here catch truncation libsndfile would not report (a WAV whose data chunk
runs past the end of the file, an Ogg stream without its end-of-stream page).  Every failure
is an :class:`AudioError` whose one-line reason names the source.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import soundfile as sf

from megatron_soda.audio.decoders import (
    SNDFILE,
    DecodeError,
    FFmpegSource,
    NotAudioError,
    SndfileSource,
    choose_decoder,
    is_mpeg_audio,
    short_reason,
)
from megatron_soda.audio.files import RefusedFile, open_regular

TARGET_SAMPLE_RATE = 24_000
# Tolerances when checking that audio is as long as its container or metadata claims.
LENGTH_SLACK_S = 0.05
LENGTH_SLACK_REL = 0.02


class AudioError(Exception):
    """An audio input that cannot be used; ``str(e)`` is the reason."""


@dataclass(frozen=True)
class Segment:
    """A span of a source in seconds (``None`` = from the start / to the end)."""

    start: float | None = None
    end: float | None = None


def describe(src: str | bytes, name: str | None) -> str:
    """How errors name a source: ``name``, else the path, else ``<bytes>``."""
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


def _open_file(src: str | bytes, where: str) -> BinaryIO:
    """The file every read of ``src`` goes through (bytes are wrapped, a path is opened once,
    regular files only: :mod:`megatron_soda.audio.files`)."""
    if isinstance(src, bytes):
        return io.BytesIO(src)
    try:
        return open_regular(src)
    except RefusedFile as e:
        raise AudioError(f"{where}: {e}") from None


def read_head(f: BinaryIO, where: str) -> tuple[bytes, int]:
    """The first 4 KiB and the size of an open source, left positioned at its start; an empty
    source is an :class:`AudioError`."""
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    if size == 0:
        raise AudioError(f"{where}: empty file (0 bytes)")
    head = f.read(4096)
    f.seek(0)
    return head, size


def _decoder(
    f: BinaryIO, shown: str, where: str, head: bytes, size: int
) -> SndfileSource | FFmpegSource:
    """The decoder the content of ``f`` (whose head is ``head``) calls for, after the container
    checks; ``shown`` is how libsndfile's messages name the source."""
    _check_wav_truncation(head, size, where)
    if head[:4] == b"OggS":
        f.seek(max(0, size - 65536))
        _check_ogg_truncation(f.read(), where)
        f.seek(0)
    sndfile_reason = None
    if choose_decoder(head) == SNDFILE:
        try:
            return SndfileSource(sf.SoundFile(f))
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            sndfile_reason = short_reason(e, f, shown)
        f.seek(0)
    try:
        return FFmpegSource(f)
    except NotAudioError as e:
        why = str(e) if sndfile_reason is None else f"libsndfile: {sndfile_reason}; {e}"
        raise AudioError(f"{where}: not a readable audio file ({why})") from e
    except DecodeError as e:  # a container FFmpeg reads, but with no usable audio stream
        raise AudioError(f"{where}: {e}") from e


@contextlib.contextmanager
def open_source(src: str | bytes, where: str) -> Iterator[SndfileSource | FFmpegSource]:
    """``src`` (a path or the bytes of a file) opened with the decoder its content calls for,
    after the checks above; closed (decoder, then file) when the block ends.  MP3 decoding runs
    with native stderr muted (see :func:`quiet_native_stderr`).  Raises :class:`AudioError`."""
    with _open_file(src, where) as f:
        head, size = read_head(f, where)
        shown = repr(src) if isinstance(src, str) else "<bytes>"
        with quiet_native_stderr() if is_mpeg_audio(head) else contextlib.nullcontext():
            source = _decoder(f, shown, where, head, size)
            try:
                yield source
            finally:
                source.close()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """libmpg123 prints recoverable frame warnings straight to fd 2 (millions of lines on a
    large corpus); real damage is caught by the length checks, so mute them."""
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
