"""``python -m megatron_soda.eval <command>`` (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, add_arguments, run, help)
COMMANDS = {
    "prepare": ("megatron_soda.eval.prepare", "add_arguments", "run",
                "tokenize/encode benchmark items once into a prepared directory"),
    "pairs": ("megatron_soda.eval.pairs", "add_pairs_arguments", "run_pairs",
              "score one likelihood task from its data (minimal pairs, or HellaSwag)"),
    "likelihood": ("megatron_soda.eval.pairs", "add_likelihood_arguments", "run_likelihood",
                   "score every task of a prepared directory"),
    "asr": ("megatron_soda.eval.asr", "add_arguments", "run", "ASR word error rate"),
    "tts": ("megatron_soda.eval.tts", "add_arguments", "run",
            "TTS with a voice prompt: WER of the generated speech and speaker similarity"),
    "s2st": ("megatron_soda.eval.s2st", "add_arguments", "run", "speech-to-speech translation: ASR-BLEU, text BLEU, speaker similarity"),
    "table": ("megatron_soda.eval.table", "add_arguments", "run",
              "SODA's results table from results files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megatron_soda.eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        getattr(importlib.import_module(module), add)(p)
        p.set_defaults(func=(module, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, run = args.func
    try:
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except (ValueError, OSError) as e:  # ConversionError, PreparedError, CodecError, ...
        print(f"error: {e}", file=sys.stderr)
        return 1
