"""The device and parallelism section (Megatron-LM's flag names)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option


@dataclass
class ParallelConfig:
    device: str = option("cuda", "cpu runs megatron-core through megatron_soda.compat (gloo; for "
                         "tests and debugging configs on a laptop)", choices=("cuda", "cpu"))
    distributed_backend: str | None = option(None, "default: nccl on cuda, gloo on cpu",
                                             choices=("nccl", "gloo"))
    distributed_timeout_minutes: int = option(10)
    tensor_model_parallel_size: int = option(1)
    pipeline_model_parallel_size: int = option(1)
    virtual_pipeline_model_parallel_size: int | None = option(
        None, "model chunks per pipeline rank (interleaved 1F1B schedule)",
        flags=("--num-virtual-stages-per-pipeline-rank", "--virtual-pipeline-model-parallel-size"))
    num_layers_per_virtual_pipeline_stage: int | None = option(None)
    sequence_parallel: bool = option(False)
    context_parallel_size: int = option(
        1, "split every sequence over this many ranks (2 load-balanced chunks each); > 1 needs "
        "--attention-backend flex on the local spec, not Transformer Engine (docs/context_parallel.md)")
    use_distributed_optimizer: bool = option(False)
    overlap_grad_reduce: bool = option(False)
    overlap_param_gather: bool = option(False)
    microbatch_group_size_per_virtual_pipeline_stage: int | None = option(None)

    def validate(self) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.distributed_backend is None:
            self.distributed_backend = "nccl" if self.device == "cuda" else "gloo"
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            self.sequence_parallel = False  # as Megatron-LM: nothing to split
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError("--overlap-param-gather needs --use-distributed-optimizer")
        vpp, per_stage = self.virtual_pipeline_model_parallel_size, self.num_layers_per_virtual_pipeline_stage
        if vpp is not None and per_stage is not None:
            raise ConfigError("give --num-layers-per-virtual-pipeline-stage or "
                              "--num-virtual-stages-per-pipeline-rank, not both")
        for flag, value in (("--num-virtual-stages-per-pipeline-rank", vpp),
                            ("--num-layers-per-virtual-pipeline-stage", per_stage)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1")
        if (vpp is not None or per_stage is not None) and self.pipeline_model_parallel_size == 1:
            raise ConfigError("virtual pipeline stages need --pipeline-model-parallel-size > 1")
        if vpp == 1:
            self.virtual_pipeline_model_parallel_size = None

    def resolve_virtual_stages(self, num_layers: int) -> None:
        """Turn --num-layers-per-virtual-pipeline-stage into stages per rank, now that the layer
        count is known, and check that the layers split evenly."""
        pp = self.pipeline_model_parallel_size
        if num_layers % pp:
            raise ConfigError(f"--pipeline-model-parallel-size {pp} does not divide --num-layers {num_layers}")
        per_rank = num_layers // pp
        vpp, per_stage = self.virtual_pipeline_model_parallel_size, self.num_layers_per_virtual_pipeline_stage
        rank_layers = f"the {per_rank} layers per pipeline rank (--num-layers {num_layers} / --pipeline-model-parallel-size {pp})"
        if per_stage is not None:
            if per_rank % per_stage:
                raise ConfigError(f"--num-layers-per-virtual-pipeline-stage {per_stage} does not divide {rank_layers}")
            vpp = per_rank // per_stage
            self.virtual_pipeline_model_parallel_size = vpp if vpp > 1 else None
            self.num_layers_per_virtual_pipeline_stage = None  # now said by the stage count
        elif vpp is not None and per_rank % vpp:
            raise ConfigError(f"--num-virtual-stages-per-pipeline-rank {vpp} does not divide {rank_layers}")

    def check_world_size(self, world_size: int, seq_length: int) -> None:
        """What only the process count and the sequence length decide, as one line naming the
        number that does not divide the other."""
        tp, pp, cp = (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                      self.context_parallel_size)
        product = tp * pp * cp
        if world_size % product:
            used = [f"{flag} {n}" for flag, n in (("--tensor-model-parallel-size", tp),
                                                  ("--pipeline-model-parallel-size", pp),
                                                  ("--context-parallel-size", cp)) if n > 1]
            names = " x ".join(used) + (f" = {product}" if len(used) > 1 else "")
            raise ConfigError(f"{names} does not divide the world size {world_size} (processes)")
        if cp > 1 and seq_length % (2 * cp):
            raise ConfigError(f"--context-parallel-size {cp} does not divide --seq-length {seq_length} into "
                              f"2 x {cp} = {2 * cp} equal chunks (each rank keeps 2, for load balance)")
        if self.sequence_parallel and (seq_length // cp) % tp:
            per_rank = f"--seq-length {seq_length}" + (f" / --context-parallel-size {cp}" if cp > 1 else "")
            raise ConfigError(f"--tensor-model-parallel-size {tp} does not divide {per_rank} "
                              "(--sequence-parallel splits the sequence)")

    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size
