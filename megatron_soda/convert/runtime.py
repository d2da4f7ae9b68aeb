"""megatron-core in conversion processes: process group + parallel state, one model stage,
and filling it with global tensors through its sharded state dict (the same key/offset
metadata that ``dist_checkpointing`` and the trainer's initialisation use).  Checkpoints with
random weights and reference logits for tests are :mod:`megatron_soda.testing.checkpoints`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from megatron_soda.convert.errors import ConversionError
from megatron_soda.models.config import SodaModelConfig


@contextlib.contextmanager
def megatron_runtime(
    rank: int, world: int, store: str, tp: int, pp: int, seed: int = 1
) -> Iterator[None]:
    """gloo process group (file store) + megatron parallel state, on the CPU through the CPU
    compatibility layer (enabled for the duration).  Conversion never needs a GPU; a process
    that sees one must hide it (``CUDA_VISIBLE_DEVICES=``), as the conversion workers do."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from megatron_soda import compat

    if torch.cuda.is_available():
        raise ConversionError(
            "megatron runs on the CPU for conversion: hide the GPUs from this process "
            "(CUDA_VISIBLE_DEVICES=)"
        )
    compat.enable()
    try:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world
        )
        try:
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
            )
            model_parallel_cuda_manual_seed(seed)
            with _forked_results_queue():
                yield
        finally:
            parallel_state.destroy_model_parallel()
            torch.distributed.destroy_process_group()
    finally:
        compat.disable()


@contextlib.contextmanager
def _forked_results_queue() -> Iterator[None]:
    """megatron's checkpoint writer collects results through a queue served by a *spawned*
    multiprocessing Manager, which re-imports the caller's ``__main__`` (slow, and impossible
    from a notebook or ``python -``).  Provide that queue from a forked Manager instead (the
    writer itself already forks its worker processes)."""
    import multiprocessing

    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
    except ImportError:  # pragma: no cover - other megatron versions: their default
        yield
        return
    if getattr(fsa, "_results_queue", True) is not None:
        yield
        return
    manager = multiprocessing.get_context("fork").Manager()
    fsa._results_queue = manager.Queue()
    try:
        yield
    finally:
        fsa._results_queue = None
        manager.shutdown()


def build_stage(cfg: SodaModelConfig, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """This rank's pipeline stage of the SODA model, on the CPU, parameters left uninitialised."""
    from megatron.core import parallel_state

    from megatron_soda.config import ParallelConfig, PrecisionConfig
    from megatron_soda.models.gpt import build_model_chunk
    from megatron_soda.training.model_setup import transformer_config

    parallel = ParallelConfig(
        device="cpu",
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
    )
    precision = PrecisionConfig(bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)
    config = transformer_config(cfg, parallel, precision, initialize=False)
    return build_model_chunk(
        cfg,
        config,
        False,
        parallel_state.is_pipeline_first_stage(),
        parallel_state.is_pipeline_last_stage(),
    )


@torch.no_grad()
def fill_stage(chunk: torch.nn.Module, global_tensor: Callable[..., torch.Tensor]) -> None:
    """Copy every parameter of ``chunk`` from ``global_tensor(key, layer, out)`` (the full global
    tensor of a checkpoint key, or of one layer of a stacked key); every element must be written.
    When this rank holds the whole tensor, ``out`` is the parameter itself and the source may
    write into it directly (saving a temporary copy of, e.g., the embedding)."""
    from megatron_soda.checkpointing.state import model_state
    from megatron_soda.models.init import copy_local_slice, parameter_shards

    written = 0
    for sh in parameter_shards(model_state([chunk]), ConversionError):
        p = sh.prepend_axis_num
        if p > 1:
            raise ConversionError(f"unsupported sharding of {sh.key}")
        whole = tuple(sh.local_shape) == tuple(sh.global_shape[p:]) and sh.data.is_contiguous()
        out = sh.data.view(sh.local_shape) if whole else None
        full = global_tensor(sh.key, sh.global_offset[0] if p else None, out)
        if out is not None and full is out:
            written += sh.data.numel()
            continue
        if tuple(full.shape) != tuple(sh.global_shape[p:]):
            raise ConversionError(
                f"{sh.key}: source tensor {tuple(full.shape)}, model expects {tuple(sh.global_shape[p:])}"
            )
        copy_local_slice(sh, full)
        written += sh.data.numel()
    total = sum(t.numel() for t in chunk.parameters())
    if written != total:
        raise ConversionError(f"wrote {written} of {total} parameter elements of this stage")
