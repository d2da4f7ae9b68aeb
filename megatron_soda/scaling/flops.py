"""FLOP and parameter accounting for SODA-style (Qwen3 block) decoder models.

The forward count is Levanter's analytic one (``lm_flops_per_token``), which SODA used for its
IsoFLOP budgets:

    F = L * (2*m*d*ffn + 2*d*(h*hd + 2*kv*hd) + 2*(h*hd)*d + 4*s*h*hd + 3*s*h) + 2*d*V

with m = 3 for SwiGLU (2 otherwise).  The attention terms count the full s x s map
(2*s^2*h*hd for the logits, 3*s^2*h for the mask/softmax, 2*s^2*h*hd for the weighted values,
divided by s).  Training FLOPs = 3 x forward.

Two conventions for the head dimension hd, both reported (``convention=``):

* ``"paper"``: Levanter's own, hd = d / h whatever the model's real head dimension
  (stanford-crfm/levanter ``src/levanter/utils/flop_utils.py`` at 9263f81e, ``lm_flops_per_token``
  lines 10-38: ``head_dim = hidden_dim / num_heads`` line 23, ``dense_proj = 2 * hidden_dim *
  hidden_dim`` line 28; it has no head-dim argument).  SODA's budgets, and so the paper's compute
  axis, are in this count: use it to place runs on that axis.
* ``"true"`` (the default): the actual ``kv_channels``, i.e. the FLOPs the model really does.
  Use it for TFLOP/s and MFU.  The two differ where hd != d/h: 1.44x at SODA's 600M (d 1024,
  16 heads of 128) and 1.18x at 4B (d 2560, 32 heads of 128); they agree for the IsoFLOP sweep's
  shapes (heads = d/128, hd 128).

``ModelShape``, ``forward_flops_per_token``, ``training_flops_per_token``, ``param_counts``,
``kaplan_flops_per_token``, ``model_shape`` and ``run_flop_counts`` are a contract with the
trainer.

Norms, RoPE, the softmax of the loss and the input-embedding lookup are not counted (as in
Levanter).  ``attention="causal"`` halves the s-dependent terms (what a causal kernel really
does); ``"none"`` drops them (the 2 x matmul-parameters count).  The default stays "full" because
that is the count SODA's budgets were defined with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_MODES = ("full", "causal", "none")
CONVENTIONS = ("true", "paper")  # head dim: the model's kv_channels, or Levanter's d / h
# Training FLOPs = this x forward FLOPs (forward + backward).  SODA's sweep code states its
# budgets in forward-only FLOPs (marin-community/marin experiments/audio/isoflop_audio_sweep.py,
# compute_total_flops, lines 166-189: lm_flops_per_token x batch x steps x seq, no factor 3);
# the paper's budgets are this factor times those.
TRAIN_OVER_FORWARD = 3.0


@dataclass(frozen=True)
class ModelShape:
    """The shape numbers that determine FLOPs and parameters (Megatron-LM naming)."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    ffn_hidden_size: int
    vocab_size: int
    seq_length: int
    swiglu: bool = True
    qk_norm: bool = True
    tied_embeddings: bool = False


def model_shape(arch: Any) -> ModelShape:
    """The shape of a model architecture (a :class:`megatron_soda.models.config.SodaModelConfig`:
    anything with ``shape_dict()``, ``padded_vocab_size`` and ``seq_length``) for FLOP and parameter accounting: the *padded* vocabulary,
    since the padded rows are computed."""
    return ModelShape(**arch.shape_dict(), vocab_size=arch.padded_vocab_size, seq_length=arch.seq_length)


def flops_breakdown(
    shape: ModelShape, *, attention: str = "full", convention: str = "true"
) -> dict[str, float]:
    """Forward FLOPs per token split into the terms of the formula (whole model, all layers).
    ``convention="paper"`` uses hd = d / h (Levanter's), ``"true"`` the shape's kv_channels."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    d, s, n = shape.hidden_size, shape.seq_length, shape.num_layers
    h, kv = shape.num_attention_heads, shape.num_query_groups
    hd = shape.kv_channels if convention == "true" else d / h  # Levanter: a float, may be fractional
    m = 3 if shape.swiglu else 2
    seq_scale = {"full": 1.0, "causal": 0.5, "none": 0.0}[attention]
    return {
        "mlp": float(n * 2 * m * d * shape.ffn_hidden_size),
        "qkv_proj": float(n * 2 * d * (h * hd + 2 * kv * hd)),
        "out_proj": float(n * 2 * (h * hd) * d),
        "attn_logits_values": seq_scale * n * 4 * s * h * hd,
        "attn_mask_softmax": seq_scale * n * 3 * s * h,
        "output_head": float(2 * d * shape.vocab_size),
    }


def forward_flops_per_token(
    shape: ModelShape, *, attention: str = "full", convention: str = "true"
) -> float:
    """Levanter/SODA analytic forward FLOPs per token (see the module docstring)."""
    return float(sum(flops_breakdown(shape, attention=attention, convention=convention).values()))


def training_flops_per_token(
    shape: ModelShape, *, attention: str = "full", convention: str = "true"
) -> float:
    """Forward + backward = 3 x forward (the convention of SODA's budgets).  The default
    ``convention="true"`` is what the model computes (TFLOP/s, MFU); ``"paper"`` is the count
    of SODA's compute axis."""
    return TRAIN_OVER_FORWARD * forward_flops_per_token(
        shape, attention=attention, convention=convention
    )


def paper_training_flops_per_token(shape: ModelShape) -> float:
    """Training FLOPs per token on the paper's compute axis (Levanter's count, hd = d / h)."""
    return training_flops_per_token(shape, convention="paper")


def run_flop_counts(arch: Any) -> dict[str, float]:
    """The trainer's two training-FLOPs-per-token numbers for an architecture (see
    :func:`model_shape`): ``train_flops_per_token``, the true count of the padded model (its
    TFLOP/s and MFU), and ``paper_train_flops_per_token``, Levanter's count with the tokenizer's
    unpadded vocabulary as SODA's sweep counted it (``isoflop_audio_sweep.py`` L195-197), to place
    the run on the paper's compute axis (equal to a plan's ``train_flops_per_token``)."""
    shape = model_shape(arch)
    unpadded = dataclasses.replace(shape, vocab_size=int(getattr(arch, "vocab_size", 0) or shape.vocab_size))
    return {
        "train_flops_per_token": training_flops_per_token(shape),
        "paper_train_flops_per_token": paper_training_flops_per_token(unpadded),
    }


def param_counts(shape: ModelShape) -> dict[str, int]:
    """Parameter counts.  ``soda`` is SODA's size name convention: everything except the input
    embedding (the output head is counted)."""
    d, h, kv, hd = (
        shape.hidden_size,
        shape.num_attention_heads,
        shape.num_query_groups,
        shape.kv_channels,
    )
    attn = d * (h * hd + 2 * kv * hd) + h * hd * d
    mlp = (3 if shape.swiglu else 2) * d * shape.ffn_hidden_size
    norms = 2 * d + (2 * hd if shape.qk_norm else 0)
    layers = shape.num_layers * (attn + mlp + norms)
    embedding = shape.vocab_size * d
    head = 0 if shape.tied_embeddings else shape.vocab_size * d
    total = layers + d + embedding + head  # + final norm
    return {
        "total": total,
        "embedding": embedding,
        "output_head": head,
        "non_embedding": total - embedding - head,
        "soda": total - embedding,
    }


def kaplan_flops_per_token(shape: ModelShape, include_embeddings: bool) -> float:
    """Kaplan et al.'s 6N training FLOPs per token (N with or without the embeddings)."""
    p = param_counts(shape)
    n = p["total"] if include_embeddings else p["non_embedding"]
    return 6.0 * n


def compare_flop_conventions(shape: ModelShape) -> dict[str, float]:
    """Training FLOPs/token under Levanter's 3F (paper convention) and Kaplan's 6N, the 6N/3F
    ratios, and the true 3F (actual head dim) with its ratio to the paper's.

    For SODA's small, embedding-heavy models (V = 144,644) 6N with embeddings overestimates the
    Levanter count by about 25%; without embeddings it underestimates it.
    """
    levanter = training_flops_per_token(shape, convention="paper")
    with_emb = kaplan_flops_per_token(shape, include_embeddings=True)
    without_emb = kaplan_flops_per_token(shape, include_embeddings=False)
    return {
        "levanter_3f": levanter,
        "kaplan_6n_total": with_emb,
        "kaplan_6n_non_embedding": without_emb,
        "ratio_6n_total": with_emb / levanter,
        "ratio_6n_non_embedding": without_emb / levanter,
        "true_3f": training_flops_per_token(shape),
        "ratio_true_over_paper": training_flops_per_token(shape) / levanter,
    }
