"""The unified SODA id layout: base text vocabulary, four markers, then audio tokens.

    [0, base)                      text tokens of the base tokenizer (its own specials included)
    [base, base + n_added)         BOS/EOS, only when the base tokenizer has none
    marker_offset + 0..3           <|text_start|> <|text_end|> <|audio_start|> <|audio_end|>
    audio_offset + cb*2048 + code  audio tokens, codebook-major id blocks, frame-major order

With Llama-3 as the base (128,256 ids, BOS/EOS present) this is exactly SODA's released
layout: markers 128256..128259, audio 128260 + cb*2048 + code, 144,644 ids for 8 codebooks.
All offsets are derived from the base tokenizer, never hard-coded.  The number of codebooks is
carried by the artifacts (a saved tokenizer directory, ``PREFIX.stats.json``);
:data:`DEFAULT_NUM_CODEBOOKS` is the one default where none says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from megatron_soda.format.kinds import count_kinds, token_kinds

TEXT_START = "<|text_start|>"
TEXT_END = "<|text_end|>"
AUDIO_START = "<|audio_start|>"
AUDIO_END = "<|audio_end|>"
MARKERS = (TEXT_START, TEXT_END, AUDIO_START, AUDIO_END)

CODEBOOK_SIZE = 2048
MAX_CODEBOOKS = 32
DEFAULT_NUM_CODEBOOKS = 8  # SODA's: 1 semantic + 7 acoustic Mimi codebooks
FRAME_RATE = 12.5  # Mimi frames (one audio token per codebook) per second


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token lives in the unified vocabulary."""

    base_vocab_size: int
    bos_id: int
    eos_id: int
    marker_offset: int
    num_codebooks: int
    codebook_size: int = CODEBOOK_SIZE
    added_specials: tuple[str, ...] = ()  # BOS/EOS strings added after the base vocabulary

    def __post_init__(self) -> None:
        if not 1 <= self.num_codebooks <= MAX_CODEBOOKS:
            raise ValueError(
                f"num_codebooks must be in 1..{MAX_CODEBOOKS}, got {self.num_codebooks}"
            )

    @property
    def text_start_id(self) -> int:
        return self.marker_offset

    @property
    def text_end_id(self) -> int:
        return self.marker_offset + 1

    @property
    def audio_start_id(self) -> int:
        return self.marker_offset + 2

    @property
    def audio_end_id(self) -> int:
        return self.marker_offset + 3

    @property
    def audio_offset(self) -> int:
        return self.marker_offset + len(MARKERS)

    @property
    def num_audio_tokens(self) -> int:
        return self.num_codebooks * self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.audio_offset + self.num_audio_tokens

    @property
    def marker_ids(self) -> tuple[int, int, int, int]:
        m = self.marker_offset
        return (m, m + 1, m + 2, m + 3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["added_specials"] = list(self.added_specials)
        d["audio_offset"] = self.audio_offset
        d["vocab_size"] = self.vocab_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenLayout:
        fields = (
            "base_vocab_size",
            "bos_id",
            "eos_id",
            "marker_offset",
            "num_codebooks",
            "codebook_size",
        )
        return cls(
            **{k: int(d[k]) for k in fields}, added_specials=tuple(d.get("added_specials", ()))
        )

    # ----------------------------------------------------------------- audio ids
    def codes_to_ids(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[n_cb, frames]`` (n_cb <= num_codebooks uses the first n_cb) -> flat ids,
        frame-major: for each frame cb0, cb1, ..., cb{n-1}."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must be [codebooks, frames], got shape {codes.shape}")
        if codes.shape[0] < self.num_codebooks:
            raise ValueError(
                f"codes have {codes.shape[0]} codebooks, the layout needs {self.num_codebooks}"
            )
        c = codes[: self.num_codebooks].astype(np.int64)
        offsets = (
            self.audio_offset
            + np.arange(self.num_codebooks, dtype=np.int64)[:, None] * self.codebook_size
        )
        return (c + offsets).T.reshape(-1)

    def ids_to_codes(self, ids: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`codes_to_ids`: flat audio ids -> codes ``[num_codebooks, frames]``."""
        ids = np.asarray(ids, dtype=np.int64)
        n = self.num_codebooks
        if ids.size % n:
            raise ValueError(f"{ids.size} audio ids is not a whole number of {n}-codebook frames")
        idx = ids - self.audio_offset
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_audio_tokens):
            raise ValueError("ids outside the audio range")
        frames = idx.reshape(-1, n)
        cb = frames // self.codebook_size
        if not (cb == np.arange(n)[None, :]).all():
            raise ValueError(f"audio ids are not in frame-major codebook order cb0..cb{n - 1}")
        return (frames % self.codebook_size).T.copy()

    def token_kinds(self, ids: np.ndarray) -> np.ndarray:
        """Kind of each id (see :mod:`megatron_soda.format.kinds`)."""
        return token_kinds(ids, self)

    def count_kinds(self, ids: np.ndarray) -> dict[str, int]:
        return count_kinds(ids, self)


def field_differences(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> str:
    """The fields two records disagree on, each with both values (``num_codebooks: shard 8 vs
    this tokenizer 4; vocab_size: ...``), in ``a``'s order; a field one side lacks shows as None.
    Empty when they agree.  Every mismatch message between artifacts (shards, checkpoints,
    flags) is spelled with it, so that only what differs is printed."""
    keys = [*a, *(k for k in b if k not in a)]
    return "; ".join(
        f"{k}: {a_name} {a.get(k)} vs {b_name} {b.get(k)}" for k in keys if a.get(k) != b.get(k)
    )


def layout_mismatch(
    found: TokenLayout,
    expected: TokenLayout,
    found_name: str = "recorded",
    expected_name: str = "this tokenizer",
) -> str | None:
    """None when two layouts agree, else the sentence an error message gives: the fields in
    which ``found`` (e.g. recorded by preprocessing) differs from ``expected``."""
    if found == expected:
        return None
    diff = field_differences(found.to_dict(), expected.to_dict(), found_name, expected_name)
    return f"token layout differs ({diff}): a different base tokenizer or number of codebooks"
