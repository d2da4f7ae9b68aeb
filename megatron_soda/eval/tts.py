"""``python -m megatron_soda.eval tts``: zero-shot TTS with a voice prompt, on seed-tts-eval.

Per ``meta.lst`` line (``utt|prompt_text|prompt_wav|target_text``, :mod:`.librispeech`): the
prompt wav is encoded as preprocessing does, the prompt is
``<bos><text_start>prompt_text<text_end><audio_start>prompt<audio_end><text_start>target
<text_end><audio_start>`` (blueberry-eval ``tts_seedttseval/inference_0shot.py`` lines
178-183), sampled with the authors' settings (temperature 0.9, top-p 0.8, 1,500 new tokens:
lines 71-88) until ``<audio_end>`` or one of our stop rules, the whole generated frames are
decoded with Mimi and written to ``--audio-dir/<utt>.wav`` (24 kHz).  Then, as seed-tts-eval
does (``cal_wer.sh``, ``cal_sim.sh``): the WAV is transcribed by ``--asr-scorer`` and scored
against ``target_text`` (per-utterance WER, mean over utterances: ``run_wer.py``,
``average_wer.py``), and its speaker embedding is compared with the prompt wav's (cosine,
mean over utterances).

A generation with no audio frames is scored with an empty transcript (WER 1) and no
similarity (seed-tts-eval would skip the missing wav); an unreadable prompt wav is that item's
error.  Both are counted in RESULT.json.
"""

from __future__ import annotations

import argparse
import collections
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from megatron_soda.eval.asr import add_common_generation_arguments, sampling_settings
from megatron_soda.eval.common import (
    SAMPLE_RATE,
    generate_speech_items,
    read_limited,
    run_generated_speech,
)

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="seed-tts-eval meta.lst")
    p.add_argument("--audio-dir", required=True, help="where the generated <utt>.wav files go")
    p.add_argument("--asr-scorer", default="pocketsphinx", help="pocketsphinx | whisper:DIR")
    p.add_argument("--speaker-scorer", default="resemblyzer", help="resemblyzer | wavlm:DIR")
    p.add_argument("--scorer-device", default=None, help="device of the scorers (default: the model's)")
    add_common_generation_arguments(p, "tts")


def generate_items(loaded: Any, codec: Any, items: Sequence[Any], settings: Any,
                   batch_size: int, audio_dir: str, first_index: int = 0) -> list[dict[str, Any]]:
    """Generate and write each item's WAV; rows carry ``wav``/``prompt_wav`` paths or ``error``."""
    from megatron_soda.generate.prompts import tts_prompt

    tok = loaded.tokenizer
    return generate_speech_items(
        loaded, codec, items, settings, batch_size, audio_dir, first_index, "tts",
        audio_of=lambda it: it.prompt_wav,
        build_prompt=lambda it, codes: tts_prompt(tok, it.target_text, codes, it.prompt_text),
        fill_row=lambda it, prompt, g: {"id": it.id, "reference": it.target_text,
                                        "prompt_text": it.prompt_text, "prompt_wav": it.prompt_wav})


def score_items(rows: list[dict[str, Any]], transcriber: Any, speaker: Any) -> None:
    """Adds ``hypothesis``, ``wer`` and ``speaker_similarity`` to each generated row."""
    from megatron_soda.audio.io import load_audio
    from megatron_soda.eval.scorers import similarity
    from megatron_soda.eval.wer import seedtts_utterance_wer

    for r in rows:
        if "error" in r:
            continue
        if r["wav"] is None:
            r.update(hypothesis="", wer=seedtts_utterance_wer(r["reference"], ""),
                     speaker_similarity=None)
            continue
        wave = load_audio(r["wav"])
        r["hypothesis"] = transcriber.transcribe([wave], SAMPLE_RATE)[0]
        r["wer"] = seedtts_utterance_wer(r["reference"], r["hypothesis"])
        try:
            prompt = load_audio(r["prompt_wav"])
            r["speaker_similarity"] = similarity(speaker.embed(wave, SAMPLE_RATE),
                                                 speaker.embed(prompt, SAMPLE_RATE))
        except ValueError as e:  # e.g. nothing voiced left to embed
            r["speaker_similarity"] = None
            r["similarity_error"] = str(e)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if "wer" in r]
    sims = [r["speaker_similarity"] for r in scored if r.get("speaker_similarity") is not None]
    return {
        "wer": float(np.mean([r["wer"] for r in scored])) if scored else float("nan"),
        "speaker_similarity": float(np.mean(sims)) if sims else float("nan"),
        "n": len(scored),
        "n_similarity": len(sims),
        "n_no_audio": sum(1 for r in scored if r.get("wav") is None),
        "n_errors": len(rows) - len(scored),
        "audio_seconds": float(sum(r.get("audio_seconds", 0.0) for r in scored)),
        "stop_reasons": dict(collections.Counter(r["stop_reason"] for r in scored)),
    }


def run(args: argparse.Namespace) -> int:
    from megatron_soda.eval.librispeech import read_seedtts_meta

    settings = sampling_settings(args, "tts")
    items, input_errors = read_limited(read_seedtts_meta, args)
    return run_generated_speech(
        args, "tts", items, input_errors, settings, generate_items, score_items, summarize,
        lambda m: (f"tts: WER {m['wer']:.4f}, speaker similarity {m['speaker_similarity']:.4f} "
                   f"over {m['n']} utterances ({m['n_errors']} failed), stops {m['stop_reasons']}"))
