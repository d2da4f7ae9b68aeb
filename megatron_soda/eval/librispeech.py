"""Inputs of the prompted tasks, as flat item lists.

* ASR: a LibriSpeech-layout folder (``speaker/chapter/*.flac`` + ``speaker-chapter.trans.txt``;
  one ``*.trans.txt`` also works) or a JSONL manifest (``{"audio", "text", "id"?}`` per line,
  ``audio`` relative to the manifest's directory).  Parsing is the preprocessing readers'
  (:mod:`megatron_soda.data.readers.librispeech`, :mod:`~megatron_soda.data.readers.manifest`),
  so a corpus is read the same way for training and for evaluation.
* TTS: seed-tts-eval's ``meta.lst``: ``utt|prompt_text|prompt_wav|target_text`` per line
  (a fifth field, the ground-truth wav, is ignored), ``prompt_wav`` relative to the
  ``meta.lst`` directory (seed-tts-eval ``get_wav_res_ref_text.py`` lines 30-31; blueberry-eval
  ``tts_seedttseval/inference_0shot.py`` lines 105-123 reads the same four fields).

A bad line or a missing transcript is an :class:`~megatron_soda.data.records.InputError` in the
returned error list, never an exception; audio is not opened here (an unreadable file is that
item's error in the runner).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from megatron_soda.data.readers.librispeech import read_librispeech
from megatron_soda.data.readers.manifest import read_jsonl_manifest
from megatron_soda.data.records import InputError


@dataclass(frozen=True)
class AsrItem:
    id: str
    audio: str  # a file path
    text: str  # the reference transcript
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class TtsItem:
    id: str
    prompt_text: str
    prompt_wav: str  # resolved path
    target_text: str


def _transcript_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.trans.txt"), recursive=True))


def read_asr_items(path: str) -> tuple[list[AsrItem], list[InputError]]:
    """A LibriSpeech-layout directory, one ``*.trans.txt``, or a ``.jsonl`` manifest."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    items: list[AsrItem] = []
    errors: list[InputError] = []
    if os.path.isfile(path) and not path.endswith(".trans.txt"):
        sources = [read_jsonl_manifest(path)]
    else:
        files = _transcript_files(path)
        if not files:
            raise FileNotFoundError(f"{path}: no *.trans.txt below it (LibriSpeech layout)")
        sources = [read_librispeech(f) for f in files]
    for source in sources:
        for rec in source:
            if isinstance(rec, InputError):
                errors.append(rec)
                continue
            for u in rec.utterances:
                items.append(AsrItem(u.id, u.audio.path or "", u.text, u.audio.start, u.audio.end))
    return _unique(path, items, errors)


def read_seedtts_meta(path: str) -> tuple[list[TtsItem], list[InputError]]:
    """seed-tts-eval ``meta.lst``: ``utt|prompt_text|prompt_wav|target_text[|gt_wav]``."""
    base = os.path.dirname(os.path.abspath(path))
    items: list[TtsItem] = []
    errors: list[InputError] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("|")
            if len(parts) not in (4, 5):
                errors.append(InputError(path, f"line {lineno}",
                                         f"expected utt|prompt_text|prompt_wav|target_text, got {len(parts)} fields"))
                continue
            utt, prompt_text, prompt_wav, target_text = parts[:4]
            if not utt or not prompt_wav or not target_text.strip():
                errors.append(InputError(path, f"{utt or '?'} (line {lineno})",
                                         "empty utterance id, prompt wav or target text"))
                continue
            wav = prompt_wav if os.path.isabs(prompt_wav) else os.path.join(base, prompt_wav)
            items.append(TtsItem(utt, prompt_text, wav, target_text))
    return _unique(path, items, errors)


def _unique(path: str, items: list, errors: list[InputError]) -> tuple[list, list[InputError]]:
    """Keep the first item of each id; a repeated id is an error (results are keyed by id)."""
    seen: set[str] = set()
    kept = []
    for it in items:
        if it.id in seen:
            errors.append(InputError(path, it.id, "item id appears more than once"))
            continue
        seen.add(it.id)
        kept.append(it)
    return kept, errors
