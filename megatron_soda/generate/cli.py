"""``python -m megatron_soda.generate``: one prompt in, token ids, text, a WAV and a JSON record out.

    python -m megatron_soda.generate --model DIR --codec kyutai/mimi --mode tts \\
        --text "Hello there." --prompt-audio voice.wav --prompt-text "Voice prompt words." \\
        --output-json out.json --output-wav out.wav

``--model``: an HF export or a megatron_soda checkpoint (converted in memory).  Audio inputs
are loaded with :func:`megatron_soda.audio.io.load_audio` and encoded by ``MimiCodec(spec,
num_codebooks=<the tokenizer's>)``, as preprocessing does.  Sampling settings default to the
authors' per mode (:func:`megatron_soda.generate.settings.mode_defaults`).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.generate.settings import MODE_STOP_AT, MODES, mode_defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_soda.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF export or megatron_soda checkpoint dir")
    p.add_argument("--codec", required=True, help="Mimi codec spec, as for preprocessing")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--text", default=None, help="tts: the text to speak")
    p.add_argument("--prompt-audio", default=None, help="tts: voice prompt audio")
    p.add_argument("--prompt-text", default=None, help="tts: the voice prompt's transcript")
    p.add_argument("--audio", default=None, help="asr/continue/s2st: the input speech")
    p.add_argument("--source-language", default=None, help="s2st: source language code (de, fr, ...)")
    p.add_argument("--target-language", default="en", help="s2st: target language code")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--silence-frames", type=int, default=None, help="0 = no silence stop")
    p.add_argument("--repetition-ngram", type=int, default=None, help="0 = no repetition stop")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    p.add_argument("--output-json", required=True)
    p.add_argument("--output-wav", default=None)
    from megatron_soda.steer.cli_args import add_steer_args

    add_steer_args(p)
    return p


def _check_inputs(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.mode == "tts" and not a.text:
        p.error("--mode tts needs --text")
    if a.mode in ("asr", "continue", "s2st") and not a.audio:
        p.error(f"--mode {a.mode} needs --audio")
    if (a.prompt_audio is None) != (a.prompt_text is None):
        p.error("--prompt-audio and --prompt-text go together")
    if a.prompt_audio and a.mode != "tts":
        p.error("--prompt-audio/--prompt-text are for --mode tts")
    if a.mode == "s2st" and not a.source_language:
        p.error("--mode s2st needs --source-language")
    if a.steer and a.backend == "vllm":
        p.error("--steer needs --backend transformers")


def build_prompt(args: argparse.Namespace, tok, codec) -> np.ndarray:
    from megatron_soda.audio.io import load_audio
    from megatron_soda.generate import prompts

    def encode(path: str) -> np.ndarray:
        return codec.encode([load_audio(path)])[0]

    if args.mode == "asr":
        return prompts.asr_prompt(tok, encode(args.audio))
    if args.mode == "continue":
        return prompts.continue_prompt(tok, encode(args.audio))
    if args.mode == "s2st":
        return prompts.s2st_prompt(tok, encode(args.audio), args.source_language,
                                   tgt_lang=args.target_language)
    voice = encode(args.prompt_audio) if args.prompt_audio else None
    return prompts.tts_prompt(tok, args.text, voice, args.prompt_text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_inputs(parser, args)
    import torch

    from megatron_soda.audio.codec import CodecError, MimiCodec
    from megatron_soda.audio.io import AudioError
    from megatron_soda.convert.errors import ConversionError
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.generate.audio_out import write_generation_wav
    from megatron_soda.generate.engine import generate
    from megatron_soda.generate.silence import silence_codes
    from megatron_soda.steer.cli_args import steer_record, steering_from_args
    from megatron_soda.steer.hooks import steering

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steer = None
    try:
        settings = mode_defaults(args.mode).with_overrides(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            max_new_tokens=args.max_new_tokens, seed=args.seed,
            silence_frames=args.silence_frames, repetition_ngram=args.repetition_ngram)
        if args.backend == "vllm":
            from megatron_soda.generate.vllm_backend import load_tokenizer

            loaded, tok = None, load_tokenizer(args.model)
        else:
            loaded = load_model(args.model, device=device, dtype=args.dtype)
            tok = loaded.tokenizer
        codec = MimiCodec(args.codec, num_codebooks=tok.layout.num_codebooks, device=device,
                          decoder=True)
        prompt = build_prompt(args, tok, codec)
        silence = silence_codes(codec)
        stop_at = MODE_STOP_AT[args.mode]
        if args.backend == "vllm":
            from megatron_soda.generate.vllm_backend import generate_vllm

            (gen,) = generate_vllm(args.model, tok, [prompt], settings, silence, stop_at)
        else:
            steer = steering_from_args(args, loaded.model, tok)
            with steering(loaded.model, tok.layout, steer):
                (gen,) = generate(loaded.model, tok, [prompt], settings, silence, stop_at)
    except (ConversionError, CodecError, AudioError, ValueError, ImportError) as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 2
    wav = None
    if args.output_wav:
        if gen.audio_frames:
            write_generation_wav(args.output_wav, codec, gen.audio_codes)
            wav = args.output_wav
        else:
            print("generate: no whole audio frame generated; no WAV written", file=sys.stderr)
    record = {
        "stop_reason": gen.stop_reason,
        "token_ids": [int(i) for i in gen.token_ids],
        "text": gen.text,
        "text_spans": gen.text_spans,
        "audio_seconds": gen.audio_seconds,
        "audio_frames": gen.audio_frames,
        "trimmed_frames": gen.trimmed_frames,
        "output_wav": wav,
        "mode": args.mode,
        "stop_at": stop_at,
        "settings": settings.to_dict(),
        "seed": settings.seed,
        "backend": args.backend,
        "model": {"source": args.model, "kind": loaded.kind if loaded else "hf",
                  "iteration": (loaded.info.get("iteration") if loaded else None)},
        "codec": str(codec.spec),
        "silence_codes": silence.to_dict(),
        "prompt_length": int(prompt.size),
        "inputs": {"text": args.text, "audio": args.audio, "prompt_audio": args.prompt_audio,
                   "prompt_text": args.prompt_text, "source_language": args.source_language,
                   "target_language": args.target_language if args.mode == "s2st" else None},
        "device": device,
        "steer": steer_record(args, steer),
    }
    write_json_atomic(args.output_json, record, indent=1, ensure_ascii=False)
    print(f"{gen.stop_reason}: {len(gen.token_ids)} ids, {gen.audio_seconds:.2f} s audio, "
          f"text {gen.text[:80]!r}")
    return 0
