"""Unified SODA tokenizer: base text vocabulary + markers + audio tokens.

The layout and token kinds live in :mod:`megatron_soda.format`; the layout and kinds are
re-exported here for code that imports them with the tokenizer."""

from megatron_soda.format.kinds import (
    KIND_ACOUSTIC,
    KIND_MARKER,
    KIND_NAMES,
    KIND_SEMANTIC,
    KIND_TEXT,
)
from megatron_soda.format.layout import TokenLayout
from megatron_soda.tokenizer.soda_tokenizer import SodaTokenizer, TokenizerError

__all__ = [
    "KIND_ACOUSTIC",
    "KIND_MARKER",
    "KIND_NAMES",
    "KIND_SEMANTIC",
    "KIND_TEXT",
    "SodaTokenizer",
    "TokenLayout",
    "TokenizerError",
]
