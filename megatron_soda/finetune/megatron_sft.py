"""``finetune_soda.py`` (``soda-finetune``): the pretraining :class:`Trainer` with ``--sft`` on.

Same flags as ``pretrain_soda.py``; what differs:

* the authors' fine-tuning recipe is the default (:data:`megatron_soda.config.sft.SFT_DEFAULTS`:
  sequence length 2048, global batch 64, Cautious AdamC with LR 2e-5, betas 0.9/0.999, eps 1e-8,
  weight decay 0.01, cosine to 0.1x the peak with 3% warmup over the whole run, clip 1, z-loss
  1e-4); any flag given on the command line wins;
* ``--load`` takes a megatron_soda checkpoint (weights only, as ``--finetune``: fresh optimizer,
  schedule and data order) or any Hugging Face export (the released SODA, our own export, a
  Qwen3 warm start), converted once by :func:`megatron_soda.convert.from_hf.convert_from_hf` into
  ``SAVE/init_from_hf`` at the run's TP/PP layout (global rank 0 converts, the other ranks wait
  for the directory, which appears complete or not at all), then loaded;
* ``--model-size`` and ``--tokenizer`` default to the loaded model's (its architecture and the
  tokenizer directory saved with it);
* the data must be SFT shards (``PREFIX.loss_start.npy``): the loss covers the responses only.

A requeued run resumes from its own ``--save`` (the trainer's rule), with its exact state.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from megatron_soda.checkpointing import layout
from megatron_soda.config import ConfigError, TrainConfig
from megatron_soda.config.cli import build_parser as train_parser
from megatron_soda.config.cli import config_from_namespace
from megatron_soda.config.fields import flag_of
from megatron_soda.config.model import architecture_fields
from megatron_soda.config.sft import SFT_DEFAULT_ALTERNATIVES, SFT_DEFAULTS

PROG = "finetune_soda.py"
INIT_DIR = "init_from_hf"  # under --save: the converted Hugging Face model
_ARCH_DEST = "architecture:"  # config/cli.py's destination of architecture overrides
_FROM_MODEL = ("model_size", "tokenizer")  # required by pretrain_soda.py, here taken from --load


def build_parser() -> argparse.ArgumentParser:
    """pretrain_soda.py's parser with SFT on and the recipe's defaults."""
    parser = train_parser()
    parser.prog = PROG
    parser.description = ("Fine-tune SODA on SFT shards (prompt-loss masking) with megatron-core, from a "
                          "megatron_soda checkpoint or a Hugging Face export (--load).")
    parser.epilog = "fine-tuning defaults (flags override): " + ", ".join(
        f"{flag_of(k)} {v}" for k, v in SFT_DEFAULTS.items())
    arch = {n for n, _ in architecture_fields()}
    parser.set_defaults(sft=True, **{(_ARCH_DEST + k if k in arch else k): v for k, v in SFT_DEFAULTS.items()})
    for action in parser._actions:
        if action.dest in (*_FROM_MODEL, "global_batch_size"):
            action.required = False
    return parser


def _given(args: Sequence[str], name: str) -> bool:
    flag = flag_of(name)
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def hf_init_checkpoint(source: str, save: str | None, ns: argparse.Namespace, log=print) -> str:
    """``SAVE/init_from_hf``: Hugging Face directory ``source`` as a weights-only megatron_soda
    checkpoint at the run's layout, converted by global rank 0 unless already there (a requeue);
    other ranks wait for it."""
    if not save:
        raise ConfigError(f"--load {source} is a Hugging Face model: give --save DIR (it is converted once "
                          f"into DIR/{INIT_DIR})")
    init = os.path.join(save, INIT_DIR)
    tracker = os.path.join(init, layout.TRACKER)
    if _is_rank0() and not os.path.isfile(tracker):
        from megatron_soda.convert.from_hf import convert_from_hf

        os.makedirs(save, exist_ok=True)
        convert_from_hf(source, init, ns.tensor_model_parallel_size, ns.pipeline_model_parallel_size,
                        tokenizer=ns.tokenizer, num_codebooks=ns.num_codebooks,
                        seq_length=ns.__dict__.get(_ARCH_DEST + "seq_length"), seed=ns.seed, log=log)
    while not os.path.isfile(tracker):  # the directory is swapped in whole (replacing_dir)
        time.sleep(0.5)
    meta = layout.read_meta(layout.iteration_dir(init, 0))
    converted = (meta.get("converted_from") or {}).get("hf_dir")
    if converted != os.path.abspath(source):
        raise ConfigError(f"{init} was converted from {converted}, not --load {source}: remove it or use "
                          "another --save")
    return init


def model_flags(checkpoint: str) -> list[str]:
    """pretrain_soda.py flags of the model in a megatron_soda checkpoint: its preset and
    architecture overrides, and its saved tokenizer directory."""
    from megatron_soda.convert.from_hf import trainer_flags
    from megatron_soda.convert.to_hf import locate_checkpoint
    from megatron_soda.models.config import SodaModelConfig

    ckpt = locate_checkpoint(checkpoint)
    cfg = SodaModelConfig.from_dict(layout.read_meta(ckpt)["model"])
    return trainer_flags(cfg, os.path.join(ckpt, "tokenizer"))


def finetune_config(argv: Sequence[str] | None = None, log=print) -> TrainConfig:
    """argv -> the validated fine-tuning config (converting an HF ``--load`` first)."""
    from megatron_soda.convert.errors import ConversionError
    from megatron_soda.convert.in_memory import is_megatron_checkpoint

    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(args)
    try:
        if ns.load:
            start = ns.load if is_megatron_checkpoint(ns.load) else hf_init_checkpoint(
                ns.load, ns.save, ns, log=log if _is_rank0() else (lambda *_: None))
            # the model's flags first: the user's (later) flags win; weights only
            args = [*model_flags(start), *args, "--load", start, "--finetune"]
        elif not (ns.model_size and ns.tokenizer):
            raise ConfigError("give --load (a megatron_soda checkpoint or a Hugging Face export), or "
                              "--model-size and --tokenizer to fine-tune from a random initialisation")
        ns = parser.parse_args(args)
        for default, other in SFT_DEFAULT_ALTERNATIVES.items():
            if _given(args, other) and not _given(args, default):
                setattr(ns, default, None)  # e.g. --min-lr replaces the recipe's --min-lr-ratio
        return config_from_namespace(ns).validate()
    except (ConfigError, ConversionError) as e:
        parser.exit(2, f"{PROG}: error: {e}\n")


def main(argv: Sequence[str] | None = None) -> None:
    from megatron_soda.training.main import run

    run(finetune_config(argv), prog=PROG)
