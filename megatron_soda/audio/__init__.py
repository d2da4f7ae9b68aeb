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
from megatron_soda.audio.streaming import (
    CodesStream,
    PieceEncoder,
    encode_segments,
    stream_segments,
)

__all__ = [
    "FRAME_RATE",
    "SAMPLE_RATE",
    "SAMPLES_PER_FRAME",
    "AudioError",
    "CodecError",
    "CodecSpec",
    "CodesStream",
    "MimiCodec",
    "PieceEncoder",
    "Segment",
    "decode_segments",
    "encode_segments",
    "load_audio",
    "parse_codec_spec",
    "resample",
    "stream_segments",
]
