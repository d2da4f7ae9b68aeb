"""Model flags: a preset plus any field overridden with Megatron-LM's flag names
(``hidden_size`` <-> ``--hidden-size``, ``seq_length`` <-> ``--seq-length``, ...)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from megatron_soda.models.config import PRESETS, SodaModelConfig, preset

# Fields that come from the tokenizer, never from the command line.
_NOT_FLAGS = {"vocab_size"}


def _overridable() -> list[tuple[str, type]]:
    example = PRESETS["tiny"]
    return [
        (f.name, type(getattr(example, f.name)))
        for f in fields(SodaModelConfig)
        if f.name not in _NOT_FLAGS
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model-size", required=True, choices=sorted(PRESETS),
                   help="architecture preset (SODA_SPEC.md section 4); override any field below")
    g.add_argument("--tokenizer", required=True,
                   help="base tokenizer.json, or a directory saved by SodaTokenizer.save (e.g. a "
                   "checkpoint's tokenizer/); must match the one used for preprocessing")
    g.add_argument("--num-codebooks", type=int, default=8, help="audio codebooks per frame (as in preprocessing)")
    for name, typ in _overridable():
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"override the preset's {name}")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="accepted for Megatron-LM compatibility; RoPE has no position table, so it "
                   "only has to be >= --seq-length")
    g.add_argument("--z-loss-weight", type=float, default=1e-4, help="loss = CE + w * mean(logsumexp^2)")


def model_config(args: argparse.Namespace, vocab_size: int) -> SodaModelConfig:
    """The preset with every given override applied, sized for the tokenizer's vocabulary."""
    overrides = {name: getattr(args, name) for name, _ in _overridable()}
    cfg = preset(args.model_size).with_overrides(**overrides, vocab_size=vocab_size)
    if args.max_position_embeddings is not None and args.max_position_embeddings < cfg.seq_length:
        raise ValueError(f"--max-position-embeddings {args.max_position_embeddings} < --seq-length {cfg.seq_length}")
    return cfg


def finalize(args: argparse.Namespace) -> None:
    if args.num_codebooks < 1:
        raise ValueError("--num-codebooks must be >= 1")
    if args.z_loss_weight < 0:
        raise ValueError("--z-loss-weight must be >= 0")
