"""Parameter names and fused layouts: megatron_soda (megatron-core GPTModel) <-> HF Qwen3.

Megatron keys are the ``dist_checkpointing`` keys of the trainer's checkpoints.  Per-layer
tensors are stored stacked: ``decoder.layers.X`` has a leading axis of ``num_layers`` (the
global layer index, whatever the pipeline layout was).  The local layer spec stores its norms
under Transformer Engine's fused names (``linear_qkv.layer_norm_weight``); the unfused names
are accepted as aliases when reading.

Fused layouts:

* ``linear_qkv.weight`` ``[(heads + 2 * groups) * head_dim, hidden]``: for each KV group g, the
  group's ``heads // groups`` query heads, then its key head, then its value head.  HF keeps
  ``q_proj`` (head h at rows ``h*head_dim``), ``k_proj`` and ``v_proj`` separate; query head h
  belongs to group ``h // (heads // groups)`` in both.
* ``linear_fc1.weight`` ``[2 * ffn, hidden]`` = ``[gate; up]`` (SwiGLU: ``silu(gate) * up``).
* Embedding and output head have ``padded_vocab_size`` rows in megatron (a multiple of 128;
  the padded rows are never used) and exactly the tokenizer's ``vocab_size`` rows in HF.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_soda.models.config import SodaModelConfig

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"

HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_OUTPUT = "lm_head.weight"


@dataclass(frozen=True)
class LayerParam:
    """One per-layer megatron tensor and the HF tensor(s) it becomes (``{i}`` = layer)."""

    key: str  # under "decoder.layers."
    hf: tuple[str, ...]
    kind: str = "copy"  # copy | qkv | fc1
    aliases: tuple[str, ...] = ()

    @property
    def megatron_keys(self) -> tuple[str, ...]:
        """Checkpoint keys this tensor may be stored under (its own name first, then aliases)."""
        return tuple(layer_key(self, n) for n in (self.key, *self.aliases))


LAYER_PARAMS: tuple[LayerParam, ...] = (
    LayerParam(
        "self_attention.linear_qkv.layer_norm_weight",
        ("model.layers.{i}.input_layernorm.weight",),
        aliases=("input_layernorm.weight",),
    ),
    LayerParam(
        "self_attention.linear_qkv.weight",
        (
            "model.layers.{i}.self_attn.q_proj.weight",
            "model.layers.{i}.self_attn.k_proj.weight",
            "model.layers.{i}.self_attn.v_proj.weight",
        ),
        "qkv",
    ),
    LayerParam("self_attention.q_layernorm.weight", ("model.layers.{i}.self_attn.q_norm.weight",)),
    LayerParam("self_attention.k_layernorm.weight", ("model.layers.{i}.self_attn.k_norm.weight",)),
    LayerParam("self_attention.linear_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
    LayerParam(
        "mlp.linear_fc1.layer_norm_weight",
        ("model.layers.{i}.post_attention_layernorm.weight",),
        aliases=("pre_mlp_layernorm.weight",),
    ),
    LayerParam(
        "mlp.linear_fc1.weight",
        ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
        "fc1",
    ),
    LayerParam("mlp.linear_fc2.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
)

# Megatron key -> (HF name, vocab-sized?) for the tensors outside the layer stack.
GLOBAL_PARAMS: dict[str, tuple[str, bool]] = {
    EMBEDDING: (HF_EMBEDDING, True),
    FINAL_NORM: (HF_FINAL_NORM, False),
    OUTPUT: (HF_OUTPUT, True),
}


def layer_key(param: LayerParam, name: str | None = None) -> str:
    return "decoder.layers." + (name or param.key)


def hf_layer_shapes(param: LayerParam, cfg: SodaModelConfig) -> list[tuple[int, ...]]:
    """Shapes of the HF tensors of ``param`` for one layer."""
    h, d = cfg.hidden_size, cfg.kv_channels
    if param.kind == "qkv":
        return [
            (cfg.num_attention_heads * d, h),
            (cfg.num_query_groups * d, h),
            (cfg.num_query_groups * d, h),
        ]
    if param.kind == "fc1":
        return [(cfg.ffn_hidden_size, h)] * 2
    return [megatron_layer_shape(param, cfg)]


def hf_specs(cfg: SodaModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every HF tensor, in the order the converter writes them."""
    vocab = (cfg.vocab_size, cfg.hidden_size)
    specs = [(HF_EMBEDDING, vocab)]
    for i in range(cfg.num_layers):
        for p in LAYER_PARAMS:
            specs += [(n.format(i=i), s) for n, s in zip(p.hf, hf_layer_shapes(p, cfg))]
    return specs + [(HF_FINAL_NORM, (cfg.hidden_size,)), (HF_OUTPUT, vocab)]


def megatron_layer_shape(param: LayerParam, cfg: SodaModelConfig) -> tuple[int, ...]:
    """Shape of ``param`` for one layer (without the stacked layer axis)."""
    h, d = cfg.hidden_size, cfg.kv_channels
    key = param.key
    if key.endswith("layer_norm_weight"):
        return (h,)
    if key.endswith(("q_layernorm.weight", "k_layernorm.weight")):
        return (d,)
    if param.kind == "qkv":
        return ((cfg.num_attention_heads + 2 * cfg.num_query_groups) * d, h)
    if key.endswith("linear_proj.weight"):
        return (h, cfg.num_attention_heads * d)
    if param.kind == "fc1":
        return (2 * cfg.ffn_hidden_size, h)
    if key.endswith("linear_fc2.weight"):
        return (h, cfg.ffn_hidden_size)
    raise KeyError(key)


def megatron_global_shape(key: str, cfg: SodaModelConfig) -> tuple[int, ...]:
    return (cfg.hidden_size,) if key == FINAL_NORM else (cfg.padded_vocab_size, cfg.hidden_size)


def split_qkv(
    w: torch.Tensor, cfg: SodaModelConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron ``linear_qkv`` (grouped per KV group) -> HF ``q_proj``, ``k_proj``, ``v_proj``."""
    g, d, h = cfg.num_query_groups, cfg.kv_channels, w.shape[-1]
    per = cfg.num_attention_heads // g
    grouped = w.reshape(g, (per + 2) * d, h)
    q = grouped[:, : per * d].reshape(g * per * d, h)
    k = grouped[:, per * d : (per + 1) * d].reshape(g * d, h)
    v = grouped[:, (per + 1) * d :].reshape(g * d, h)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: SodaModelConfig
) -> torch.Tensor:
    """Inverse of :func:`split_qkv`."""
    g, d, h = cfg.num_query_groups, cfg.kv_channels, q.shape[-1]
    per = cfg.num_attention_heads // g
    parts = (q.reshape(g, per * d, h), k.reshape(g, d, h), v.reshape(g, d, h))
    return torch.cat(parts, dim=1).reshape(-1, h)


def split_fc1(w: torch.Tensor, cfg: SodaModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``[gate; up]`` -> ``gate_proj``, ``up_proj``."""
    f = cfg.ffn_hidden_size
    return w[:f].contiguous(), w[f:].contiguous()


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat((gate, up), dim=0)


def unfuse(param: LayerParam, w: torch.Tensor, cfg: SodaModelConfig) -> tuple[torch.Tensor, ...]:
    """One layer's megatron tensor -> its HF tensors (in ``param.hf`` order)."""
    if param.kind == "qkv":
        return split_qkv(w, cfg)
    if param.kind == "fc1":
        return split_fc1(w, cfg)
    return (w,)


def fuse(param: LayerParam, parts: list[torch.Tensor], cfg: SodaModelConfig) -> torch.Tensor:
    """One layer's HF tensors (in ``param.hf`` order) -> the megatron tensor."""
    if param.kind == "qkv":
        return merge_qkv(*parts, cfg)
    if param.kind == "fc1":
        return merge_fc1(*parts)
    return parts[0]
