"""Device and parallelism flags (Megatron-LM names)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device and parallelism")
    g.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu runs megatron-core through megatron_soda.compat (gloo; for tests and "
                   "debugging configs on a laptop)")
    g.add_argument("--distributed-backend", choices=("nccl", "gloo"), default=None,
                   help="default: nccl on cuda, gloo on cpu")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10)
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-virtual-stages-per-pipeline-rank", "--virtual-pipeline-model-parallel-size",
                   dest="virtual_pipeline_model_parallel_size", type=int, default=None,
                   help="model chunks per pipeline rank (interleaved 1F1B schedule)")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--context-parallel-size", type=int, default=1, help="1 only for now (>1: not implemented, refused)")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--microbatch-group-size-per-virtual-pipeline-stage", type=int, default=None)


def finalize(args: argparse.Namespace) -> None:
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.distributed_backend is None:
        args.distributed_backend = "nccl" if args.device == "cuda" else "gloo"
    if args.sequence_parallel and args.tensor_model_parallel_size == 1:
        args.sequence_parallel = False  # as Megatron-LM: nothing to split
    if args.overlap_param_gather and not args.use_distributed_optimizer:
        raise ValueError("--overlap-param-gather needs --use-distributed-optimizer")
    vpp, per_stage = args.virtual_pipeline_model_parallel_size, args.num_layers_per_virtual_pipeline_stage
    if vpp is not None and per_stage is not None:
        raise ValueError("give --num-layers-per-virtual-pipeline-stage or "
                         "--num-virtual-stages-per-pipeline-rank, not both")
    for flag, value in (("--num-virtual-stages-per-pipeline-rank", vpp),
                        ("--num-layers-per-virtual-pipeline-stage", per_stage)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1")
    if (vpp is not None or per_stage is not None) and args.pipeline_model_parallel_size == 1:
        raise ValueError("virtual pipeline stages need --pipeline-model-parallel-size > 1")
    if vpp == 1:
        args.virtual_pipeline_model_parallel_size = None


def resolve_virtual_stages(args: argparse.Namespace, num_layers: int) -> None:
    """Turn --num-layers-per-virtual-pipeline-stage into stages per rank, now that the layer
    count is known, and check that the layers split evenly."""
    pp = args.pipeline_model_parallel_size
    if num_layers % pp:
        raise ValueError(f"--num-layers {num_layers} is not divisible by --pipeline-model-parallel-size {pp}")
    per_rank = num_layers // pp
    vpp, per_stage = args.virtual_pipeline_model_parallel_size, args.num_layers_per_virtual_pipeline_stage
    if per_stage is not None:
        if per_rank % per_stage:
            raise ValueError(f"{per_rank} layers per pipeline rank do not split into virtual stages of {per_stage}")
        vpp = per_rank // per_stage
        args.virtual_pipeline_model_parallel_size = vpp if vpp > 1 else None
    elif vpp is not None and per_rank % vpp:
        raise ValueError(f"{per_rank} layers per pipeline rank do not split into {vpp} virtual stages")
