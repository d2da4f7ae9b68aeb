"""megatron-core in conversion processes: process group + parallel state, one model stage,
and moving global tensors in and out of it through its sharded state dict (the same
key/offset metadata that ``dist_checkpointing`` and the trainer's initialisation use)."""

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

    from megatron_soda.models.gpt import build_model_chunk, make_transformer_config

    config = make_transformer_config(
        cfg,
        False,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=True,
        perform_initialization=False,
    )
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


def load_stage(chunk: torch.nn.Module, ckpt: str) -> None:
    """Load the model weights of checkpoint ``ckpt`` into ``chunk`` (no optimizer, RNG or train state)."""
    from megatron.core import dist_checkpointing

    from megatron_soda.checkpointing.state import model_state

    loaded = dist_checkpointing.load(model_state([chunk]), ckpt)
    chunk.load_state_dict(loaded["model"], strict=True)


@torch.no_grad()
def checkpoint_logits(ckpt: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` (padded vocabulary rows dropped) of the model in checkpoint
    ``ckpt`` on ``tokens`` ``[b, s]`` (one causal sequence per row), computed by megatron_soda's
    own model at TP = PP = 1 in this process: the reference the converted HF model must match.
    It loads through megatron's own ``dist_checkpointing.load`` (as the trainer does), so use
    it on checkpoints you would train from."""
    import os
    import tempfile

    from megatron_soda.checkpointing import layout

    cfg = SodaModelConfig.from_dict(layout.read_meta(ckpt)["model"])
    b, s = tokens.shape
    with (
        tempfile.TemporaryDirectory() as tmp,
        megatron_runtime(0, 1, os.path.join(tmp, "store"), 1, 1),
    ):
        chunk = build_stage(cfg, torch.float32)
        load_stage(chunk, ckpt)
        chunk.eval()
        mask = torch.ones(s, s, dtype=torch.bool).triu(1).expand(b, 1, s, s)
        positions = torch.arange(s).expand(b, s)
        logits = chunk(input_ids=tokens, position_ids=positions, attention_mask=mask)
    return logits[..., : cfg.vocab_size].float()


def random_weights(
    cfg: SodaModelConfig, seed: int, scale: float = 0.05
) -> Callable[..., torch.Tensor]:
    """A ``global_tensor`` function for :func:`fill_stage` giving deterministic random weights,
    the same under every layout: norm weights ``1 + N(0, 0.1)`` (so that a swapped norm would
    show), matrices ``N(0, scale)``.  For tests and benchmarks."""
    from megatron_soda.convert import names
    from megatron_soda.models.init import seed_for

    shapes = {
        k: names.megatron_layer_shape(p, cfg) for p in names.LAYER_PARAMS for k in p.megatron_keys
    }
    shapes.update({k: names.megatron_global_shape(k, cfg) for k in names.GLOBAL_PARAMS})

    def make(key: str, layer: int | None, out: torch.Tensor | None = None) -> torch.Tensor:
        # ``out`` (fill_stage's in-place target) is not used: a fresh tensor is returned
        gen = torch.Generator().manual_seed(seed_for(seed, f"{key}/{layer}"))
        t = torch.randn(shapes[key], generator=gen)
        return t.mul_(0.1).add_(1.0) if "norm" in key else t.mul_(scale)

    return make


def save_random_checkpoint(
    save: str,
    cfg: SodaModelConfig,
    tokenizer,
    seed: int = 1,
    iteration: int = 1,
    scale: float = 0.05,
) -> str:
    """Write a megatron_soda checkpoint (TP = PP = 1, this process, trainer's save path) of
    ``cfg`` with :func:`random_weights`; returns its ``iter_N`` directory."""
    import os
    import tempfile

    from megatron_soda.checkpointing import TrainState, layout, save_checkpoint

    with (
        tempfile.TemporaryDirectory() as tmp,
        megatron_runtime(0, 1, os.path.join(tmp, "store"), 1, 1),
    ):
        chunk = build_stage(cfg, torch.float32)
        fill_stage(chunk, random_weights(cfg, seed, scale))
        save_checkpoint(
            save,
            TrainState(iteration=iteration),
            [chunk],
            None,
            None,
            model_cfg=cfg,
            tokenizer=tokenizer,
            run_args={"random_weights_seed": seed},
            save_optimizer=False,
        )
    return layout.iteration_dir(save, iteration)
