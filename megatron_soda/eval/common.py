"""Flags and set-up shared by the evaluation commands."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from megatron_soda.tasks.sequences import SCORE_SPANS

EXIT_NOTHING_SCORED = 2  # as `pairs` with no item left: empty data, --limit 0, every item unreadable
SAMPLE_RATE = 24000  # of the WAVs tts and s2st write
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def count_arg(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser, codec_required: bool = False) -> None:
    p.add_argument("--model", required=True,
                   help="an HF export (Qwen3ForCausalLM + SODA tokenizer) or a megatron_soda "
                        "checkpoint directory (converted in memory)")
    p.add_argument("--iteration", type=int, default=None,
                   help="checkpoint iteration (default: the latest) for a megatron_soda --model")
    p.add_argument("--codec", required=codec_required, default=None,
                   help="Mimi codec spec, as in preprocessing (kyutai/mimi, a local dir, random:tiny:0)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="model weights/activations (scores are always accumulated in float64)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="RESULT.json")
    p.add_argument("--items", default=None, help="ITEMS.jsonl: one line per item")


def add_span_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--score-span", default="all_audio", choices=SCORE_SPANS,
                   help="all_audio: every audio token (the authors'); semantic: codebook 0 only "
                        "(Llama-Mimi's sWUGGY/sBLIMP scoring)")


def make_codec(spec: str | None, tok: Any, device: Any) -> Any:
    """The preprocessing codec for ``tok``'s codebook count, or None without a spec."""
    if spec is None:
        return None
    from megatron_soda.audio.codec import MimiCodec

    return MimiCodec(spec, num_codebooks=tok.layout.num_codebooks, device=str(device))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_prompted_results(args: argparse.Namespace, task: str, rows: list[dict[str, Any]],
                           metrics: dict[str, Any], loaded: Any, codec: Any, input_errors: list,
                           settings: Any, world_size: int, **extra: Any) -> None:
    """RESULT.json/ITEMS.jsonl of a prompted task (asr, tts), per-item errors logged."""
    from megatron_soda.eval.results import run_record, write_results

    for r in rows:
        if "error" in r:
            log(f"{r['id']}: {r['error']}")
    result = {
        "task": task, **metrics, **extra,
        "input_errors": [vars(e) for e in input_errors],
        "sampling": settings.to_dict(),
        **run_record(args, loaded, codec=str(codec.spec), world_size=world_size),
    }
    write_results(args.output, result, args.items, rows)


def steer_context(args: argparse.Namespace, loaded: Any) -> tuple[Any, dict[str, Any]]:
    """A factory of the steering context the ``--steer*`` flags ask for (a no-op without them)
    and the results' ``steer`` entry (docs/steering.md)."""
    from megatron_soda.steer.cli_args import steer_record, steering_from_args
    from megatron_soda.steer.hooks import steering

    steer = steering_from_args(args, loaded.model, loaded.tokenizer)
    return (lambda: steering(loaded.model, loaded.tokenizer.layout, steer),
            {"steer": steer_record(args, steer)})


def wav_name(utt: str) -> str:
    """``utt`` as a file name inside ``--audio-dir`` (no separators, no leading dot)."""
    if not _SAFE_NAME.match(utt) or utt in (".", ".."):
        raise ValueError(f"utterance id {utt!r} is not a safe file name")
    return utt + ".wav"


def generate_speech_items(loaded: Any, codec: Any, items: Sequence[Any], settings: Any,
                          batch_size: int, audio_dir: str, first_index: int, mode: str,
                          audio_of: Callable[[Any], str],
                          build_prompt: Callable[[Any, Any], Any],
                          fill_row: Callable[[Any, Any, Any], dict[str, Any]]
                          ) -> list[dict[str, Any]]:
    """The tts and s2st loop.  Per batch: each item's ``audio_of(item)`` encoded as preprocessing
    does, its prompt ``build_prompt(item, codes)`` checked (a safe ``wav_name``, room left in the
    model), the prompts generated with ``mode``'s stop rule.  Each row is ``fill_row(item,
    prompt, generation)`` (generation None: the item failed, the row gets ``error``) plus the
    generation's counts and ``wav``: its whole frames decoded into ``audio_dir/<id>.wav``, None
    without frames."""
    from megatron_soda.eval.asr import encode_audio_items, generate_rows
    from megatron_soda.generate.audio_out import codes_to_wave, write_wav
    from megatron_soda.generate.engine import check_prompt_fits
    from megatron_soda.generate.settings import MODE_STOP_AT
    from megatron_soda.generate.silence import silence_codes

    silence = silence_codes(codec)
    rows: list[dict[str, Any]] = []
    for b in range(0, len(items), batch_size):
        batch = items[b:b + batch_size]
        codes = encode_audio_items(codec, [(audio_of(it), None, None) for it in batch])
        todo = []
        for i, (it, c) in enumerate(zip(batch, codes)):
            if isinstance(c, str):
                continue
            try:
                wav_name(it.id)
                prompt = build_prompt(it, c)
                check_prompt_fits(loaded.model, prompt)
                todo.append((i, prompt))
            except ValueError as e:
                codes[i] = str(e)
        by_index = generate_rows(loaded, todo, settings, first_index + b, silence=silence,
                                 stop_at=MODE_STOP_AT[mode])
        prompts = dict(todo)
        for i, it in enumerate(batch):
            g = by_index.get(i)
            row = fill_row(it, prompts.get(i), g)
            if g is None:
                row["error"] = codes[i]
                rows.append(row)
                continue
            row.update(stop_reason=g.stop_reason, generated_tokens=int(len(g.token_ids)),
                       frames=g.audio_frames, audio_seconds=g.audio_seconds,
                       trimmed_frames=g.trimmed_frames, wav=None)
            if g.audio_frames:
                path = os.path.join(audio_dir, wav_name(it.id))
                write_wav(path, codes_to_wave(codec, g.audio_codes), SAMPLE_RATE)
                row["wav"] = path
            rows.append(row)
    return rows


def read_limited(read: Any, args: argparse.Namespace) -> tuple[list, list]:
    """``read(args.data)`` -> (items, input errors), cut to ``--limit``, errors logged."""
    items, input_errors = read(args.data)
    if args.limit is not None:
        items = items[: args.limit]
    for e in input_errors:
        log(f"skipped: {e}")
    return items, input_errors


def run_generated_speech(args: argparse.Namespace, task: str, items: list, input_errors: list,
                         settings: Any, generate_items: Any, score_items: Any, summarize: Any,
                         describe: Any, check: Any = None) -> int:
    """The tts and s2st runs: the scorers built first (a bad ``--asr-scorer`` fails before any
    generation), then the model and a decoding codec; each rank generates and scores its share,
    rank 0 writes the results.  Returns the exit status."""
    from megatron_soda.audio.codec import MimiCodec
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.eval.distributed import EvalWorld
    from megatron_soda.eval.scorers import make_speaker_encoder, make_transcriber

    world = EvalWorld(args.device)
    status = 0
    try:
        scorer_device = args.scorer_device or str(world.device)
        transcriber = make_transcriber(args.asr_scorer, device=scorer_device)
        speaker = make_speaker_encoder(args.speaker_scorer, device=scorer_device)
        if check is not None:
            check()
        loaded = load_model(args.model, device=world.device, dtype=args.dtype,
                            iteration=args.iteration)
        codec = MimiCodec(args.codec, num_codebooks=loaded.tokenizer.layout.num_codebooks,
                          device=str(world.device), decoder=True)
        os.makedirs(args.audio_dir, exist_ok=True)
        idx = world.shard(list(range(len(items))))
        steer, steer_info = steer_context(args, loaded)
        with steer():
            mine = generate_items(loaded, codec, [items[k] for k in idx], settings, args.batch_size,
                                  args.audio_dir, idx[0] if idx else 0)
        score_items(mine, transcriber, speaker)
        rows = world.gather(mine)
        if world.is_main:
            metrics = summarize(rows)
            status = 0 if metrics["n"] else EXIT_NOTHING_SCORED
            write_prompted_results(args, task, rows, metrics, loaded, codec, input_errors,
                                   settings, world.world, asr_scorer=transcriber.name,
                                   speaker_scorer=speaker.name, **steer_info)
            print(describe(metrics))
    finally:
        world.close()
    return status
