"""Precision, attention-kernel and activation-recompute flags.

Anything that needs Transformer Engine or a GPU is checked here, before a model is built, so a
missing package stops the run with a message instead of silently doing nothing (megatron-core
accepts ``fp8="hybrid"`` with the local spec and ignores it)."""

from __future__ import annotations

import argparse

from megatron_soda.models.te import te_available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("precision and kernels")
    g.add_argument("--bf16", action="store_true", help="bf16 params/activations, fp32 main weights")
    g.add_argument("--fp16", action="store_true", help="fp16 with dynamic loss scaling")
    g.add_argument("--fp8-format", choices=("e4m3", "hybrid"), default=None, help="needs Transformer Engine")
    g.add_argument("--fp8-recipe", choices=("delayed", "tensorwise", "mxfp8", "blockwise"), default="delayed")
    g.add_argument("--fp8-amax-history-len", type=int, default=1024)
    g.add_argument("--fp8-amax-compute-algo", choices=("most_recent", "max"), default="max")
    g.add_argument("--fp8-param-gather", action="store_true")
    g.add_argument("--transformer-impl", choices=("auto", "transformer_engine", "local"), default="auto",
                   help="auto: Transformer Engine when importable and on GPU, else megatron-core local")
    g.add_argument("--attention-backend", choices=("auto", "flash", "fused", "unfused", "local"), default="auto",
                   help="flash/fused/unfused go through Transformer Engine")
    g.add_argument("--recompute-granularity", choices=("full", "selective"), default=None)
    g.add_argument("--recompute-method", choices=("uniform", "block"), default=None)
    g.add_argument("--recompute-num-layers", type=int, default=None)
    g.add_argument("--recompute-modules", nargs="*", default=None,
                   help="selective recompute targets (megatron-core names, e.g. core_attn mlp)")


def finalize(args: argparse.Namespace) -> None:
    if args.bf16 and args.fp16:
        raise ValueError("--bf16 and --fp16 are exclusive")
    te = te_available()
    on_gpu = args.device == "cuda"
    if args.transformer_impl == "auto":
        args.transformer_impl = "transformer_engine" if te and on_gpu else "local"
    use_te = args.transformer_impl == "transformer_engine"
    if use_te and not te:
        raise ValueError("--transformer-impl transformer_engine: Transformer Engine is not installed "
                         "(pip install 'megatron_soda[te]')")
    if use_te and not on_gpu:
        raise ValueError("--transformer-impl transformer_engine needs --device cuda")
    needs_te = []
    if args.fp8_format:
        needs_te.append(f"--fp8-format {args.fp8_format}")
    if args.fp8_param_gather:
        needs_te.append("--fp8-param-gather")
    if args.context_parallel_size > 1:
        needs_te.append(f"--context-parallel-size {args.context_parallel_size}")
    if args.attention_backend in ("flash", "fused", "unfused"):
        needs_te.append(f"--attention-backend {args.attention_backend}")
    if needs_te and not use_te:
        why = "Transformer Engine is not installed (pip install 'megatron_soda[te]')" if not te else (
            "they need --device cuda and the Transformer Engine layer spec")
        raise ValueError(f"{', '.join(needs_te)}: {why}. megatron-core's local spec has no "
                         "FP8, context-parallel or fused/flash attention path (flash-attn is used "
                         "through Transformer Engine).")
    if args.context_parallel_size > 1:
        raise ValueError(
            f"--context-parallel-size {args.context_parallel_size}: not implemented yet. Document "
            "masking runs Transformer Engine on packed THD batches, and splitting those across "
            "context-parallel ranks (each document padded to a multiple of 2 x CP) is not built; "
            "for long sequences use --tensor-model-parallel-size with --sequence-parallel.")
    if args.fp8_format and not (args.bf16 or args.fp16):
        raise ValueError("--fp8-format needs --bf16 (FP8 GEMMs with bf16 everywhere else)")
    if args.recompute_method and args.recompute_granularity != "full":
        raise ValueError("--recompute-method applies to --recompute-granularity full")
    if args.recompute_granularity == "full" and not args.recompute_method:
        args.recompute_method = "uniform"
    if args.recompute_granularity == "full" and args.recompute_num_layers is None:
        args.recompute_num_layers = 1
