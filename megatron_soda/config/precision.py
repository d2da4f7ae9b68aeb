"""Precision, attention-kernel and activation-recompute section.

Anything that needs Transformer Engine or a GPU is checked here, before a model is built, so a
missing package stops the run with a message instead of silently doing nothing (megatron-core
accepts ``fp8="hybrid"`` with the local spec and ignores it)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option
from megatron_soda.config.parallel import ParallelConfig
from megatron_soda.models import te


@dataclass
class PrecisionConfig:
    bf16: bool = option(False, "bf16 params/activations, fp32 main weights")
    fp16: bool = option(False, "fp16 with dynamic loss scaling")
    fp8_format: str | None = option(None, "needs Transformer Engine", choices=("e4m3", "hybrid"))
    fp8_recipe: str = option("delayed", choices=("delayed", "tensorwise", "mxfp8", "blockwise"))
    fp8_amax_history_len: int = option(1024)
    fp8_amax_compute_algo: str = option("max", choices=("most_recent", "max"))
    fp8_param_gather: bool = option(False)
    transformer_impl: str = option("auto", "auto: Transformer Engine when importable and on GPU, "
                                   "else megatron-core local",
                                   choices=("auto", "transformer_engine", "local"))
    attention_backend: str = option("auto", "flash/fused/unfused go through Transformer Engine",
                                    choices=("auto", "flash", "fused", "unfused", "local"))
    recompute_granularity: str | None = option(None, choices=("full", "selective"))
    recompute_method: str | None = option(None, choices=("uniform", "block"))
    recompute_num_layers: int | None = option(None)
    recompute_modules: list[str] | None = option(
        None, "selective recompute targets (megatron-core names, e.g. core_attn mlp)")

    @property
    def use_te(self) -> bool:
        return self.transformer_impl == "transformer_engine"

    def validate(self, parallel: ParallelConfig) -> None:
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 are exclusive")
        have_te = te.te_available()
        on_gpu = parallel.device == "cuda"
        if self.transformer_impl == "auto":
            self.transformer_impl = "transformer_engine" if have_te and on_gpu else "local"
        if self.use_te and not have_te:
            raise ConfigError("--transformer-impl transformer_engine: Transformer Engine is not "
                              "installed (pip install 'megatron_soda[te]')")
        if self.use_te and not on_gpu:
            raise ConfigError("--transformer-impl transformer_engine needs --device cuda")
        needs_te = []
        if self.fp8_format:
            needs_te.append(f"--fp8-format {self.fp8_format}")
        if self.fp8_param_gather:
            needs_te.append("--fp8-param-gather")
        cp = parallel.context_parallel_size
        if cp > 1:
            needs_te.append(f"--context-parallel-size {cp}")
        if self.attention_backend in ("flash", "fused", "unfused"):
            needs_te.append(f"--attention-backend {self.attention_backend}")
        if needs_te and not self.use_te:
            why = "Transformer Engine is not installed (pip install 'megatron_soda[te]')" if not have_te else (
                "they need --device cuda and the Transformer Engine layer spec")
            raise ConfigError(f"{', '.join(needs_te)}: {why}. megatron-core's local spec has no "
                              "FP8, context-parallel or fused/flash attention path (flash-attn is used "
                              "through Transformer Engine).")
        if cp > 1:
            raise ConfigError(
                f"--context-parallel-size {cp}: not implemented yet. Document "
                "masking runs Transformer Engine on packed THD batches, and splitting those across "
                "context-parallel ranks (each document padded to a multiple of 2 x CP) is not built; "
                "for long sequences use --tensor-model-parallel-size with --sequence-parallel.")
        if self.fp8_format and not (self.bf16 or self.fp16):
            raise ConfigError("--fp8-format needs --bf16 (FP8 GEMMs with bf16 everywhere else)")
        if self.recompute_method and self.recompute_granularity != "full":
            raise ConfigError("--recompute-method applies to --recompute-granularity full")
        if self.recompute_granularity == "full" and not self.recompute_method:
            self.recompute_method = "uniform"
        if self.recompute_granularity == "full" and self.recompute_num_layers is None:
            self.recompute_num_layers = 1
