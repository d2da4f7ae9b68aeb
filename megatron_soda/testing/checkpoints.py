"""megatron_soda checkpoints for tests and benchmarks: deterministic random weights written
through the trainer's own save path, and the logits of a checkpoint computed by megatron_soda's
own model (the reference a converted Hugging Face model must match).

Both run megatron in the calling process on the CPU
(:func:`megatron_soda.convert.runtime.megatron_runtime`), so they refuse a process that sees a
GPU: run them with ``CUDA_VISIBLE_DEVICES=``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator

import torch

from megatron_soda.convert.runtime import build_stage, fill_stage, megatron_runtime
from megatron_soda.models.config import SodaModelConfig
from megatron_soda.tokenizer import SodaTokenizer


@contextlib.contextmanager
def whole_model(cfg: SodaModelConfig) -> Iterator[torch.nn.Module]:
    """The whole model of ``cfg`` (TP = PP = 1, fp32, parameters uninitialised) inside a
    one-process megatron runtime."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        megatron_runtime(0, 1, os.path.join(tmp, "store"), 1, 1),
    ):
        yield build_stage(cfg, torch.float32)


def random_weights(
    cfg: SodaModelConfig, seed: int, scale: float = 0.05
) -> Callable[..., torch.Tensor]:
    """A ``global_tensor`` function for :func:`~megatron_soda.convert.runtime.fill_stage` giving
    deterministic random weights, the same under every layout: norm weights ``1 + N(0, 0.1)`` (so
    that a swapped norm would show), matrices ``N(0, scale)``."""
    from megatron_soda.convert import names
    from megatron_soda.models.init import seed_for

    shapes = {
        k: names.megatron_layer_shape(p, cfg) for p in names.LAYER_PARAMS for k in p.megatron_keys
    }
    shapes.update({k: names.megatron_global_shape(k, cfg) for k in names.GLOBAL_PARAMS})

    def make(key: str, layer: int | None, out: torch.Tensor | None = None) -> torch.Tensor:
        # ``out`` (fill_stage's in-place target) is not used: a fresh tensor is returned
        gen = torch.Generator().manual_seed(seed_for(seed, f"{key}/{layer}"))
        t = torch.randn(shapes[key], generator=gen)
        return t.mul_(0.1).add_(1.0) if "norm" in key else t.mul_(scale)

    return make


def save_random_checkpoint(
    save: str,
    cfg: SodaModelConfig,
    tokenizer: SodaTokenizer,
    seed: int = 1,
    iteration: int = 1,
    scale: float = 0.05,
) -> str:
    """Write a megatron_soda checkpoint (TP = PP = 1, this process, trainer's save path) of
    ``cfg`` with :func:`random_weights`; returns its ``iter_N`` directory."""
    from megatron_soda.checkpointing import TrainState, layout, save_checkpoint

    with whole_model(cfg) as chunk:
        fill_stage(chunk, random_weights(cfg, seed, scale))
        save_checkpoint(
            save,
            TrainState(iteration=iteration),
            [chunk],
            None,
            None,
            model_cfg=cfg,
            tokenizer=tokenizer,
            run_args={"random_weights_seed": seed},
            save_optimizer=False,
        )
    return layout.iteration_dir(save, iteration)


def load_stage(chunk: torch.nn.Module, ckpt: str) -> None:
    """Load the model weights of checkpoint ``ckpt`` into ``chunk`` (no optimizer, RNG or train state)."""
    from megatron.core import dist_checkpointing

    from megatron_soda.checkpointing.state import model_state

    loaded = dist_checkpointing.load(model_state([chunk]), ckpt)
    chunk.load_state_dict(loaded["model"], strict=True)


@torch.no_grad()
def checkpoint_logits(ckpt: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` (padded vocabulary rows dropped) of the model in checkpoint
    ``ckpt`` on ``tokens`` ``[b, s]`` (one causal sequence per row), computed by megatron_soda's
    own model at TP = PP = 1 in this process: the reference the converted HF model must match.
    It loads through megatron's own ``dist_checkpointing.load`` (as the trainer does), so use
    it on checkpoints you would train from."""
    from megatron_soda.checkpointing import layout

    cfg = SodaModelConfig.from_dict(layout.read_meta(ckpt)["model"])
    b, s = tokens.shape
    with whole_model(cfg) as chunk:
        load_stage(chunk, ckpt)
        chunk.eval()
        mask = torch.ones(s, s, dtype=torch.bool).triu(1).expand(b, 1, s, s)
        positions = torch.arange(s).expand(b, s)
        logits = chunk(input_ids=tokens, position_ids=positions, attention_mask=mask)
    return logits[..., : cfg.vocab_size].float()
