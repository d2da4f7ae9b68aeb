"""The codes Mimi gives digital silence, measured once per codec.

Flattened audio models can run on in silence instead of closing the span
(../shared/SODA_SPEC.md section 6); the silence stop rule recognises those frames by the codes
the codec itself produces for an all-zero input.  Mimi's convolutions and encoder transformer
are causal, so after a short transient every frame of digital silence gets the same codes:
we encode :data:`PROBE_SECONDS` of zeros and keep, per codebook, the codes of the frames after
the first :data:`SKIP_FRAMES` (the steady state; normally one code each).  Results are cached
in memory by :func:`megatron_soda.audio.codec.codec_fingerprint` (spec, piece length,
precision and, for pretrained codecs, the weight files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_soda.audio.codec import SAMPLE_RATE, MimiCodec, codec_fingerprint

PROBE_SECONDS = 6.0
SKIP_FRAMES = 25  # 2 s: past the causal transient

_CACHE: dict[tuple[str, int], SilenceCodes] = {}


@dataclass(frozen=True)
class SilenceCodes:
    codes: np.ndarray  # int [n_cb]: the most frequent steady-state code of each codebook
    allowed: tuple[frozenset[int], ...]  # every steady-state code of each codebook
    fingerprint: str

    @property
    def num_codebooks(self) -> int:
        return len(self.allowed)

    def is_silent(self, frame: np.ndarray, codebooks: int = 1) -> bool:
        """Whether a frame's codes ``[n_cb]`` (its first ``codebooks`` of them) are silence's."""
        k = min(codebooks, self.num_codebooks, len(frame))
        return all(int(frame[c]) in self.allowed[c] for c in range(k))

    def to_dict(self) -> dict:
        return {"codes": [int(c) for c in self.codes],
                "allowed": [sorted(a) for a in self.allowed], "fingerprint": self.fingerprint}


def measure_silence(codec: MimiCodec) -> SilenceCodes:
    """Encode zeros and read off the steady-state codes (no cache)."""
    (codes,) = codec.encode([np.zeros(int(PROBE_SECONDS * SAMPLE_RATE), dtype=np.float32)])
    steady = np.asarray(codes[:, SKIP_FRAMES:], dtype=np.int64)
    allowed = tuple(frozenset(int(c) for c in row) for row in steady)
    mode = np.array([np.bincount(row).argmax() for row in steady], dtype=np.int64)
    return SilenceCodes(mode, allowed, _fingerprint(codec))


def _fingerprint(codec: MimiCodec) -> str:
    chunk_s = codec.chunk_samples / SAMPLE_RATE
    return codec_fingerprint(codec.spec, chunk_seconds=chunk_s, precision=codec.precision)


def silence_codes(codec: MimiCodec) -> SilenceCodes:
    """:func:`measure_silence`, once per codec fingerprint and codebook count."""
    key = (_fingerprint(codec), codec.num_codebooks)
    if key not in _CACHE:
        _CACHE[key] = measure_silence(codec)
    return _CACHE[key]
