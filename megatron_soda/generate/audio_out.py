"""Generated codes -> 24 kHz WAV (the decoding itself lives in :mod:`megatron_soda.audio.synthesis`,
shared with ``inspect_shards.py --to-wav``)."""

from __future__ import annotations

import numpy as np

from megatron_soda.audio.codec import SAMPLE_RATE, MimiCodec
from megatron_soda.audio.synthesis import CHUNK_FRAMES, OVERLAP_FRAMES, codes_to_wave, write_wav

__all__ = ["CHUNK_FRAMES", "OVERLAP_FRAMES", "SAMPLE_RATE", "codes_to_wave", "write_wav",
           "write_generation_wav"]


def write_generation_wav(
    path: str,
    codec: MimiCodec,
    codes: np.ndarray,
    chunk_frames: int = CHUNK_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
) -> float:
    """Decode ``codes [n_cb, frames]`` and write ``path`` atomically; returns the seconds."""
    wave = codes_to_wave(codec, codes, chunk_frames, overlap_frames)
    write_wav(path, wave, SAMPLE_RATE)
    return wave.size / SAMPLE_RATE
