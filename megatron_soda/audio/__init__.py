"""Audio decoding and the Mimi codec."""

from megatron_soda.audio.codec import (
    FRAME_RATE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    CodecError,
    CodecSpec,
    MimiCodec,
    parse_codec_spec,
)
from megatron_soda.audio.io import AudioError, Segment, decode_segments, load_audio, resample

__all__ = [
    "FRAME_RATE",
    "SAMPLE_RATE",
    "SAMPLES_PER_FRAME",
    "AudioError",
    "CodecError",
    "CodecSpec",
    "MimiCodec",
    "Segment",
    "decode_segments",
    "load_audio",
    "parse_codec_spec",
    "resample",
]
