"""Steering-vector files: safetensors, one float32 tensor ``layer.<L>`` per layer, and one
metadata entry ``soda_steer`` (JSON): format version, method, concept, layers, the norm of each
vector, each layer's median residual norm (for ``--steer-alpha-units norm``), the text format
the sentences ran in, the hidden size and the source model's fingerprint.

Loading refuses a vector whose hidden size differs from the model's and warns when the
fingerprint differs (a vector may be meant for a warm-started model sharing the backbone).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from megatron_soda.models.steering import FORMAT, META_KEY, VERSION, read_vector_file


@dataclass
class SteeringVectors:
    vectors: dict[int, torch.Tensor]  # layer -> float32 [hidden]
    method: str
    concept: str
    median_norm: dict[int, float]  # every layer of the source model
    text_format: str
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)  # method details (SAE features, solver...)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).numel())

    def vector(self, layer: int) -> torch.Tensor:
        if layer not in self.vectors:
            raise ValueError(f"no vector for layer {layer} (the file has layers "
                             f"{sorted(self.vectors)})")
        return self.vectors[layer]


def model_fingerprint(model: torch.nn.Module, tok) -> str:
    """sha256 of the architecture config, the tokenizer's unique identifiers and a strided sample
    of a few weights (embeddings, first and last layer, final norm): cheap, and different for any
    two trained models."""
    h = hashlib.sha256()
    cfg = model.config
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "rope_theta", "head_dim")
    h.update(json.dumps({k: getattr(cfg, k, None) for k in keys}, sort_keys=True,
                        default=str).encode())
    h.update(json.dumps(dict(tok.unique_identifiers), sort_keys=True).encode())
    inner = model.model
    for w in (inner.embed_tokens.weight, inner.layers[0].self_attn.q_proj.weight,
              inner.layers[-1].mlp.down_proj.weight, inner.norm.weight):
        sample = w.detach().flatten()[::1009].float().cpu().contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def save_vectors(path: str, sv: SteeringVectors) -> None:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "version": VERSION, "method": sv.method, "concept": sv.concept,
            "layers": sorted(sv.vectors), "hidden_size": sv.hidden_size,
            "norm": {str(k): float(v.norm()) for k, v in sorted(sv.vectors.items())},
            "median_residual_norm": {str(k): v for k, v in sorted(sv.median_norm.items())},
            "text_format": sv.text_format, "model_fingerprint": sv.fingerprint, **sv.extra}
    tensors = {f"layer.{k}": v.detach().float().cpu().contiguous() for k, v in sv.vectors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)


def read_metadata(path: str) -> dict[str, Any]:
    return read_vector_file(path)[0]


def load_vectors(path: str, model: torch.nn.Module | None = None, tok=None,
                 warn=lambda msg: print(msg, file=sys.stderr)) -> SteeringVectors:
    """Read ``path``; with ``model``, refuse a hidden size other than the model's and warn (through
    ``warn``) when the fingerprint differs (``tok`` needed for the fingerprint)."""
    meta, vectors = read_vector_file(path)
    known = {"format", "version", "method", "concept", "layers", "hidden_size", "norm",
             "median_residual_norm", "text_format", "model_fingerprint"}
    sv = SteeringVectors(vectors, meta["method"], meta["concept"],
                         {int(k): float(v) for k, v in meta["median_residual_norm"].items()},
                         meta["text_format"], meta["model_fingerprint"],
                         {k: v for k, v in meta.items() if k not in known})
    if model is not None:
        hidden = model.config.hidden_size
        for layer, vec in sorted(sv.vectors.items()):  # the shape, not numel: [8, 8] is not [64]
            if tuple(vec.shape) != (hidden,):
                raise ValueError(f"{path}: layer {layer}: a vector of shape {list(vec.shape)}, the "
                                 f"model's hidden size is {hidden}")
        if tok is not None and model_fingerprint(model, tok) != sv.fingerprint:
            warn(f"warning: {path} was extracted from another model (fingerprint differs); "
                 "applying it anyway")
    return sv
