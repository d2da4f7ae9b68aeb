"""Which decoder reads a source, chosen from its first bytes, and the FFmpeg (PyAV) decoder.

libsndfile stays the decoder for what it reads well (WAV, FLAC, Ogg Vorbis/Opus, MP3): its
truncation behaviour is known and checked in :mod:`megatron_soda.audio.sources`.  What it cannot
read at all (AAC in MP4/M4A or as raw ADTS, anything in WebM/Matroska) goes to FFmpeg through
PyAV, whose wheels bundle FFmpeg's decoders.  The choice is made from the content, never from
the file name: corpora publish AAC under ``.wav`` names and Opus under ``.webm``/``.mka``.

:class:`FFmpegSource` decodes packet by packet and hands out mono float32 blocks, so an
hour-long file costs one sequential pass and a few blocks of memory, like the libsndfile path.
Both decoders are given the file object that :mod:`megatron_soda.audio.sources` opened and
checked (a regular file, never a path to open again), so the file read is the file checked, and
FFmpeg's own probing cannot use the extension either.  :class:`SndfileSource` puts libsndfile
behind the interface of :class:`FFmpegSource` (``sample_rate``, ``declared``, ``seek``,
``blocks``, ``close``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf

SNDFILE = "sndfile"
FFMPEG = "ffmpeg"

# Containers whose duration FFmpeg estimates from the bit rate (not declared by the file):
# a VBR stream would look truncated, so their length is not checked against it.
_ESTIMATED_DURATION_FORMATS = ("aac", "mp3")
_BLOCK = 1 << 18  # samples per block handed out (frames are coalesced up to this)
# libsndfile formats whose seek is sample-exact (PCM-like framing, or FLAC's own seek table
# search that decodes from the frame holding the sample)
_EXACT_SEEK_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC")
_OBJECT_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class DecodeError(Exception):
    """A decoder's one-line reason (the caller adds which source)."""


class NotAudioError(DecodeError):
    """FFmpeg cannot open the source as a container of audio: ``str(e)`` is FFmpeg's reason."""


def is_adts(head: bytes) -> bool:
    """ADTS AAC: a 12-bit 0xFFF sync whose 2-bit layer field is 00."""
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def is_mpeg_audio(head: bytes) -> bool:
    """MP3 (ID3 tag, or an MPEG audio frame sync: 11 set bits and a layer field other than 00)."""
    if head[:3] == b"ID3":
        return True
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0


def choose_decoder(head: bytes) -> str:
    """``"sndfile"`` or ``"ffmpeg"`` for a source starting with ``head``.

    RIFF/WAVE, fLaC, OggS, MP3 and anything unrecognised go to libsndfile (which falls back to
    FFmpeg when it rejects the source); ISO-BMFF (``ftyp`` at offset 4: MP4/M4A), EBML
    (WebM/Matroska) and ADTS AAC go straight to FFmpeg.
    """
    if head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or is_adts(head):
        return FFMPEG
    return SNDFILE


def ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's own message without errno and the '<none>' file name PyAV appends."""
    msg = getattr(e, "strerror", None) or str(e)
    return " ".join(str(msg).split())[:200] or type(e).__name__


def short_reason(e: Exception, file: object = None, shown: str = "<bytes>") -> str:
    """libsndfile's message on one line, with ``file`` (the object it was given) written as
    ``shown`` and no other object repr (error reports must be identical across runs: a file
    object's repr holds a memory address or a descriptor number)."""
    msg = str(e).replace("\n", " ").strip()
    if file is not None:
        msg = msg.replace(repr(file), shown)
    msg = _OBJECT_REPR.sub("<bytes>", msg)
    return msg[:200] if msg else type(e).__name__


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.float32:
        return arr
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    if arr.dtype.kind == "i":
        scale = float(2 ** (8 * arr.dtype.itemsize - 1))
        return (arr.astype(np.float64) / scale).astype(np.float32)
    return arr.astype(np.float32)


def frame_to_mono(frame) -> np.ndarray:
    """One decoded ``av.AudioFrame`` (any sample format, planar or packed) as mono float32,
    channels averaged."""
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    arr = _to_float(arr[:, : frame.samples])
    return arr.mean(axis=0, dtype=np.float32) if channels > 1 else arr[0]


class FFmpegSource:
    """An audio stream opened with FFmpeg: ``sample_rate``, ``declared`` length in samples (0 when
    the container does not declare one) and :meth:`blocks`.  Raises :class:`DecodeError`."""

    def __init__(self, file: BinaryIO):
        """``file``: an open, seekable binary file positioned at the start; the caller owns it
        (closes it after :meth:`close`)."""
        import av

        try:
            self._container = av.open(file, mode="r")
        except (av.error.FFmpegError, ValueError, OSError) as e:
            raise NotAudioError(f"FFmpeg: {ffmpeg_reason(e)}") from e
        try:
            self._setup()
        except DecodeError:
            self.close()
            raise

    def _setup(self) -> None:
        c = self._container
        if not c.streams.audio:
            kinds = sorted({s.type for s in c.streams})
            what = f"only {'/'.join(kinds)} streams" if kinds else "no streams"
            raise DecodeError(f"no audio stream ({what}; FFmpeg format {c.format.name})")
        self._stream = c.streams.audio[0]
        self.sample_rate = int(self._stream.codec_context.sample_rate or 0)
        if self.sample_rate <= 0:  # e.g. an ADTS header with no frame after it
            raise NotAudioError("FFmpeg: no sample rate")
        seconds = 0.0
        if not any(f in _ESTIMATED_DURATION_FORMATS for f in c.format.name.split(",")):
            if self._stream.duration and self._stream.time_base:
                seconds = float(self._stream.duration * self._stream.time_base)
            elif c.duration:
                seconds = c.duration / 1_000_000  # AV_TIME_BASE
        self.declared = int(round(seconds * self.sample_rate))

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks in stream order, one sequential pass (frames coalesced to
        about ``_BLOCK`` samples so callers do little per-block work)."""
        import av

        pending: list[np.ndarray] = []
        held = 0
        failure: DecodeError | None = None
        try:
            for packet in self._container.demux(self._stream):
                for frame in packet.decode():
                    if frame.sample_rate != self.sample_rate:
                        raise DecodeError(
                            f"sample rate changes mid-stream ({self.sample_rate} -> "
                            f"{frame.sample_rate} Hz)"
                        )
                    mono = frame_to_mono(frame)
                    pending.append(mono)
                    held += mono.size
                    if held >= _BLOCK:
                        yield np.concatenate(pending)
                        pending, held = [], 0
        except DecodeError as e:
            failure = e
        except (av.error.FFmpegError, ValueError) as e:
            failure = DecodeError(ffmpeg_reason(e))
        if pending:  # what decoded before a failure still counts (the caller reports where)
            yield np.concatenate(pending)
        if failure is not None:
            raise failure

    def seek(self, sample: int) -> int:
        """Compressed streams are not sought (AAC/Opus seeking lands near, not on, a sample):
        decoding starts at 0, the position returned."""
        return 0

    def close(self) -> None:
        self._container.close()


class SndfileSource:
    """libsndfile behind the interface of :class:`FFmpegSource`."""

    def __init__(self, f: sf.SoundFile):
        self._f = f
        self.sample_rate, self.declared = f.samplerate, f.frames

    def seek(self, sample: int) -> int:
        """Position a WAV/FLAC-like source at ``sample`` (inside its declared length) so that
        only what follows is decoded; the position reached (0 where the format's seek is not
        sample-exact or the seek fails, so decoding starts at the beginning)."""
        f = self._f
        if f.format not in _EXACT_SEEK_FORMATS or not 0 < sample < self.declared:
            return 0
        if not f.seekable():
            return 0
        try:
            return int(f.seek(sample))
        except (sf.LibsndfileError, RuntimeError):
            with contextlib.suppress(sf.LibsndfileError, RuntimeError):
                f.seek(0)
            return 0

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks of ``_BLOCK`` frames (channels averaged), one sequential pass."""
        try:
            while True:
                block = self._f.read(_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DecodeError(short_reason(e)) from e

    def close(self) -> None:
        self._f.close()
