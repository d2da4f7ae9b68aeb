"""Codes -> sound: Mimi decoding in overlapping chunks, and an atomic WAV writer.

Used by generation (``megatron_soda.generate.audio_out``) and by ``inspect_shards.py
--to-wav`` to listen to training data.

Mimi's decoder is causal (causal transposed convolutions, a causal decoder transformer with a
sliding window), so the samples of frame ``t`` depend only on frames ``<= t``.  Long code
sequences are decoded in chunks of ``chunk_frames`` frames, each decoded together with the
``overlap_frames`` frames before it, of which only the chunk's own samples are kept.  With the
whole history as overlap this is the whole decode up to float rounding; with less, the
transformer's attention to the frames left out is lost, and the chunk's first samples differ
slightly (tests/test_generate_audio.py measures both).  Defaults: 60 s chunks (SODA's encode
pieces) with 10 s of context (the decoder transformer's 250-step window at 25 Hz).
"""

from __future__ import annotations

import os

import numpy as np

from megatron_soda.audio.codec import SAMPLE_RATE, SAMPLES_PER_FRAME, MimiCodec

CHUNK_FRAMES = 750  # 60 s
OVERLAP_FRAMES = 125  # 10 s


def codes_to_wave(
    codec: MimiCodec,
    codes: np.ndarray,
    chunk_frames: int = CHUNK_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
) -> np.ndarray:
    """Codes ``[n_cb, frames]`` -> 24 kHz mono float32 of ``frames * 1920`` samples."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [codebooks, frames], got shape {codes.shape}")
    if chunk_frames < 1 or overlap_frames < 0:
        raise ValueError("chunk_frames must be >= 1 and overlap_frames >= 0")
    frames = codes.shape[1]
    if frames == 0:
        return np.zeros(0, dtype=np.float32)
    pieces = []
    for start in range(0, frames, chunk_frames):
        end = min(frames, start + chunk_frames)
        first = max(0, start - overlap_frames)
        wave = codec.decode(codes[:, first:end])
        pieces.append(wave[(start - first) * SAMPLES_PER_FRAME : (end - first) * SAMPLES_PER_FRAME])
    out = np.concatenate(pieces).astype(np.float32, copy=False)
    if out.size != frames * SAMPLES_PER_FRAME:
        raise RuntimeError(f"decoded {out.size} samples for {frames} frames")
    return out


def write_wav(path: str, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV (clipped to [-1, 1]), written to a temporary sibling and renamed over
    ``path``: a reader never sees a partial file."""
    import soundfile as sf

    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        sf.write(f, wave, sample_rate, format="WAV", subtype="PCM_16")
    os.replace(tmp, path)
