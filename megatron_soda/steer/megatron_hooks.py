"""Steering the megatron-core GPTModel: the megatron twin of :func:`megatron_soda.steer.hooks.steering`.

``megatron_steering(model_chunks, layout, steer)`` adds ``alpha x vector`` to the output of
TransformerLayer ``steer.layer`` (0-based, global over pipeline stages and virtual chunks) at the
positions ``steer.positions`` selects, as the HF hook does (the authors' hook:
``models/paligemma_meanshift_model.py`` lines 240-296 of Woodygan/TextSteersVision).  Correct
under tensor parallelism, ``--sequence-parallel`` (each rank adds to its own block of the
sequence), pipeline parallelism and packed THD batches; context parallelism is refused.  The
placement itself lives in :mod:`megatron_soda.models.steering` (the trainer's task evaluator
uses it too, and may not import ``steer``).

Every megatron forward is a full-sequence forward (training, evaluation, likelihood scoring),
so ``steer.scope`` (prefill|all) makes no difference here.  Alpha 0 registers nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from megatron_soda.models.steering import layer_addition
from megatron_soda.steer.hooks import Steering, position_mask


@contextmanager
def megatron_steering(model_chunks: list[torch.nn.Module] | torch.nn.Module, layout: Any,
                      steer: Steering | None) -> Iterator[None]:
    """While inside, the megatron model chunks (GPTModel, possibly wrapped by DDP/Float16Module)
    are steered by ``steer``; ``None`` or alpha 0: nothing is registered (bit-identical)."""
    if steer is None or steer.alpha == 0:
        yield
        return
    chunks = model_chunks if isinstance(model_chunks, list) else [model_chunks]
    delta = steer.alpha * steer.vector.float()  # as steer/hooks.py computes it
    with layer_addition(chunks, steer.layer, delta, partial(position_mask, layout=layout, positions=steer.positions)):
        yield
