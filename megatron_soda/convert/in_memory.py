"""Load any model this project can score as a ``transformers`` ``Qwen3ForCausalLM`` plus its
SODA tokenizer, in memory: an HF directory (our export, SODA's release, a warm start) or a
megatron_soda checkpoint directory (converted tensor by tensor through :class:`MegatronSource`,
exactly what ``convert_to_hf`` writes, without writing it).

Weights are read from safetensors or the checkpoint's DCP shards only (docs/security.md):
nothing read is unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from megatron_soda.checkpointing import layout
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_config import hf_config, read_json
from megatron_soda.tokenizer import SodaTokenizer

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A causal LM ready for scoring or generation, and where it came from."""

    model: torch.nn.Module  # transformers Qwen3ForCausalLM in eval mode
    tokenizer: SodaTokenizer
    source: str  # the directory the user named
    kind: str  # "hf" or "megatron"
    info: dict[str, Any] = field(default_factory=dict)  # iteration, checkpoint path, ...

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def is_megatron_checkpoint(path: str) -> bool:
    """A megatron_soda save directory (with a tracker) or one ``iter_N`` directory."""
    return os.path.isfile(os.path.join(path, layout.META)) or os.path.isfile(
        os.path.join(path, layout.TRACKER)
    )


def load_model(
    path: str, device: str | torch.device = "cpu", dtype: str = "fp32", iteration: int | None = None
) -> LoadedModel:
    """``path``: an HF directory or a megatron_soda checkpoint (``--save`` dir or ``iter_N``)."""
    if dtype not in TORCH_DTYPES:
        raise ConversionError(f"dtype {dtype!r}: choose one of {sorted(TORCH_DTYPES)}")
    if not os.path.isdir(path):
        raise ConversionError(f"{path}: not a directory (an HF export or a megatron_soda checkpoint)")
    if is_megatron_checkpoint(path):
        loaded = _from_megatron(path, dtype, iteration)
    else:
        loaded = _from_hf(path, dtype)
    loaded.model.to(device).eval()
    return loaded


def _from_hf(path: str, dtype: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    from megatron_soda.convert.hf_tokenizer import resolve_tokenizer

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConversionError(f"{path}: neither an HF model directory (no config.json) nor a "
                              f"megatron_soda checkpoint (no {layout.TRACKER} or {layout.META})")
    resolved = resolve_tokenizer(path)
    if not resolved.soda_source:
        raise ConversionError(f"{path}: a text model without SODA's audio tokens ({resolved.how})")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=TORCH_DTYPES[dtype], local_files_only=True, use_safetensors=True
    )
    return LoadedModel(
        model, resolved.tokenizer, path, "hf", {"tokenizer": resolved.how, "_resolved": resolved}
    )


def _from_megatron(path: str, dtype: str, iteration: int | None) -> LoadedModel:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_soda.convert.to_hf import MegatronSource, locate_checkpoint

    ckpt = locate_checkpoint(path, iteration)
    src = MegatronSource(ckpt)
    config = Qwen3Config(**hf_config(src.cfg, src.tokenizer, dtype))
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    state = {name: t.to(TORCH_DTYPES[dtype]) for name, t in src.hf_tensors()}
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ConversionError(f"{ckpt}: no tensors for {sorted(missing)[:4]}")
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers off meta
    info = {"checkpoint": ckpt, "iteration": src.meta.get("train_state", {}).get("iteration")}
    return LoadedModel(model, src.tokenizer, path, "megatron", info)


def provenance(path: str) -> dict[str, Any]:
    """The export's provenance record, if any (for results files)."""
    from megatron_soda.convert.to_hf import PROVENANCE_FILE

    p = os.path.join(path, PROVENANCE_FILE)
    return read_json(p) if os.path.isfile(p) else {}


def load_tokenizer(path: str, iteration: int | None = None) -> SodaTokenizer:
    """The SODA tokenizer of a model directory (HF export or megatron_soda checkpoint), without
    loading its weights."""
    if is_megatron_checkpoint(path):
        from megatron_soda.convert.to_hf import locate_checkpoint

        ckpt = locate_checkpoint(path, iteration)
        return SodaTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
    from megatron_soda.convert.hf_tokenizer import resolve_tokenizer

    resolved = resolve_tokenizer(path)
    if not resolved.soda_source:
        raise ConversionError(f"{path}: a text model without SODA's audio tokens ({resolved.how})")
    return resolved.tokenizer
