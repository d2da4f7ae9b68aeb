"""Generation: prompts as the authors build them, batched KV-cache decoding under the SODA
grammar with stop rules, and codes back to 24 kHz audio (``python -m megatron_soda.generate``)."""

from megatron_soda.generate.engine import Generation, generate
from megatron_soda.generate.prompts import asr_prompt, continue_prompt, s2st_prompt, tts_prompt
from megatron_soda.generate.settings import MODES, STOP_REASONS, SamplingSettings, mode_defaults
from megatron_soda.generate.silence import SilenceCodes, silence_codes

__all__ = [
    "MODES",
    "STOP_REASONS",
    "Generation",
    "SamplingSettings",
    "SilenceCodes",
    "asr_prompt",
    "continue_prompt",
    "generate",
    "mode_defaults",
    "s2st_prompt",
    "silence_codes",
    "tts_prompt",
]
