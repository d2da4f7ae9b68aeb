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

TE_BACKENDS = ("te", "flash", "fused", "unfused")
LOCAL_SPEC_BACKENDS = ("local", "sdpa", "flex")


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
    attention_backend: str = option(
        "auto", "core attention: te (Transformer Engine; flash/fused/unfused pin its kernel), local "
        "(megatron-core's, dense [b,1,s,s] masks), sdpa (torch SDPA, causal only) or flex (torch "
        "FlexAttention, causal + document masking); auto: te with Transformer Engine, else on GPU "
        "flex with --reset-attention-mask, sdpa without, on CPU local (docs/gpu.md)",
        choices=("auto", "local", "te", "sdpa", "flex", "flash", "fused", "unfused"))
    recompute_granularity: str | None = option(None, choices=("full", "selective"))
    recompute_method: str | None = option(None, choices=("uniform", "block"))
    recompute_num_layers: int | None = option(None)
    recompute_modules: list[str] | None = option(
        None, "selective recompute targets (megatron-core names, e.g. core_attn mlp)")

    @property
    def use_te(self) -> bool:
        return self.transformer_impl == "transformer_engine"

    def validate(self, parallel: ParallelConfig, reset_attention_mask: bool = True) -> None:
        """``reset_attention_mask``: the data section's (whether batches mask documents apart)."""
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 are exclusive")
        have_te = te.te_available()
        on_gpu = parallel.device == "cuda"
        cp = parallel.context_parallel_size
        if self.transformer_impl == "auto":
            # context parallelism runs on flex attention, the local spec's (docs/context_parallel.md)
            torch_kernel = self.attention_backend in LOCAL_SPEC_BACKENDS or (
                cp > 1 and self.attention_backend == "auto")
            self.transformer_impl = "transformer_engine" if have_te and on_gpu and not torch_kernel else "local"
        self._resolve_attention(on_gpu, reset_attention_mask, cp)
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
        if self.attention_backend in TE_BACKENDS:
            needs_te.append(f"--attention-backend {self.attention_backend}")
        if needs_te and not self.use_te:
            why = "Transformer Engine is not installed (pip install 'megatron_soda[te]')" if not have_te else (
                "they need --device cuda and the Transformer Engine layer spec")
            raise ConfigError(f"{', '.join(needs_te)}: {why}. megatron-core's local spec has no "
                              "FP8 or fused/flash attention path (flash-attn is used "
                              "through Transformer Engine).")
        if cp > 1:
            self._check_context_parallel(cp)
        if self.fp8_format and not (self.bf16 or self.fp16):
            raise ConfigError("--fp8-format needs --bf16 (FP8 GEMMs with bf16 everywhere else)")
        if self.recompute_method and self.recompute_granularity != "full":
            raise ConfigError("--recompute-method applies to --recompute-granularity full")
        if self.recompute_granularity == "full" and not self.recompute_method:
            self.recompute_method = "uniform"
        if self.recompute_granularity == "full" and self.recompute_num_layers is None:
            self.recompute_num_layers = 1

    def _check_context_parallel(self, cp: int) -> None:
        """Context parallelism is built for FlexAttention on the local spec only
        (models/context_parallel.py, docs/context_parallel.md)."""
        if self.use_te:
            raise ConfigError(
                f"--context-parallel-size {cp}: not implemented yet with Transformer Engine (its THD "
                "context parallelism needs every document padded to a multiple of 2 x CP, which is not "
                "built); use --transformer-impl local --attention-backend flex (K/V all-gathered, "
                "FlexAttention document masks; docs/context_parallel.md)")
        if self.attention_backend != "flex":
            why = {"sdpa": "SDPA has no mask over the gathered keys' global positions",
                   "local": "megatron-core's local DotProductAttention has no context-parallel path, and "
                            "Transformer Engine's is not used on the local spec"}.get(self.attention_backend, "")
            raise ConfigError(f"--context-parallel-size {cp} needs --attention-backend flex, not "
                              f"{self.attention_backend}: {why} (docs/context_parallel.md)")

    def _resolve_attention(self, on_gpu: bool, reset_attention_mask: bool, cp: int = 1) -> None:
        """``auto`` -> a concrete backend (recorded in run_args.json); refuse the impossible ones."""
        from megatron_soda.models.attention import flex_available

        backend = self.attention_backend
        if backend == "auto":
            if self.use_te:
                backend = "te"
            elif cp > 1 and flex_available():
                backend = "flex"  # the one backend with context parallelism (CPU: its eager reference)
            elif not on_gpu:
                backend = "local"  # the reference path; flex on CPU is the dense reference (docs/gpu.md)
            elif not reset_attention_mask:
                backend = "sdpa"
            else:
                backend = "flex" if flex_available() else "local"
            self.attention_backend = backend
        if backend in LOCAL_SPEC_BACKENDS and self.use_te:
            raise ConfigError(f"--attention-backend {backend} runs on megatron-core's local spec: drop "
                              "--transformer-impl transformer_engine (or use --attention-backend te)")
        if backend == "flex" and not flex_available():
            raise ConfigError("--attention-backend flex: this torch has no torch.nn.attention.flex_attention "
                              "(torch >= 2.5)")
        if backend == "sdpa" and reset_attention_mask:
            raise ConfigError("--attention-backend sdpa cannot mask documents apart: use --attention-backend "
                              "flex, or --no-reset-attention-mask to let attention cross documents")
