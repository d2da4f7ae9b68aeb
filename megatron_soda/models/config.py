"""SODA model shapes (Qwen3 blocks) as dataclasses, with the paper's presets.

Every field can be overridden from the command line with the Megatron-LM flag of the same name
(``hidden_size`` <-> ``--hidden-size``); see :mod:`megatron_soda.config.model`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# megatron-core's llama3 RoPE scaling takes only the factor as an argument; these are its fixed
# values (megatron/core/models/common/embeddings/rotary_pos_embedding.py, _apply_scaling), equal to
# Levanter's Llama3RotaryEmbeddingsConfig defaults and what an HF ``rope_type: llama3`` must carry.
ROPE_SCALING_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

INIT_METHODS = ("levanter", "megatron")  # see megatron_soda.models.init
# Architecture fields with a fixed set of values (their flags offer these choices).
FIELD_CHOICES = {"init_method": INIT_METHODS}

# The fields that fix every weight's shape (with the vocabulary): what a checkpoint must match,
# what a converter recovers from a Hugging Face config, what FLOPs are counted from.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                "ffn_hidden_size")


@dataclass(frozen=True)
class SodaModelConfig:
    """Architecture of a Qwen3-style decoder: RMSNorm, QK-norm, SwiGLU, RoPE, GQA, no biases,
    untied input/output embeddings.  ``vocab_size`` is the tokenizer's (unpadded) size."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    ffn_hidden_size: int
    seq_length: int = 4096
    # Llama-3 RoPE, as every SODA model and sweep run was trained (SODA_SPEC.md section 4): the
    # authors' configs all set rope=Llama3RotaryEmbeddingsConfig() (marin experiments/qwen3.py,
    # experiments/audio/qwen3.py), whose defaults are theta 500,000, factor 8, low/high-frequency
    # factors 1/4, original context 8192 (levanter src/levanter/layers/rotary.py:152-156 @ 9263f81).
    # megatron-core applies the llama3 frequency scaling with factor ``rope_scaling_factor`` and
    # fixed low/high factors and original context equal to those defaults (ROPE_SCALING_FIXED);
    # ``use_rope_scaling=False`` gives plain RoPE.
    rotary_base: int = 500_000
    use_rope_scaling: bool = True
    rope_scaling_factor: float = 8.0
    # Levanter's LlamaConfig defaults, which Qwen3Config inherits and SODA did not override
    # (levanter src/levanter/models/llama.py:62-63 @ 9263f81): RMSNorm (also the QK-norm) epsilon
    # 1e-5, normal init std 0.02.
    norm_epsilon: float = 1e-5
    # Initialisation (megatron_soda.models.init): "levanter", what SODA's models were initialised
    # with, or "megatron" (normal with init_method_std, scaled residual outputs).
    init_method: str = "levanter"
    init_method_std: float = 0.02
    vocab_size: int = 0
    make_vocab_size_divisible_by: int = 128

    def __post_init__(self) -> None:
        if self.init_method not in INIT_METHODS:
            raise ValueError(f"init_method must be one of {', '.join(INIT_METHODS)}, got {self.init_method!r}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_query_groups ({self.num_query_groups})"
            )
        for f in ("num_layers", "hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size", "seq_length",
                  "rotary_base", "rope_scaling_factor", "norm_epsilon"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rows of the embedding/output layer.

        Padded to a multiple of ``make_vocab_size_divisible_by`` only (not x TP as Megatron-LM
        does) so that the padded size, and with it every checkpoint shape, is the same under
        every tensor-parallel size that divides it.  Padded rows are never predicted: their
        logits are masked to -inf (see :mod:`megatron_soda.models.loss`)."""
        m = self.make_vocab_size_divisible_by
        return int(math.ceil(self.vocab_size / m) * m)

    def check_tensor_parallel(self, tp: int) -> None:
        """Every size tensor parallelism splits must be a multiple of ``tp``: one line naming
        each number ``tp`` does not divide."""
        flag = f"--tensor-model-parallel-size {tp} does not divide"
        problems = [f"{flag} {name} {value}" for name, value in (
            ("--num-attention-heads", self.num_attention_heads),
            ("--num-query-groups", self.num_query_groups),
            ("--ffn-hidden-size", self.ffn_hidden_size)) if value % tp]
        if self.padded_vocab_size % tp:
            problems.append(
                f"{flag} the padded vocabulary {self.padded_vocab_size} (the tokenizer's {self.vocab_size} "
                f"rounded up to --make-vocab-size-divisible-by {self.make_vocab_size_divisible_by})")
        if problems:
            raise ValueError("; ".join(problems))

    def shape_dict(self) -> dict[str, int]:
        """The :data:`SHAPE_FIELDS` values."""
        return {k: getattr(self, k) for k in SHAPE_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["padded_vocab_size"] = self.padded_vocab_size
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SodaModelConfig:
        """From :meth:`to_dict` output, including records written before the RoPE-scaling and
        init-method fields existed: those models ran plain RoPE and Megatron's initialisation."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if "rotary_base" in values:  # every record since the first one has it
            values.setdefault("use_rope_scaling", False)
            values.setdefault("init_method", "megatron")
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> SodaModelConfig:
        """Copy with the non-None overrides applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _preset(layers: int, hidden: int, heads: int, kv: int, head_dim: int, ffn: int) -> SodaModelConfig:
    return SodaModelConfig(*(layers, hidden, heads, kv, head_dim, ffn))  # the SHAPE_FIELDS, in order


# SODA_SPEC.md section 4.  "tiny" is for tests and laptops: GQA and a head_dim that differs from
# hidden/heads, so the shapes that matter at scale are exercised at toy size.
PRESETS: dict[str, SodaModelConfig] = {
    "tiny": replace(_preset(4, 64, 4, 2, 32, 192), seq_length=256),
    "135m": _preset(15, 512, 8, 8, 64, 1792),
    "600m": _preset(28, 1024, 16, 8, 128, 3072),
    "1.7b": _preset(28, 2048, 16, 8, 128, 6144),
    "4b": _preset(36, 2560, 32, 8, 128, 9728),
}


def preset(name: str) -> SodaModelConfig:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown --model-size {name!r}; choose one of {', '.join(PRESETS)}") from None


# The width the authors put into the LR rule where it is not the model's: their 135M run used 1024
# ("it is actually 512, but I don't want LR to be too high": marin
# experiments/audio/exp1699_marin_audio_all.py:186, train_135m_model @ 8129c26), giving 4.24e-3 at batch 512.
LR_RULE_WIDTH = {"135m": 1024}


def lr_rule_width(model_size: str, hidden_size: int) -> int:
    """The width SODA's LR rule uses for this model: the preset's override while the preset's
    own width is kept, else ``hidden_size``."""
    name = model_size.lower()
    if name in LR_RULE_WIDTH and PRESETS[name].hidden_size == hidden_size:
        return LR_RULE_WIDTH[name]
    return hidden_size


def paper_learning_rate(global_batch_size: int, hidden_size: int) -> float:
    """SODA's peak LR: 0.003 x sqrt(batch / 256) x sqrt(1024 / width) (marin
    experiments/audio/exp1699_marin_audio_all.py:32-36 and :72 @ 8129c26).  ``hidden_size`` is the
    rule's width: see :func:`lr_rule_width`."""
    return 0.003 * math.sqrt(global_batch_size / 256) * math.sqrt(1024 / hidden_size)
