"""``python -m megatron_soda.eval s2st``: voice-preserving speech-to-speech translation (CVSS).

Per test pair the source speech is encoded as preprocessing does, prompted as the SFT document's
instruction (:func:`megatron_soda.generate.prompts.s2st_prompt`, the prefix of
``format/sft.py``'s document up to its loss start), sampled with the generator's ``s2st``
settings (temperature 0.9, top-p 0.8, 1,500 new tokens) until the target speech's
``<audio_end>`` or one of our stop rules, and the generated whole frames are Mimi-decoded into
``--audio-dir/<id>.wav``.  Then:

* **ASR-BLEU**: the WAV is transcribed by ``--asr-scorer`` (:mod:`.scorers`) and the corpus
  BLEU of the transcripts against the reference target texts is computed by ``sacrebleu``
  (``BLEU().corpus_score``: default 13a tokenizer, exponential smoothing), as fairseq's
  S2ST ASR-BLEU does (``examples/speech_to_speech/asr_bleu/compute_asr_bleu.py``: lower-cased
  transcripts, ``sacrebleu.corpus_bleu(transcripts, [references])``).  CVSS compares with its
  *normalized* translation text, "which can be used for ... standardizing evaluation"
  (google-research-datasets/cvss ``README.md`` line 15).  Both sides pass through
  :func:`bleu_normalize` first: lower-cased, punctuation removed, the ASR-BLEU convention for
  CVSS (the recognisers' output has neither case nor punctuation; fairseq lower-cases it).
  The CVSS paper's own scoring script was not found: its exact normalisation is unverified.
* **text BLEU**: the model's own target-text span (the second text span it writes,
  ``<text_start><language>en</language>...<text_end>``, tag stripped: :func:`target_text_span`)
  against the same references, same normalisation: the gap between it and ASR-BLEU is what the
  speech side loses.  ``text_bleu_cased`` is sacrebleu's default (cased, punctuation kept), the
  CoVoST 2 speech-to-text convention.
* **speaker similarity**: cosine between ``--speaker-scorer`` embeddings of the SOURCE speech
  and the generated speech (voice preservation), mean over pairs with audio.

A generation without audio frames transcribes as "" (it still counts in ASR-BLEU, as a missing
translation would), one without a target-text span has ``hypothesis_text`` "" (counted in text
BLEU); an unreadable source is that item's ``error``, left out of every metric.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_soda.eval.asr import add_common_generation_arguments, sampling_settings
from megatron_soda.eval.common import (
    SAMPLE_RATE,
    generate_speech_items,
    read_limited,
    run_generated_speech,
)

FORMATS = ("auto", "cvss", "s2st-jsonl")
_LANG_TAG = re.compile(r"^\s*<language>([^<]*)</language>")
_APOSTROPHES = "'\u2019\u02bc"


@dataclass
class S2stItem:
    id: str
    source_audio: str
    source_text: str
    source_lang: str
    target_text: str
    target_lang: str = "en"
    target_audio: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="a CVSS-T/-C root (<lang>/<split>.tsv + clips) or one <split>.tsv, or an "
                        "s2st-jsonl file {source_audio, source_text, source_lang, target_audio, "
                        "target_text, id?}")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="auto: s2st-jsonl for a .jsonl file, else cvss")
    p.add_argument("--split", default="test", help="cvss: the split to evaluate")
    p.add_argument("--source-language", default=None,
                   help="cvss: the X of X->en (default: every pair found)")
    p.add_argument("--cvss-source-root", default=None,
                   help="cvss: the Common Voice clips + CoVoST 2 TSVs (as preprocessing's flag)")
    p.add_argument("--audio-dir", required=True, help="where the generated <id>.wav files go")
    p.add_argument("--asr-scorer", default="pocketsphinx", help="pocketsphinx | whisper:DIR")
    p.add_argument("--speaker-scorer", default="resemblyzer", help="resemblyzer | wavlm:DIR")
    p.add_argument("--scorer-device", default=None, help="device of the scorers (default: the model's)")
    add_common_generation_arguments(p, "s2st")


# ----------------------------------------------------------------------------- data

def _split_tag(text: str) -> tuple[str | None, str]:
    m = _LANG_TAG.match(text)
    return (None, text.strip()) if m is None else (m.group(1), text[m.end():].strip())


def pairs_from_records(records: Any) -> tuple[list[S2stItem], list[Any]]:
    """Items from the preprocessing readers' pairs (``data/readers/s2st.py`` ``pair_recording``:
    one Recording of the source then the target utterance, each text ``<language>xx</language>``
    + text), their ``InputError`` records passed through; a repeated pair id is an error."""
    from megatron_soda.data.records import InputError

    items: list[S2stItem] = []
    errors: list[InputError] = []
    seen: set[str] = set()
    for r in records:
        if isinstance(r, InputError):
            errors.append(r)
            continue
        if r.id in seen:
            errors.append(InputError(r.source, r.id, "pair id appears more than once"))
            continue
        seen.add(r.id)
        src, tgt = r.utterances
        (src_lang, src_text), (tgt_lang, tgt_text) = _split_tag(src.text), _split_tag(tgt.text)
        items.append(S2stItem(str(r.id), src.audio.path, src_text, src_lang or "",
                              tgt_text, tgt_lang or "en", tgt.audio.path))
    return items, errors


def cvss_units(data: str, split: str, source_language: str | None) -> list[str]:
    """The CVSS ``<split>.tsv`` files of ``data`` (one file, or every language under a root)."""
    from megatron_soda.data.readers.cvss import covost_code, is_unit

    if os.path.isfile(data):
        return [data]
    if not os.path.isdir(data):
        raise FileNotFoundError(f"{data}: no such file or directory")
    units = sorted(os.path.join(data, d, f"{split}.tsv") for d in os.listdir(data))
    units = [u for u in units if os.path.isfile(u) and is_unit(u, split)]
    if source_language is not None:
        want = covost_code(source_language)
        units = [u for u in units if covost_code(os.path.basename(os.path.dirname(u))) == want]
    if not units:
        raise FileNotFoundError(f"{data}: no <lang>/{split}.tsv of CVSS below it"
                                + (f" for {source_language!r}" if source_language else ""))
    return units


def read_items(args: argparse.Namespace) -> tuple[list[S2stItem], list[Any]]:
    """The test pairs of ``--data`` through the preprocessing readers (``cvss``, ``s2st-jsonl``)."""
    from megatron_soda.data.readers import read_source

    fmt = args.format
    if fmt == "auto":
        fmt = "s2st-jsonl" if args.data.endswith((".jsonl", ".json")) else "cvss"
    if fmt == "s2st-jsonl":
        paths = [args.data]
    else:
        if not args.cvss_source_root:
            raise ValueError("--format cvss needs --cvss-source-root (Common Voice clips + CoVoST 2 TSVs)")
        paths = cvss_units(args.data, args.split, args.source_language)
    records = (r for p in paths for r in read_source(p, fmt, source_root=args.cvss_source_root))
    return pairs_from_records(records)


# ----------------------------------------------------------------------------- scoring

def bleu_normalize(text: str) -> str:
    """Lower-case; apostrophes deleted (contractions stay one word: "don't" -> "dont"); every
    other Unicode punctuation character (category ``P*``) replaced by a space; whitespace
    collapsed."""
    text = text.lower()
    for a in _APOSTROPHES:
        text = text.replace(a, "")
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], normalize: bool = True) -> dict[str, Any]:
    """sacrebleu corpus BLEU (0-100) with its signature and statistics; nan for no pairs."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as e:
        raise RuntimeError("ASR-BLEU needs sacrebleu: pip install sacrebleu "
                           "(or pip install 'megatron_soda[eval]')") from e
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        return {"score": float("nan"), "signature": None}
    if normalize:
        hyps, refs = [bleu_normalize(h) for h in hyps], [bleu_normalize(r) for r in refs]
    bleu = BLEU()
    s = bleu.corpus_score(list(hyps), [list(refs)])
    return {"score": float(s.score), "signature": str(bleu.get_signature()),
            "precisions": [float(p) for p in s.precisions], "bp": float(s.bp),
            "sys_len": int(s.sys_len), "ref_len": int(s.ref_len)}


def target_text_span(tok: Any, ids: Sequence[int]) -> tuple[str | None, str | None]:
    """(text, language) of the second text span of ``ids`` (the whole document: prompt +
    generated), its leading ``<language>xx</language>`` tag stripped; (None, None) when there
    is no second span.  A span the generation left open runs to the end of ``ids``."""
    lay = tok.layout
    spans: list[list[int]] = []
    cur: list[int] | None = None
    for t in (int(x) for x in ids):
        if t == lay.text_start_id:
            cur = []
            spans.append(cur)
        elif t >= lay.marker_offset or t in (lay.bos_id, lay.eos_id):  # a marker or audio
            cur = None
        elif cur is not None:
            cur.append(t)
    if len(spans) < 2:
        return None, None
    text = tok.decode_text(spans[1])
    m = _LANG_TAG.match(text)
    if m is None:
        return text.strip(), None
    return text[m.end():].strip(), m.group(1)


def generate_items(loaded: Any, codec: Any, items: Sequence[S2stItem], settings: Any,
                   batch_size: int, audio_dir: str, first_index: int = 0) -> list[dict[str, Any]]:
    """Generate each pair's target speech and text; rows carry ``wav`` or ``error``."""
    from megatron_soda.generate.prompts import s2st_prompt

    tok = loaded.tokenizer

    def fill_row(it: S2stItem, prompt: Any, g: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"id": it.id, "source_lang": it.source_lang,
                               "source_audio": it.source_audio, "source_text": it.source_text,
                               "reference": it.target_text}
        if g is not None:
            text, lang = target_text_span(tok, np.concatenate([prompt, g.token_ids]))
            row.update(hypothesis_text=text or "", hypothesis_language=lang,
                       has_target_text=text is not None)
        return row

    return generate_speech_items(
        loaded, codec, items, settings, batch_size, audio_dir, first_index, "s2st",
        audio_of=lambda it: it.source_audio,
        build_prompt=lambda it, codes: s2st_prompt(tok, codes, it.source_lang), fill_row=fill_row)


def score_items(rows: list[dict[str, Any]], transcriber: Any, speaker: Any) -> None:
    """Adds ``transcript`` and ``similarity`` (source vs generated speech) to generated rows."""
    from megatron_soda.audio.io import load_audio
    from megatron_soda.eval.scorers import similarity

    for r in rows:
        if "error" in r:
            continue
        r["transcript"], r["similarity"] = "", None
        if r["wav"] is None:
            continue
        wave = load_audio(r["wav"])
        r["transcript"] = transcriber.transcribe([wave], SAMPLE_RATE)[0]
        try:
            source = load_audio(r["source_audio"])
            r["similarity"] = similarity(speaker.embed(wave, SAMPLE_RATE),
                                         speaker.embed(source, SAMPLE_RATE))
        except ValueError as e:  # e.g. nothing voiced left to embed
            r["similarity_error"] = str(e)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if "error" not in r]
    refs = [r["reference"] for r in scored]
    asr = corpus_bleu([r["transcript"] for r in scored], refs)
    text = corpus_bleu([r["hypothesis_text"] for r in scored], refs)
    cased = corpus_bleu([r["hypothesis_text"] for r in scored], refs, normalize=False)
    sims = [r["similarity"] for r in scored if r.get("similarity") is not None]
    return {
        "asr_bleu": asr["score"], "text_bleu": text["score"], "text_bleu_cased": cased["score"],
        "speaker_similarity": float(np.mean(sims)) if sims else float("nan"),
        "n": len(scored), "n_errors": len(rows) - len(scored), "n_similarity": len(sims),
        "n_no_audio": sum(1 for r in scored if r["wav"] is None),
        "n_no_target_text": sum(1 for r in scored if not r["has_target_text"]),
        "audio_seconds": float(sum(r["audio_seconds"] for r in scored)),
        "stop_reasons": dict(collections.Counter(r["stop_reason"] for r in scored)),
        "bleu_normalization": "lower-cased, apostrophes deleted, other Unicode punctuation -> "
                              "space, whitespace collapsed (eval/s2st.py bleu_normalize)",
        "bleu_details": {"asr_bleu": asr, "text_bleu": text, "text_bleu_cased": cased},
        "errors": [f"{r['id']}: {r['error']}" for r in rows if "error" in r],
    }


def run(args: argparse.Namespace) -> int:
    settings = sampling_settings(args, "s2st")
    items, input_errors = read_limited(lambda _: read_items(args), args)
    return run_generated_speech(
        args, "s2st", items, input_errors, settings, generate_items, score_items, summarize,
        lambda m: (f"s2st: ASR-BLEU {m['asr_bleu']:.2f}, text BLEU {m['text_bleu']:.2f}, speaker "
                   f"similarity {m['speaker_similarity']:.4f} over {m['n']} pairs "
                   f"({m['n_errors']} failed), stops {m['stop_reasons']}"),
        check=lambda: corpus_bleu([], []))  # sacrebleu missing: fail before any generation
