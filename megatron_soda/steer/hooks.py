"""Add ``alpha x vector`` to the output of one decoder layer of an HF Qwen3 model.

The authors register a forward hook on ``language_model.model.layers[L]`` that adds the scaled
vector to the masked tokens of ``output[0]`` (``models/paligemma_meanshift_model.py`` lines
240-296, 338-350) and removes itself after the prompt pass (line 283-284): only the prompt is
steered; generated tokens feel it through the KV cache.  Here:

* ``positions``: ``audio`` (audio-code ids), ``text`` (text ids), ``both``; markers, BOS/EOS
  and padding (EOS in generation) are never steered, as the authors skip special tokens (lines
  154-216).  Decided per forward from that forward's ``input_ids``.
* ``scope``: ``prefill`` steers forwards that start from an empty cache (the prompt pass, and
  every forward of likelihood scoring); ``all`` steers every forward, generated tokens too.
* ``alpha == 0`` registers nothing: bit-identical to no steering.

The ids are captured by a forward pre-hook on the decoder stack (``model.model``), which both
``Qwen3ForCausalLM.forward`` and the likelihood scorer's direct ``model.model(...)`` go through.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from megatron_soda.models.steering import POSITIONS, position_mask
from megatron_soda.steer.cli_args import SCOPES

__all__ = ["Steering", "position_mask", "steering"]


@dataclass(frozen=True)
class Steering:
    vector: torch.Tensor  # [hidden], the raw direction (scaled by alpha)
    layer: int
    alpha: float
    positions: str = "audio"
    scope: str = "prefill"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"steer positions {self.positions!r}: choose one of {POSITIONS}")
        if self.scope not in SCOPES:
            raise ValueError(f"steer scope {self.scope!r}: choose one of {SCOPES}")


def _cache_empty(kwargs: dict) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is None or cache.get_seq_length() == 0


@contextmanager
def steering(model: torch.nn.Module, layout, steer: Steering | None) -> Iterator[None]:
    """While inside, decoder layer ``steer.layer`` of ``model`` (``Qwen3ForCausalLM``) adds
    ``alpha x vector`` at the positions and forwards ``steer`` selects.  ``None`` or alpha 0:
    nothing is registered."""
    if steer is None or steer.alpha == 0:
        yield
        return
    inner = model.model
    if not 0 <= steer.layer < len(inner.layers):
        raise ValueError(f"steer layer {steer.layer}: the model has layers 0..{len(inner.layers) - 1}")
    if steer.vector.numel() != model.config.hidden_size:
        raise ValueError(f"steering vector of size {steer.vector.numel()}, the model's hidden size "
                         f"is {model.config.hidden_size}")
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def capture(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("steering needs input_ids (not inputs_embeds) to find its positions")
        active = steer.scope == "all" or _cache_empty(kwargs)
        state["mask"] = position_mask(ids, layout, steer.positions) if active else None

    def add(module, args, output):
        mask = state["mask"]
        if mask is None or not bool(mask.any()):
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        delta = (steer.alpha * steer.vector.float()).to(hidden.device, hidden.dtype)
        steered = torch.where(mask[..., None].to(hidden.device), hidden + delta, hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handles = [inner.register_forward_pre_hook(capture, with_kwargs=True),
               # prepend: before transformers' own output-capturing hook, so that
               # output_hidden_states reports the steered residual
               inner.layers[steer.layer].register_forward_hook(add, prepend=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
