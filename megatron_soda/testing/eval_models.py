"""A tiny random-weight SODA model as both a megatron_soda checkpoint and its HF export, for the
evaluation, generation and steering tests and benchmarks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from megatron_soda.models import preset
from megatron_soda.tokenizer import SodaTokenizer


@dataclass(frozen=True)
class TinySoda:
    save: str  # megatron_soda --save directory (tracker + iter_N)
    checkpoint: str  # its iter_N directory
    hf: str  # the HF export of that checkpoint
    tokenizer: SodaTokenizer


def make_tiny_soda(
    root: str, base_tokenizer: str, num_codebooks: int = 8, seed: int = 3, scale: float = 0.05,
    size: str = "tiny",
) -> TinySoda:
    """Write ``root/ckpt`` (megatron_soda, iteration 1) and ``root/hf`` (fp32 HF export).

    Runs megatron in this process on the CPU: call with ``CUDA_VISIBLE_DEVICES=`` on a GPU box."""
    from megatron_soda.convert.to_hf import convert_to_hf
    from megatron_soda.testing.checkpoints import save_random_checkpoint

    tok = SodaTokenizer(base_tokenizer, num_codebooks=num_codebooks)
    cfg = preset(size).with_overrides(vocab_size=tok.vocab_size)
    save = os.path.join(root, "ckpt")
    ckpt = save_random_checkpoint(save, cfg, tok, seed=seed, iteration=1, scale=scale)
    hf = os.path.join(root, "hf")
    convert_to_hf(save, hf, dtype="fp32", log=lambda *a, **k: None)
    return TinySoda(save, ckpt, hf, tok)
