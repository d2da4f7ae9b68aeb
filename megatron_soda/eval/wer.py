"""Word error rate as the authors compute it, for the two prompted tasks.

* ASR (LibriSpeech): the first author's harness normalises both sides with
  ``normalize_text`` (blueberry-eval ``compute_wer.py`` lines 19-25, the same function in
  ``asr_librispeech/inference_0shot.py`` lines 97-103: delete ``.,!?;:"'-()[]{}`` and the
  curly quotes, collapse whitespace, strip, lower-case) and reports ``overall_wer`` = the sum of
  every utterance's substitutions + deletions + insertions over the sum of reference words
  (``inference_0shot.py`` lines 243-247, 279-280): a corpus WER, which is what
  ``jiwer.process_words(list, list)`` computes (:func:`corpus_wer`).  Their ``average_wer``
  (mean of per-utterance WERs) is reported next to it.
* TTS (seed-tts-eval): ``run_wer.py`` ``process_one`` (lines 31-61) deletes every character of
  ``zhon.hanzi.punctuation + string.punctuation`` except the ASCII apostrophe, replaces each
  double space by one, lower-cases (English), and takes ``jiwer.process_words(truth, hypo).wer``
  per utterance; ``average_wer.py`` (lines 15-27) reports the plain mean over utterances
  (:func:`seedtts_mean_wer`).  ``zhon`` is not a dependency: its punctuation string (zhon
  ``hanzi.py``: ``non_stops + stops``) is copied below.

WERs are fractions (0.05 = 5 %), as jiwer returns them; an empty reference scores through jiwer
(0 when the hypothesis is empty too, otherwise insertions count against one word).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import jiwer

# blueberry-eval compute_wer.py:22 (the same in asr_librispeech/inference_0shot.py:100)
_AUTHORS_PUNCT = re.compile(r'[.,!?;:"\'\-\(\)\[\]\{\}\u2019\u2018\u201c\u201d]')
_SPACES = re.compile(r"\s+")

# zhon.hanzi.punctuation (= non_stops + stops), used by seed-tts-eval run_wer.py:5,14
_ZHON_NON_STOPS = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d"
    "\uff0f\uff1a\uff1b\uff1c\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f"
    "\uff40\uff5b\uff5c\uff5d\uff5e\uff5f\uff60\uff62\uff63\uff64\u3000\u3001"
    "\u3003\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011\u3014"
    "\u3015\u3016\u3017\u3018\u3019\u301a\u301b\u301c\u301d\u301e\u301f\u3030"
    "\u303e\u303f\u2013\u2014\u2018\u2019\u201b\u201c\u201d\u201e\u201f\u2026"
    "\u2027\ufe4f\ufe51\ufe54\u00b7"
)
_ZHON_STOPS = "\uff0e\uff01\uff1f\uff61\u3002"
SEEDTTS_PUNCTUATION = _ZHON_NON_STOPS + _ZHON_STOPS + string.punctuation


def normalize_text(text: str) -> str:
    """The first author's ASR normalisation (blueberry-eval ``compute_wer.py`` lines 19-25)."""
    text = _AUTHORS_PUNCT.sub("", text)
    text = _SPACES.sub(" ", text)
    return text.strip().lower()


def seedtts_normalize(text: str) -> str:
    """seed-tts-eval's English normalisation (``run_wer.py`` lines 35-49): every punctuation
    character but ``'`` deleted, double spaces replaced once, lower-cased."""
    for ch in SEEDTTS_PUNCTUATION:
        if ch == "'":
            continue
        text = text.replace(ch, "")
    return text.replace("  ", " ").lower()


def _check(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")


def corpus_measures(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float | int]:
    """Corpus WER after :func:`normalize_text` and its error counts (the authors' ``overall_wer``,
    ``total_errors``, ``total_words``)."""
    _check(refs, hyps)
    if not refs:
        return {"wer": float("nan"), "errors": 0, "words": 0, "substitutions": 0,
                "deletions": 0, "insertions": 0}
    r = [normalize_text(x) for x in refs]
    h = [normalize_text(x) for x in hyps]
    out = jiwer.process_words(r, h)
    words = out.hits + out.substitutions + out.deletions
    errors = out.substitutions + out.deletions + out.insertions
    return {
        "wer": float(out.wer), "errors": int(errors), "words": int(words),
        "substitutions": int(out.substitutions), "deletions": int(out.deletions),
        "insertions": int(out.insertions),
    }


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Total word errors over total reference words, after :func:`normalize_text`."""
    return float(corpus_measures(refs, hyps)["wer"])


def utterance_wers(refs: Sequence[str], hyps: Sequence[str]) -> list[float]:
    """Per-utterance WER after :func:`normalize_text` (the authors' per-sample ``wer``)."""
    _check(refs, hyps)
    return [float(jiwer.process_words(normalize_text(r), normalize_text(h)).wer)
            for r, h in zip(refs, hyps)]


def seedtts_utterance_wer(ref: str, hyp: str) -> float:
    """One utterance's WER as seed-tts-eval computes it (``run_wer.py`` lines 54-57)."""
    return float(jiwer.process_words(seedtts_normalize(ref), seedtts_normalize(hyp)).wer)


def seedtts_mean_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Mean of per-utterance seed-tts-eval WERs (``average_wer.py`` line 27, as a fraction)."""
    _check(refs, hyps)
    if not refs:
        return float("nan")
    wers = [seedtts_utterance_wer(r, h) for r, h in zip(refs, hyps)]
    return sum(wers) / len(wers)
