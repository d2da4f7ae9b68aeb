"""Sampling and stopping settings of one generation run, with the authors' per-mode defaults.

Defaults follow the first author's harness (potsawee/blueberry-eval, ../shared/SODA_SPEC.md
section 6): ASR ``asr_librispeech/inference_0shot.py`` samples with temperature 0.5, top-p
0.8 and at most 200 new tokens, stopping at ``<|text_end|>`` (lines 147-155); TTS
``tts_seedttseval/inference_0shot.py`` uses temperature 0.9, top-p 0.8, at most 1,500 new
tokens (its usage lines 5-8), stopping at ``<|audio_end|>`` (line 144).  Neither passes
``top_k``, so transformers' ``generate`` applied its default ``top_k=50``
(``GenerationConfig._get_default_generation_params``): the authors sampled with top-k 50 too, and
so do our mode defaults.  ``temperature=0`` means greedy decoding.  The stop rules the harness lacks (silence, repetition) are ours
(:mod:`megatron_soda.generate.stops`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

MODES = ("tts", "asr", "continue", "s2st")
STOP_REASONS = ("end_marker", "max_tokens", "repetition", "silence")
# the closing marker each mode waits for (s2st: the <|audio_end|> of the target speech)
MODE_STOP_AT = {"asr": "text_end", "tts": "audio_end", "continue": "audio_end", "s2st": "audio_end"}


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn and when a row stops.

    ``top_k=0`` and ``top_p=1`` switch those filters off.  Repetition: a row stops when its
    last ``repetition_count * p`` generated frames of the current audio span are
    ``repetition_count`` copies of one ``p``-frame block, for some period ``p`` in
    ``1..repetition_ngram`` (defaults: periods up to 10 frames = 0.8 s, 5 copies; a block of
    silence frames is left to the silence rule); 0 switches it off.  Silence: a row stops after
    ``silence_frames`` consecutive generated frames (default 25 = 2 s) whose first
    ``silence_codebooks`` codes (default 1: the semantic codebook) are the codes Mimi gives
    digital silence (:mod:`megatron_soda.generate.silence`); 0 switches it off.  The frames
    that triggered either rule are cut from the output audio (one copy of a repeated block is
    kept); the token ids keep everything generated.
    """

    temperature: float = 0.5
    top_p: float = 0.8
    top_k: int = 0
    max_new_tokens: int = 200
    seed: int = 0
    repetition_ngram: int = 10
    repetition_count: int = 5
    silence_frames: int = 25
    silence_codebooks: int = 1

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError("top_k must be >= 0 and max_new_tokens >= 1")
        if self.repetition_ngram < 0 or self.silence_frames < 0:
            raise ValueError("repetition_ngram and silence_frames must be >= 0")
        if self.repetition_ngram and self.repetition_count < 2:
            raise ValueError("repetition_count must be >= 2 (copies of the repeated block)")
        if self.silence_codebooks < 1:
            raise ValueError("silence_codebooks must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kw) -> SamplingSettings:
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def mode_defaults(mode: str) -> SamplingSettings:
    """The authors' settings for ``mode`` (continue/s2st take TTS's: they generate speech)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {MODES}")
    if mode == "asr":
        return SamplingSettings(temperature=0.5, top_p=0.8, top_k=50, max_new_tokens=200)
    return SamplingSettings(temperature=0.9, top_p=0.8, top_k=50, max_new_tokens=1500)
