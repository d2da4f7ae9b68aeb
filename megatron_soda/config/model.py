"""The model section: an architecture preset, any of its fields overridden with Megatron-LM's
flag names (``hidden_size`` <-> ``--hidden-size``), the tokenizer and the loss weight."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option, required
from megatron_soda.format import MAX_CODEBOOKS
from megatron_soda.models.compile import TORCH_COMPILE_BACKENDS, parse_compile_targets
from megatron_soda.models.config import PRESETS, SodaModelConfig, preset

# Architecture fields that come from the tokenizer, never from the command line.
NOT_FLAGS = frozenset({"vocab_size"})


def architecture_fields() -> list[tuple[str, type]]:
    """(name, type) of every overridable :class:`SodaModelConfig` field."""
    example = PRESETS["tiny"]
    return [(f.name, type(getattr(example, f.name))) for f in fields(SodaModelConfig)
            if f.name not in NOT_FLAGS]


@dataclass
class ModelConfig:
    model_size: str = required("architecture preset (SODA_SPEC.md section 4); override any field below",
                               choices=tuple(sorted(PRESETS)))
    tokenizer: str = required(
        "base tokenizer.json, or a directory saved by SodaTokenizer.save (e.g. a checkpoint's "
        "tokenizer/); must match the one used for preprocessing")
    num_codebooks: int | None = option(
        None, "audio codebooks per frame; default: the tokenizer directory's, else the data's "
        "(PREFIX.stats.json), else the format's default; checked against both")
    # Preset fields given on the command line (--num-layers, --hidden-size, ...; see
    # architecture_fields): only those set, so that a run's record says what was overridden.
    architecture: dict[str, Any] = option(None, "architecture fields overriding the preset's")
    max_position_embeddings: int | None = option(
        None, "accepted for Megatron-LM compatibility; RoPE has no position table, so it only has "
        "to be >= --seq-length")
    z_loss_weight: float = option(1e-4, "loss = CE + w * mean(logsumexp^2)")
    head_chunk_tokens: int = option(
        0, "compute the output layer + cross-entropy + lse N tokens at a time without "
        "materialising the [tokens x vocab/tp] logits (models/chunked_head.py); 0: off (megatron's "
        "output layer); see docs/gpu.md")
    torch_compile: str = option(
        "", "torch.compile parts of the model, comma-separated: mlp, norm, head (the chunked "
        "head's per-chunk math; needs --head-chunk-tokens), or all (models/compile.py, docs/gpu.md)")
    torch_compile_backend: str = option(
        "inductor", "torch.compile backend of --torch-compile (aot_eager: trace without code "
        "generation, for debugging)", choices=TORCH_COMPILE_BACKENDS)

    def validate(self) -> None:
        if self.architecture is None:
            self.architecture = {}
        unknown = set(self.architecture) - {n for n, _ in architecture_fields()}
        if unknown:
            raise ConfigError(f"unknown architecture field(s): {', '.join(sorted(unknown))}")
        self.architecture = {k: v for k, v in self.architecture.items() if v is not None}
        if self.num_codebooks is not None and not 1 <= self.num_codebooks <= MAX_CODEBOOKS:
            raise ConfigError(f"--num-codebooks must be in 1..{MAX_CODEBOOKS}")
        if self.z_loss_weight < 0:
            raise ConfigError("--z-loss-weight must be >= 0")
        if self.head_chunk_tokens < 0:
            raise ConfigError("--head-chunk-tokens must be >= 0 (0: off)")
        try:
            targets = parse_compile_targets(self.torch_compile)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if "head" in targets and not self.head_chunk_tokens:
            raise ConfigError("--torch-compile head compiles the chunked head: it needs "
                              "--head-chunk-tokens N (N > 0)")
        arch = self.architecture_for(vocab_size=0)
        if self.max_position_embeddings is not None and self.max_position_embeddings < arch.seq_length:
            raise ConfigError(f"--max-position-embeddings {self.max_position_embeddings} < "
                              f"--seq-length {arch.seq_length}")

    def architecture_for(self, vocab_size: int) -> SodaModelConfig:
        """The preset with every override applied, sized for the tokenizer's vocabulary."""
        try:
            return preset(self.model_size).with_overrides(**(self.architecture or {}), vocab_size=vocab_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
