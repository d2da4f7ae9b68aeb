"""Readers for the public input layouts, one module each, and the registry that names them.

A reader is ``read(path, options) -> Iterator[Recording | TextDocument | InputError]``: records
in file order (deterministic), and an :class:`InputError` (never an exception) for an item it
cannot use, so one bad line, member or row never costs the rest of the file.  What a reader
yields is checked once for all of them (:func:`megatron_soda.data.records.checked_items`: no
NaN, infinite or negative times, no lone surrogates, no exception past the file).  Readers stream:
memory is bounded by one recording (or one document), not by the input.

``--input`` names files, directories and globs; a directory contributes its files with the
format's extensions (:func:`megatron_soda.data.units.expand_inputs`).  Optional dependencies
(``lhotse``) are imported by their reader only.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from megatron_soda.data.records import checked_items


@dataclass(frozen=True)
class ReaderOptions:
    json_keys: tuple[str, ...] = ("text",)  # text fields (joined by newlines), Megatron's --json-keys
    source_root: str | None = None  # cvss: the Common Voice clips + CoVoST 2 TSVs (--cvss-source-root)


@dataclass(frozen=True)
class InputFormat:
    name: str
    reader: str  # "module:function" under megatron_soda.data.readers
    extensions: tuple[str, ...]  # what a directory contributes
    speech: bool = True
    sft: bool = False  # speech-to-speech pairs: S2ST fine-tuning documents (data/sft_stage.py)

    def read(self, path: str, options: ReaderOptions) -> Iterator:
        """The reader's items, each checked (:func:`~megatron_soda.data.records.checked_items`):
        every reader's output passes the same checks, and a reader that raises ends its file
        with an error instead of ending the run."""
        module, function = self.reader.split(":")
        reader = getattr(importlib.import_module(f"{__name__}.{module}"), function)
        return checked_items(path, iter(reader(path, options)))


_FORMATS = (
    InputFormat("jsonl", "manifest:read_jsonl_manifest", (".jsonl", ".json")),
    InputFormat("webdataset", "webdataset:read_webdataset", (".tar", ".tar.gz", ".tgz")),
    InputFormat("parquet", "parquet:read_parquet", (".parquet",)),
    InputFormat("yodas2", "yodas2:read_yodas2", (".tar.gz",)),
    InputFormat("yodas-parquet", "yodas_parquet:read_yodas_parquet", (".parquet",)),
    InputFormat("nemo", "nemo:read_nemo_manifest", (".json", ".jsonl")),
    InputFormat("lhotse", "lhotse_manifests:read_lhotse", (".jsonl.gz", ".jsonl")),
    InputFormat("librispeech", "librispeech:read_librispeech", (".trans.txt",)),
    InputFormat("cvss", "cvss:read_cvss", (".tsv",), sft=True),
    InputFormat("s2st-jsonl", "s2st:read_s2st_jsonl", (".jsonl", ".json"), sft=True),
    InputFormat(
        "text",
        "text:read_text",
        (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".json"),
        speech=False,
    ),
)
FORMATS: dict[str, InputFormat] = {f.name: f for f in _FORMATS}
INPUT_FORMATS = tuple(FORMATS)
SPEECH_FORMATS = tuple(f.name for f in _FORMATS if f.speech)
SFT_FORMATS = tuple(f.name for f in _FORMATS if f.sft)


def input_format(name: str) -> InputFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown input format {name!r}; expected one of {INPUT_FORMATS}") from None


def read_source(
    path: str, fmt: str, json_keys: Sequence[str] = ("text",), source_root: str | None = None
) -> Iterator:
    """The records (and per-item errors) of one input file in format ``fmt``."""
    return input_format(fmt).read(path, ReaderOptions(json_keys=tuple(json_keys),
                                                      source_root=source_root))
