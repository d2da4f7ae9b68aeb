"""The SODA format, owned in one place: the token layout and token kinds, the documents, and
the shards (reading and the one validator).  The lowest layer of megatron_soda: numpy only
(torch only inside :func:`token_kinds_torch`)."""

from megatron_soda.format.documents import (
    INTERLEAVE_MODES,
    interleaved_document,
    interleaved_kind_counts,
    text_document,
    variants,
)
from megatron_soda.format.kinds import (
    KIND_ACOUSTIC,
    KIND_MARKER,
    KIND_NAMES,
    KIND_SEMANTIC,
    KIND_TEXT,
    count_kinds,
    token_kinds,
    token_kinds_torch,
)
from megatron_soda.format.layout import (
    AUDIO_END,
    AUDIO_START,
    CODEBOOK_SIZE,
    DEFAULT_NUM_CODEBOOKS,
    FRAME_RATE,
    MARKERS,
    MAX_CODEBOOKS,
    TEXT_END,
    TEXT_START,
    TokenLayout,
    layout_mismatch,
)
from megatron_soda.format.shards import (
    ShardError,
    ShardIndex,
    ShardSummary,
    read_document,
    read_index,
    shard_layout,
    shard_provenance,
    validate_shard,
)

__all__ = [
    "AUDIO_END",
    "AUDIO_START",
    "CODEBOOK_SIZE",
    "DEFAULT_NUM_CODEBOOKS",
    "FRAME_RATE",
    "INTERLEAVE_MODES",
    "KIND_ACOUSTIC",
    "KIND_MARKER",
    "KIND_NAMES",
    "KIND_SEMANTIC",
    "KIND_TEXT",
    "MARKERS",
    "MAX_CODEBOOKS",
    "TEXT_END",
    "TEXT_START",
    "ShardError",
    "ShardIndex",
    "ShardSummary",
    "TokenLayout",
    "count_kinds",
    "interleaved_document",
    "interleaved_kind_counts",
    "layout_mismatch",
    "read_document",
    "read_index",
    "shard_layout",
    "shard_provenance",
    "text_document",
    "token_kinds",
    "token_kinds_torch",
    "validate_shard",
    "variants",
]
