"""Unified SODA tokenizer: base text vocabulary + markers + audio tokens."""

from megatron_soda.tokenizer.layout import (
    AUDIO_END,
    AUDIO_START,
    CODEBOOK_SIZE,
    KIND_ACOUSTIC,
    KIND_MARKER,
    KIND_NAMES,
    KIND_SEMANTIC,
    KIND_TEXT,
    MARKERS,
    TEXT_END,
    TEXT_START,
    TokenLayout,
)
from megatron_soda.tokenizer.soda_tokenizer import SodaTokenizer, TokenizerError

__all__ = [
    "AUDIO_END",
    "AUDIO_START",
    "CODEBOOK_SIZE",
    "KIND_ACOUSTIC",
    "KIND_MARKER",
    "KIND_NAMES",
    "KIND_SEMANTIC",
    "KIND_TEXT",
    "MARKERS",
    "TEXT_END",
    "TEXT_START",
    "SodaTokenizer",
    "TokenLayout",
    "TokenizerError",
]
