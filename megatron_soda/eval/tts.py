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
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from megatron_soda.eval.asr import (
    add_common_generation_arguments,
    encode_audio_items,
    generate_rows,
    sampling_settings,
)

logger = logging.getLogger(__name__)
SAMPLE_RATE = 24000
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="seed-tts-eval meta.lst")
    p.add_argument("--audio-dir", required=True, help="where the generated <utt>.wav files go")
    p.add_argument("--asr-scorer", default="pocketsphinx", help="pocketsphinx | whisper:DIR")
    p.add_argument("--speaker-scorer", default="resemblyzer", help="resemblyzer | wavlm:DIR")
    p.add_argument("--scorer-device", default=None, help="device of the scorers (default: the model's)")
    add_common_generation_arguments(p, "tts")


def wav_name(utt: str) -> str:
    """``utt`` as a file name inside ``--audio-dir`` (no separators, no leading dot)."""
    if not _SAFE_NAME.match(utt) or utt in (".", ".."):
        raise ValueError(f"utterance id {utt!r} is not a safe file name")
    return utt + ".wav"


def generate_items(loaded: Any, codec: Any, items: Sequence[Any], settings: Any,
                   batch_size: int, audio_dir: str, first_index: int = 0) -> list[dict[str, Any]]:
    """Generate and write each item's WAV; rows carry ``wav``/``prompt_wav`` paths or ``error``."""
    from megatron_soda.generate.audio_out import codes_to_wave, write_wav
    from megatron_soda.generate.engine import check_prompt_fits
    from megatron_soda.generate.prompts import tts_prompt
    from megatron_soda.generate.settings import MODE_STOP_AT
    from megatron_soda.generate.silence import silence_codes

    tok = loaded.tokenizer
    silence = silence_codes(codec)
    rows: list[dict[str, Any]] = []
    for b in range(0, len(items), max(1, batch_size)):
        batch = items[b:b + batch_size]
        codes = encode_audio_items(codec, [(it.prompt_wav, None, None) for it in batch])
        todo = []
        for i, (it, c) in enumerate(zip(batch, codes)):
            if isinstance(c, str):
                continue
            try:
                wav_name(it.id)
                prompt = tts_prompt(tok, it.target_text, c, it.prompt_text)
                check_prompt_fits(loaded.model, prompt)
                todo.append((i, prompt))
            except ValueError as e:
                codes[i] = str(e)
        by_index = generate_rows(loaded, todo, settings, first_index + b, silence=silence,
                                 stop_at=MODE_STOP_AT["tts"])
        for i, it in enumerate(batch):
            row: dict[str, Any] = {"id": it.id, "reference": it.target_text,
                                   "prompt_text": it.prompt_text, "prompt_wav": it.prompt_wav}
            g = by_index.get(i)
            if g is None:
                row["error"] = codes[i]
                rows.append(row)
                continue
            frames = g.audio_frames
            row.update(stop_reason=g.stop_reason, generated_tokens=int(len(g.token_ids)),
                       frames=frames, audio_seconds=g.audio_seconds,
                       trimmed_frames=g.trimmed_frames, wav=None)
            if frames:
                path = os.path.join(audio_dir, wav_name(it.id))
                write_wav(path, codes_to_wave(codec, g.audio_codes), SAMPLE_RATE)
                row["wav"] = path
            rows.append(row)
    return rows


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
    from megatron_soda.eval.common import read_limited, run_generated_speech
    from megatron_soda.eval.librispeech import read_seedtts_meta

    settings = sampling_settings(args, "tts")
    items, input_errors = read_limited(read_seedtts_meta, args)
    return run_generated_speech(
        args, "tts", items, input_errors, settings, generate_items, score_items, summarize,
        lambda m: (f"tts: WER {m['wer']:.4f}, speaker similarity {m['speaker_similarity']:.4f} "
                   f"over {m['n']} utterances ({m['n_errors']} failed), stops {m['stop_reasons']}"))
