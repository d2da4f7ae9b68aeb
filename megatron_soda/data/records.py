"""Plain records passed between the readers, the codec stage and the tokenizing stage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AudioRef:
    """Where an utterance's audio lives: a file or in-memory file bytes, optionally a span."""

    path: str | None = None
    data: bytes | None = None
    start: float | None = None
    end: float | None = None
    name: str = ""  # how errors refer to it (file path, tar member, parquet row)
    expected_duration: float | None = None  # from metadata, to catch truncated files

    def source_key(self) -> str:
        """Utterances with the same key are decoded from one pass over one source."""
        return self.path if self.path is not None else f"bytes:{id(self.data)}"


@dataclass
class Utterance:
    id: str
    text: str
    audio: AudioRef


@dataclass
class Recording:
    """One source recording = one training document (all its utterances, in order)."""

    id: str
    source: str  # the input file it came from
    utterances: list[Utterance] = field(default_factory=list)


@dataclass
class TextDocument:
    id: str
    source: str
    text: str


@dataclass
class InputError:
    """One rejected input: the file, which item (id or line number), and why."""

    file: str
    item: str
    reason: str
    stage: str = "read"

    def to_dict(self) -> dict:
        return {"file": self.file, "item": self.item, "reason": self.reason, "stage": self.stage}
