"""Process setup: device (CUDA, or CPU through the compatibility layer), torch.distributed,
megatron's parallel state, micro-batch calculator and seeds.  Undone in reverse on exit."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Iterator

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
