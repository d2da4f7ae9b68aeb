"""``python -m megatron_soda.eval asr``: zero-shot ASR as the first author's harness runs it.

Each utterance is loaded and encoded exactly as preprocessing does (``load_audio`` -> 24 kHz,
``MimiCodec(spec, num_codebooks=<the tokenizer's>).encode``), prompted with
``<bos><audio_start>A<audio_end><text_start>`` (:func:`megatron_soda.generate.prompts.asr_prompt`;
blueberry-eval ``asr_librispeech/inference_0shot.py`` line 178) and sampled until
``<text_end>`` with the authors' settings (temperature 0.5, top-p 0.8, 200 new tokens: lines
65-81; ``--temperature 0`` is greedy).  ``wer`` is the corpus WER after the authors'
normalisation (:mod:`megatron_soda.eval.wer`); ``average_wer`` the mean per-utterance WER.

An utterance whose audio cannot be read is reported (``error`` in its ITEMS line, counted in
RESULT's ``n_errors``) and left out of the WER; the run goes on.
"""

from __future__ import annotations

import argparse
import collections
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def add_common_generation_arguments(p: argparse.ArgumentParser, mode: str) -> None:
    """Flags shared by the ASR and TTS runners (defaults: ``generate.settings.mode_defaults``)."""
    from megatron_soda.eval.common import add_model_args, add_output_args, count_arg
    from megatron_soda.generate.settings import mode_defaults

    d = mode_defaults(mode)
    add_model_args(p, codec_required=True)
    add_output_args(p)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--seed", type=int, default=d.seed, help="item k samples from seed stream k")
    p.add_argument("--limit", type=count_arg, default=None, help="only the first N items")
    from megatron_soda.steer.cli_args import add_steer_args

    add_steer_args(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="LibriSpeech-layout folder (or one *.trans.txt) or a JSONL manifest "
                        "{audio, text, id?}")
    add_common_generation_arguments(p, "asr")


def sampling_settings(args: argparse.Namespace, mode: str) -> Any:
    from megatron_soda.generate.settings import mode_defaults

    return mode_defaults(mode).with_overrides(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
    )


def encode_audio_items(codec: Any, sources: Sequence[tuple[str, float | None, float | None]]
                       ) -> list[np.ndarray | str]:
    """Codes per source (``(path, start, end)``), or the error message for that source."""
    from megatron_soda.audio.io import load_audio

    waves: list[np.ndarray | str] = []
    for path, start, end in sources:
        try:
            w = load_audio(path, start, end, name=path)
            if w.size == 0:
                raise ValueError("no samples")
            waves.append(w)
        except Exception as e:  # an unreadable file is that item's error, not the run's
            waves.append(f"audio unreadable: {e}")
    ok = [w for w in waves if not isinstance(w, str)]
    codes = iter(codec.encode(ok) if ok else [])
    return [w if isinstance(w, str) else next(codes) for w in waves]


def generate_rows(loaded: Any, todo: Sequence[tuple[int, np.ndarray]], settings: Any,
                  first_index: int, **kw: Any) -> dict[int, Any]:
    """Generations for ``(index_in_batch, prompt)`` pairs, keyed by that index.  Item ``k`` of
    the whole list samples from seed stream ``k`` (``first_index`` = the batch's first item),
    whatever the batching, sharding or skipped items around it."""
    from megatron_soda.generate.engine import generate

    out: dict[int, Any] = {}
    run: list[tuple[int, np.ndarray]] = []
    for pair in list(todo) + [(-2, None)]:  # sentinel flushes the last run
        if run and pair[0] != run[-1][0] + 1:
            gens = generate(loaded.model, loaded.tokenizer, [p for _, p in run], settings,
                            first_row=first_index + run[0][0], **kw)
            out.update({i: g for (i, _), g in zip(run, gens)})
            run = []
        if pair[1] is not None:
            run.append(pair)
    return out


def transcribe_items(loaded: Any, codec: Any, items: Sequence[Any], settings: Any,
                     batch_size: int, first_index: int = 0) -> list[dict[str, Any]]:
    """One result row per item, in order: ``id``, ``reference``, and ``hypothesis`` +
    ``stop_reason`` or ``error``.  ``first_index``: the index of ``items[0]`` in the run."""
    from megatron_soda.generate.engine import check_prompt_fits
    from megatron_soda.generate.prompts import asr_prompt
    from megatron_soda.generate.settings import MODE_STOP_AT

    tok = loaded.tokenizer
    rows: list[dict[str, Any]] = []
    for b in range(0, len(items), batch_size):
        batch = items[b:b + batch_size]
        codes = encode_audio_items(codec, [(it.audio, it.start, it.end) for it in batch])
        todo = []
        for i, c in enumerate(codes):
            if isinstance(c, str):
                continue
            try:
                prompt = asr_prompt(tok, c)
                check_prompt_fits(loaded.model, prompt)
                todo.append((i, prompt))
            except ValueError as e:
                codes[i] = str(e)
        by_index = generate_rows(loaded, todo, settings, first_index + b,
                                 stop_at=MODE_STOP_AT["asr"])
        for i, it in enumerate(batch):
            row: dict[str, Any] = {"id": it.id, "reference": it.text}
            if i in by_index:
                g = by_index[i]
                row.update(hypothesis=g.text, stop_reason=g.stop_reason,
                           generated_tokens=int(len(g.token_ids)))
            else:
                row.update(hypothesis=None, error=codes[i])
            rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """RESULT metrics from the item rows; adds each scored row's own ``wer``."""
    from megatron_soda.eval.wer import corpus_measures, utterance_wers

    scored = [r for r in rows if r.get("hypothesis") is not None]
    refs = [r["reference"] for r in scored]
    hyps = [r["hypothesis"] for r in scored]
    for r, w in zip(scored, utterance_wers(refs, hyps)):
        r["wer"] = w
    m = corpus_measures(refs, hyps)
    return {
        "wer": m["wer"],
        "average_wer": float(np.mean([r["wer"] for r in scored])) if scored else float("nan"),
        "n": len(scored),
        "n_errors": len(rows) - len(scored),
        "word_errors": m["errors"], "reference_words": m["words"],
        "substitutions": m["substitutions"], "deletions": m["deletions"],
        "insertions": m["insertions"],
        "stop_reasons": dict(collections.Counter(r["stop_reason"] for r in scored)),
    }


def run(args: argparse.Namespace) -> int:
    from megatron_soda.audio.codec import MimiCodec
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.eval.common import (
        EXIT_NOTHING_SCORED,
        read_limited,
        steer_context,
        write_prompted_results,
    )
    from megatron_soda.eval.distributed import EvalWorld
    from megatron_soda.eval.librispeech import read_asr_items

    settings = sampling_settings(args, "asr")
    items, input_errors = read_limited(read_asr_items, args)
    world = EvalWorld(args.device)
    status = 0
    try:
        loaded = load_model(args.model, device=world.device, dtype=args.dtype,
                            iteration=args.iteration)
        tok = loaded.tokenizer
        codec = MimiCodec(args.codec, num_codebooks=tok.layout.num_codebooks, device=str(world.device))
        mine = world.shard(list(range(len(items))))
        steer, steer_info = steer_context(args, loaded)
        with steer():
            rows = world.gather(transcribe_items(loaded, codec, [items[k] for k in mine], settings,
                                                 args.batch_size, mine[0] if mine else 0))
        if world.is_main:
            metrics = summarize(rows)
            status = 0 if metrics["n"] else EXIT_NOTHING_SCORED
            write_prompted_results(args, "asr", rows, metrics, loaded, codec, input_errors,
                                   settings, world.world, **steer_info)
            print(f"asr: WER {metrics['wer']:.4f} over {metrics['n']} utterances "
                  f"({metrics['n_errors']} unreadable), stops {metrics['stop_reasons']}")
    finally:
        world.close()
    return status
