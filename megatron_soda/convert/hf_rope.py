"""Rotary position embeddings in a Hugging Face ``config.json``, both ways.

megatron_soda (megatron-core) has two RoPE variants: plain RoPE with base ``rotary_base``, and
Llama-3 frequency scaling (``use_rope_scaling``) with a free ``rope_scaling_factor`` and the
fixed low/high-frequency factors 1/4 and original context 8192
(:data:`~megatron_soda.models.config.ROPE_SCALING_FIXED`).  Every SODA model was trained with the
latter at factor 8 and base 500,000 (Levanter's ``Llama3RotaryEmbeddingsConfig`` defaults).

Written under both spellings transformers reads: ``rope_theta`` + ``rope_scaling`` (4.x; Levanter
exports these) and ``rope_parameters`` (5.x).  transformers 5 gives ``rope_scaling`` priority over
``rope_parameters`` when a config has both, so both always carry the same values.  Read back: a
RoPE that megatron cannot express (other types, other llama3 constants, partial rotary) is
refused with the reason.
"""

from __future__ import annotations

import math
from typing import Any

from megatron_soda.convert.errors import ConversionError
from megatron_soda.models.config import ROPE_SCALING_FIXED, SodaModelConfig

LLAMA3 = "llama3"
_LAYER_TYPES = ("full_attention", "sliding_attention")


def hf_rope_fields(cfg: SodaModelConfig) -> dict[str, Any]:
    """``rope_theta``, ``rope_scaling`` and ``rope_parameters`` entries for ``config.json``."""
    theta = float(cfg.rotary_base)
    if not cfg.use_rope_scaling:
        return {
            "rope_theta": theta,
            "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        }
    scaling = {
        "rope_type": LLAMA3,
        "factor": float(cfg.rope_scaling_factor),
        "low_freq_factor": float(ROPE_SCALING_FIXED["low_freq_factor"]),
        "high_freq_factor": float(ROPE_SCALING_FIXED["high_freq_factor"]),
        "original_max_position_embeddings": int(ROPE_SCALING_FIXED["original_max_position_embeddings"]),
    }
    return {
        "rope_theta": theta,
        "rope_scaling": scaling,
        "rope_parameters": {**scaling, "rope_theta": theta},
    }


def _flat(params: Any, where: str, key: str) -> dict[str, Any]:
    """A RoPE dict; one nested per layer type (transformers 5) must have a single entry in use."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConversionError(f"{where}: {key} must be a JSON object, got {params!r}")
    nested = [k for k in params if k in _LAYER_TYPES]
    if not nested:
        return params
    values = [params[k] for k in nested if params[k] is not None]
    if any(v != values[0] for v in values[1:]):
        raise ConversionError(
            f"{where}: {key} differs between layer types; megatron_soda uses one RoPE for all layers"
        )
    return dict(values[0]) if values else {}


def _kind(params: dict[str, Any]) -> str | None:
    return params.get("rope_type") or params.get("type")


def _number(params: dict[str, Any], key: str, where: str) -> float:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConversionError(f"{where}: llama3 RoPE needs a number for {key!r}, got {value!r}")
    return float(value)


def rope_from_hf(config: dict[str, Any], where: str) -> dict[str, Any]:
    """``rotary_base``, ``use_rope_scaling`` and ``rope_scaling_factor`` of a ``config.json``
    (``rotary_base`` is the float read; :func:`trainer_flags` refuses a non-integer one)."""
    params = _flat(config.get("rope_parameters"), where, "rope_parameters")
    scaling = _flat(config.get("rope_scaling"), where, "rope_scaling")
    if params and scaling:
        a, b = _kind(params) or "default", _kind(scaling) or "default"
        shared = {k for k in params.keys() & scaling.keys() if k not in ("rope_type", "type")}
        if a != b or any(params[k] != scaling[k] for k in shared):
            raise ConversionError(
                f"{where}: rope_parameters ({params}) and rope_scaling ({scaling}) disagree"
            )
    merged = {**params, **scaling}  # (equal where both are set)
    kind = _kind(merged) or "default"
    theta = merged.get("rope_theta", config.get("rope_theta"))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise ConversionError(f"{where}: no usable rope_theta (got {theta!r})")
    partial = merged.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ConversionError(
            f"{where}: partial_rotary_factor {partial} is not supported (megatron_soda rotates "
            "the whole head dimension)"
        )
    expressible = (
        "megatron-core has plain RoPE and llama3 scaling with "
        + ", ".join(f"{k} {v}" for k, v in ROPE_SCALING_FIXED.items())
    )
    if kind == "default" or (kind == "linear" and merged.get("factor", 1.0) == 1.0):
        return {"rotary_base": float(theta), "use_rope_scaling": False}
    if kind != LLAMA3:
        raise ConversionError(
            f"{where}: RoPE scaling {kind!r} cannot be expressed by megatron_soda ({expressible})"
        )
    factor = _number(merged, "factor", where)
    found = {
        "low_freq_factor": _number(merged, "low_freq_factor", where),
        "high_freq_factor": _number(merged, "high_freq_factor", where),
        # transformers' default when the key is missing: the model's max_position_embeddings
        "original_max_position_embeddings": _number(
            {
                "original_max_position_embeddings": merged.get(
                    "original_max_position_embeddings", config.get("max_position_embeddings")
                )
            },
            "original_max_position_embeddings",
            where,
        ),
    }
    wrong = {k: v for k, v in found.items() if v != ROPE_SCALING_FIXED[k]}
    if wrong:
        raise ConversionError(
            f"{where}: llama3 RoPE with {wrong} cannot be expressed by megatron_soda ({expressible}; "
            "only the factor is free)"
        )
    if not factor > 0:
        raise ConversionError(f"{where}: llama3 RoPE factor must be positive, got {factor}")
    return {"rotary_base": float(theta), "use_rope_scaling": True, "rope_scaling_factor": factor}


def describe(cfg: SodaModelConfig) -> str:
    """One-line description of ``cfg``'s RoPE (for logs)."""
    if not cfg.use_rope_scaling:
        return f"plain RoPE, base {cfg.rotary_base:g}"
    return f"Llama-3 RoPE, base {cfg.rotary_base:g}, factor {cfg.rope_scaling_factor:g}"
