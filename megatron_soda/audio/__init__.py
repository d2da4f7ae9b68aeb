"""Audio decoding and the Mimi codec.

The names below load on first use (PEP 562): importing ``megatron_soda.audio.io`` (decoding) or
``megatron_soda.audio.codec_spec`` (codec specs) must not import torch, which only the codec
(:mod:`megatron_soda.audio.codec`) and the streaming encoder need."""

from __future__ import annotations

import importlib

_HOMES = {
    "FRAME_RATE": "codec",
    "SAMPLE_RATE": "codec",
    "SAMPLES_PER_FRAME": "codec",
    "MimiCodec": "codec",
    "CodecError": "codec_spec",
    "CodecSpec": "codec_spec",
    "parse_codec_spec": "codec_spec",
    "AudioError": "io",
    "Segment": "io",
    "decode_segments": "io",
    "load_audio": "io",
    "resample": "io",
    "CodesStream": "streaming",
    "PieceEncoder": "streaming",
    "encode_segments": "streaming",
    "stream_segments": "streaming",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
