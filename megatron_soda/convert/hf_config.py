"""``config.json``/``generation_config.json`` of a Qwen3ForCausalLM, both ways.

Written by hand (no transformers needed to convert) with the RoPE under both spellings
(:mod:`~megatron_soda.convert.hf_rope`).  ``pad_token_id`` is left
null on purpose: transformers builds ``nn.Embedding(..., padding_idx=pad_token_id)``, which
would freeze the EOS embedding row during HF fine-tuning (SODA pads with EOS); padding is
declared by the tokenizer only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_rope import hf_rope_fields, rope_from_hf
from megatron_soda.models.config import SodaModelConfig
from megatron_soda.tokenizer import SodaTokenizer

ARCHITECTURE = "Qwen3ForCausalLM"
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}


def hf_config(cfg: SodaModelConfig, tok: SodaTokenizer, dtype: str) -> dict[str, Any]:
    """Qwen3ForCausalLM ``config.json`` for a megatron_soda model (unpadded vocabulary)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "qwen3",
        "vocab_size": tok.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_length,
        "initializer_range": cfg.init_method_std,
        "rms_norm_eps": cfg.norm_epsilon,
        **hf_rope_fields(cfg),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.num_layers,
        "layer_types": ["full_attention"] * cfg.num_layers,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "pad_token_id": None,
        "dtype": DTYPE_NAMES[dtype],
        "torch_dtype": DTYPE_NAMES[dtype],
    }


def generation_config(tok: SodaTokenizer) -> dict[str, Any]:
    return {"bos_token_id": tok.bos, "eos_token_id": tok.eos, "pad_token_id": tok.eos}


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _sliding_layers(config: dict[str, Any]) -> bool:
    """Whether transformers would run any layer with a sliding window: only with
    ``use_sliding_window`` true and a window size, on the layers typed ``sliding_attention``
    (configs without ``layer_types``: the layers from ``max_window_layers`` on).  Levanter's export
    writes ``use_sliding_window: false`` next to ``sliding_window: 4096`` (its Qwen3Config default,
    levanter src/levanter/models/qwen.py:305-306): no window."""
    if not config.get("use_sliding_window") or config.get("sliding_window") is None:
        return False
    types = config.get("layer_types")
    if types is not None:
        return "sliding_attention" in set(types)
    layers = int(config.get("num_hidden_layers") or 0)
    return int(config.get("max_window_layers", layers) or 0) < layers


def _check_architecture(config: dict[str, Any], where: str) -> None:
    """Qwen3 by ``model_type`` (what transformers' Auto classes go by; Levanter copies
    ``architectures`` from its reference checkpoint, so a Levanter export of a Qwen3 model may
    name ``LlamaForCausalLM`` there), else by ``architectures``."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type != "qwen3" and (model_type is not None or ARCHITECTURE not in archs):
        raise ConversionError(
            f"{where}: unsupported architecture {model_type or archs!r}; only Qwen3 ({ARCHITECTURE}: "
            "RMSNorm, QK-norm, SwiGLU, RoPE, GQA, no biases) maps onto megatron_soda"
        )
    problems = []
    if config.get("attention_bias") or config.get("no_bias") is False:
        problems.append("attention biases (attention_bias or no_bias=false; megatron_soda has none)")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.get('hidden_act')!r} (SwiGLU needs silu)")
    if _sliding_layers(config):
        problems.append("sliding-window attention layers")
    if problems:
        raise ConversionError(f"{where}: unsupported Qwen3 variant: {'; '.join(problems)}")


def model_config_from_hf(
    config: dict[str, Any], where: str, vocab_size: int, seq_length: int | None = None
) -> SodaModelConfig:
    """The megatron_soda config of a Qwen3ForCausalLM ``config.json`` (shape, RoPE, norm epsilon,
    sequence length); refuses anything that does not map onto it (other architectures, biases,
    sliding windows, RoPE megatron cannot express, ...)."""
    _check_architecture(config, where)
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        rope = rope_from_hf(config, where)
        theta = rope.pop("rotary_base")
        cfg = SodaModelConfig(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_query_groups=int(config.get("num_key_value_heads") or heads),
            kv_channels=int(config.get("head_dim") or hidden // heads),
            ffn_hidden_size=int(config["intermediate_size"]),
            seq_length=int(seq_length or config.get("max_position_embeddings") or 4096),
            rotary_base=int(theta) if theta.is_integer() else theta,
            norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
            init_method_std=float(config.get("initializer_range", 0.02)),
            vocab_size=vocab_size,
            **rope,
        )
    except KeyError as e:
        raise ConversionError(f"{where}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{where}: {e}") from None
    return cfg


def hf_dir_config(hf_dir: str) -> dict[str, Any]:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir}: no such directory")
    return read_json(path)
