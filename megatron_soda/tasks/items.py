"""What a benchmark item is, before any codec or tokenizer touches it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """One side of a pair: an audio clip (a file path, or the bytes of an encoded file as HF
    parquet stores them) or a text."""

    audio: str | bytes | None = None
    text: str | None = None
    name: str = ""  # where it came from, for messages ("file.parquet row 12 positive")

    def __post_init__(self) -> None:
        if (self.audio is None) == (self.text is None):
            raise ValueError(f"{self.name or 'member'}: give exactly one of audio and text")

    @property
    def modality(self) -> str:
        return "audio" if self.audio is not None else "text"


@dataclass(frozen=True)
class PairItem:
    """A minimal pair: the model should give ``positive`` the higher score."""

    id: str
    positive: Member
    negative: Member
    subtask: str = ""  # SALMon's sub-task, sBLIMP's phenomenon, ... ("" when none)


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice text item (HellaSwag): ``context`` continued by one of ``endings``."""

    id: str
    context: str
    endings: tuple[str, ...]
    label: int
    subtask: str = ""
