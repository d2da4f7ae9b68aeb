"""Process setup: device (CUDA, or CPU through the compatibility layer), torch.distributed (one
process without torchrun: :func:`standalone_rendezvous`), megatron's parallel state,
micro-batch calculator and seeds.  Undone in reverse on exit."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
from collections.abc import Iterator, MutableMapping

import numpy as np
import torch

from megatron_soda import compat
from megatron_soda.compat.allocator import tune_cpu_allocator
from megatron_soda.config import ConfigError, ParallelConfig, TrainConfig


def _select_device(parallel: ParallelConfig) -> torch.device:
    if parallel.device == "cpu":
        compat.enable()
        tune_cpu_allocator()  # bit-identical, 12-17% faster CPU steps (docs/benchmarks.md)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is visible. Pass --device cpu to run on the CPU "
            "(slow; for tests and debugging)."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def standalone_rendezvous(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Without torchrun (no ``RANK`` in the environment) the run is one process: rank 0 of a
    world of 1, meeting itself on a free local port.  Returns whether it set that up.  Several
    Slurm tasks without torchrun would each train alone on the same ``--save``: refused."""
    if "RANK" in environ:
        return False
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if tasks > 1:
        raise ConfigError(
            f"{tasks} Slurm tasks but no RANK in the environment: launch one torchrun per "
            "node (see slurm/pretrain_soda.sbatch), or a single task to run one process"
        )
    if int(environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError(
            f"WORLD_SIZE={environ['WORLD_SIZE']} but no RANK in the environment: launch with "
            "torchrun, or unset WORLD_SIZE to run one process"
        )
    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        environ.setdefault(key, value)
    if "MASTER_PORT" not in environ:
        with socket.socket() as s:
            s.bind((environ["MASTER_ADDR"], 0))
            environ["MASTER_PORT"] = str(s.getsockname()[1])
    return True


def set_seeds(seed: int) -> None:
    """Megatron-LM's scheme: a different stream per pipeline stage, model-parallel RNG tracker."""
    from megatron.core import parallel_state, tensor_parallel

    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


@contextlib.contextmanager
def distributed_runtime(config: TrainConfig) -> Iterator[torch.device]:
    """Everything megatron-core needs before a model can be built; yields the device.  The batch
    check of :func:`megatron_soda.config.derived.derive` (from ``$WORLD_SIZE``) is repeated here
    against megatron's own data-parallel size, which is the one its calculator asserts on."""
    parallel, optim = config.parallel, config.optim
    device = _select_device(parallel)
    try:
        if not torch.distributed.is_initialized():
            standalone_rendezvous()
            torch.distributed.init_process_group(
                backend=parallel.distributed_backend,
                timeout=datetime.timedelta(minutes=parallel.distributed_timeout_minutes),
            )
        from megatron.core import parallel_state
        from megatron.core.num_microbatches_calculator import (
            destroy_num_microbatches_calculator,
            init_num_microbatches_calculator,
        )

        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            context_parallel_size=parallel.context_parallel_size,
            distributed_timeout_minutes=parallel.distributed_timeout_minutes,
        )
        dp = parallel_state.get_data_parallel_world_size()
        optim.check_batch(dp)  # megatron's calculator would only assert
        init_num_microbatches_calculator(
            torch.distributed.get_rank(),
            list(optim.rampup_batch_size) if optim.rampup_batch_size else None,
            optim.global_batch_size,
            optim.micro_batch_size,
            dp,
        )
        set_seeds(optim.seed)
        try:
            yield device
        finally:
            destroy_num_microbatches_calculator()
            parallel_state.destroy_model_parallel()
            torch.distributed.destroy_process_group()
    finally:
        if parallel.device == "cpu":
            compat.disable()
