"""A path is checked once and read through the descriptor that was checked.

The race: ``open_regular`` checks that a path is a regular file, then the path is swapped for a
FIFO (a manifest's file replaced by another process).  A decoder that opened the path again
would open the FIFO and block forever waiting for a writer; the decoders must read the file
object that was checked instead.  The swap is made deterministic by doing it inside the check
(right after the real ``open_regular`` returns); a SIGALRM deadline turns a hang into a failure.
"""

import os
import pathlib
import stat

import numpy as np
import pytest
import soundfile as sf
import soxr
from helpers_audio import deadline, encode

import megatron_soda.audio.sources as sources
from megatron_soda.audio import load_audio
from megatron_soda.audio.files import open_regular

SR = 16_000


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _write(path: str, fmt: str, x: np.ndarray) -> None:
    if fmt in ("wav", "ogg"):
        sf.write(path, x, SR, format=fmt.upper())
        return
    encode(pathlib.Path(path), x, SR, "ipod", "aac", SR)  # AAC in M4A: the FFmpeg decoder


@pytest.mark.parametrize("fmt", ["wav", "ogg", "m4a"])
def test_a_path_swapped_for_a_fifo_after_the_check_is_not_opened_again(tmp_path, monkeypatch, fmt):
    x = _tone(2.0)
    path = str(tmp_path / f"a.{fmt}")
    _write(path, fmt, x)
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    swapped = []

    def check_then_swap(p: str):
        f = open_regular(p)  # the real check passes: a regular file
        os.replace(fifo, p)  # ... and now the path names a FIFO nobody writes to
        swapped.append(p)
        return f

    monkeypatch.setattr(sources, "open_regular", check_then_swap)
    with deadline(20):
        wave = load_audio(path)
    assert swapped == [path] and stat.S_ISFIFO(os.stat(path).st_mode)  # one open, then the swap
    # what was decoded is the checked file's audio
    if fmt == "wav":
        want = soxr.resample(x, SR, 24_000, quality="HQ")  # the signal written (16-bit PCM)
        np.testing.assert_allclose(wave, want, rtol=0, atol=1e-4)
    else:  # lossy: the right length and the tone's energy
        assert abs(wave.size - 2.0 * 24_000) <= 0.05 * 24_000
        assert 0.15 < float(np.sqrt(np.mean(wave[2400:-2400] ** 2))) < 0.25
