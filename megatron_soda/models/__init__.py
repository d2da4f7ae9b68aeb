"""SODA models: Qwen3-style decoders on megatron-core's GPTModel."""

from megatron_soda.models.config import (
    PRESETS,
    SHAPE_FIELDS,
    SodaModelConfig,
    paper_learning_rate,
    preset,
)

__all__ = ["PRESETS", "SHAPE_FIELDS", "SodaModelConfig", "paper_learning_rate", "preset"]
