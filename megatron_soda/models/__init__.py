"""SODA models: Qwen3-style decoders on megatron-core's GPTModel."""

from megatron_soda.models.config import PRESETS, SodaModelConfig, paper_learning_rate, preset

__all__ = ["PRESETS", "SodaModelConfig", "paper_learning_rate", "preset"]
