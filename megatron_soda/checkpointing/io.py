"""Save and load SODA checkpoints with megatron's ``dist_checkpointing``.

Besides the sharded tensors, every checkpoint carries ``soda_checkpoint.json`` (model config with
the padded vocabulary size, tokenizer identity, parallel layout, train state) and a copy of the
tokenizer, so a load can refuse a checkpoint of another shape or tokenizer with a message
naming the directory before megatron fails on a tensor shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import megatron.core
import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.checkpointing import layout
from megatron_soda.checkpointing.async_save import AsyncSaves
from megatron_soda.checkpointing.state import (
    TrainState,
    inner_optimizers,
    load_optimizer_state,
    model_keys,
    restore_rng,
    sharded_state_dict,
    unwrap,
)
from megatron_soda.format import field_differences
from megatron_soda.models.config import SHAPE_FIELDS, SodaModelConfig
from megatron_soda.safe_loading import UnsafeContentError
from megatron_soda.tokenizer import SodaTokenizer

# Model fields whose difference makes a checkpoint unloadable (the rest, e.g. seq_length or
# rotary_base, are legitimate to change when continuing training).
CHECKED_FIELDS = (*SHAPE_FIELDS, "padded_vocab_size", "vocab_size")


def _barrier() -> None:
    torch.distributed.barrier()


def _layout() -> dict[str, int]:
    return {
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "data_parallel_size": parallel_state.get_data_parallel_world_size(),
        "context_parallel_size": parallel_state.get_context_parallel_world_size(),
    }


def _dp_group():
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_checkpoint(root: str, state: TrainState, model: list, optimizer, scheduler, *,
                    model_cfg: SodaModelConfig, tokenizer: SodaTokenizer, run_args: dict[str, Any],
                    save_optimizer: bool = True, crash_hook: Callable[[], None] | None = None,
                    data: dict[str, Any] | None = None, async_saves: AsyncSaves | None = None,
                    on_commit: Callable[[str], None] | None = None) -> str:
    """Write checkpoint ``state.iteration`` under ``root`` (all ranks call this).  ``data``: the
    codec the training shards were made with (``codec``, ``codec_fingerprint``, ``codec_random``).

    Without ``async_saves`` the checkpoint is committed when this returns; with it the shards are
    written in the background and the commit runs when ``async_saves`` finalizes the save.
    ``on_commit(path)`` runs on every rank after the commit; ``crash_hook`` (testing) runs once the
    shards are written (synchronous) or while they are being written (asynchronous)."""
    rank0 = torch.distributed.get_rank() == 0
    tmp = layout.iteration_dir(root, state.iteration) + ".tmp"
    if rank0:
        os.makedirs(root, exist_ok=True)
        layout.prepare_tmp(root, state.iteration)
    _barrier()
    sd = sharded_state_dict(model, optimizer, scheduler, state, with_optimizer=save_optimizer,
                            with_rng=True, is_loading=False)
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), _dp_group())
    meta = {  # taken now: the train state moves on while an asynchronous save is written
        "format": "megatron_soda/1",
        "megatron_core": megatron.core.__version__,
        "model": model_cfg.to_dict(),
        "tokenizer": dict(tokenizer.unique_identifiers),
        "parallel": _layout(),
        "model_chunks": len(model),
        "has_optimizer": save_optimizer,
        "optimizer": optimizer_kind(optimizer),
        "optimizer_sharding": "fully_reshardable",
        "train_state": state.to_dict(),
        "data": data or {},
    }
    iteration = state.iteration

    def commit() -> None:
        if rank0:
            tokenizer.save(os.path.join(tmp, "tokenizer"))
            with open(os.path.join(tmp, "run_args.json"), "w") as f:
                json.dump(run_args, f, indent=2, sort_keys=True, default=str)
            # fsynced before the rename: a power loss keeps it
            write_json_atomic(os.path.join(tmp, layout.META), meta, durable=True, indent=2, sort_keys=True)
            layout.commit(root, iteration)
        _barrier()
        if on_commit is not None:
            on_commit(layout.iteration_dir(root, iteration))

    request = dist_checkpointing.save(sd, tmp, sharded_strategy=strategy, async_sharded_save=async_saves is not None)
    if async_saves is not None:
        async_saves.schedule(request, commit, iteration)
    if crash_hook is not None:
        crash_hook()
    if async_saves is None:
        commit()
    return layout.iteration_dir(root, iteration)


def _unsafe_content(error: BaseException, depth: int = 0) -> UnsafeContentError | None:
    """The :class:`UnsafeContentError` behind ``error``: its causes, or the per-rank failures a
    DCP ``CheckpointException`` collects (``{rank: (exception, traceback)}``)."""
    if isinstance(error, UnsafeContentError):
        return error
    if depth > 8:
        return None
    inner = [error.__cause__, error.__context__]
    inner += [f[0] if isinstance(f, tuple) else f for f in (getattr(error, "failures", None) or {}).values()]
    for e in inner:
        if isinstance(e, BaseException) and (found := _unsafe_content(e, depth + 1)) is not None:
            return found
    return None


def optimizer_kind(optimizer) -> str:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return "distributed" if any(isinstance(o, DistributedOptimizer) for o in inner_optimizers(optimizer)) else "plain"


def check_compatible(ckpt: str, meta: dict[str, Any], model_cfg: SodaModelConfig, tokenizer: SodaTokenizer) -> None:
    saved, mine = meta["model"], model_cfg.to_dict()
    diffs = field_differences({k: saved.get(k) for k in CHECKED_FIELDS}, {k: mine[k] for k in CHECKED_FIELDS},
                              "checkpoint", "this run")
    if diffs:
        raise layout.CheckpointError(f"{ckpt}: checkpoint of another model shape ({diffs})")
    theirs, ours = _tokenizer_fields(meta["tokenizer"]), _tokenizer_fields(tokenizer.unique_identifiers)
    if theirs != ours:
        raise layout.CheckpointError(
            f"{ckpt}: saved with another tokenizer ({field_differences(theirs, ours, 'checkpoint', 'this run')}); "
            f"train with --tokenizer {os.path.join(ckpt, 'tokenizer')} (it carries its codebook count) or start "
            "a new run")


def _tokenizer_fields(identifiers: Mapping[str, Any]) -> dict[str, Any]:
    """A tokenizer's identifiers with its layout (a JSON string) spread into ``layout.<field>``
    entries, so that a mismatch names the layout fields that differ."""
    out = {k: v for k, v in identifiers.items() if k != "layout"}
    recorded = json.loads(identifiers.get("layout") or "{}")
    out.update((f"layout.{k}", v) for k, v in recorded.items() if k not in out)
    return out


# Fields that change what the same weights compute without changing any shape.
COMPUTATION_FIELDS = ("rotary_base", "use_rope_scaling", "rope_scaling_factor", "norm_epsilon")


def changed_computation(meta: dict[str, Any], model_cfg: SodaModelConfig) -> str:
    """The :data:`COMPUTATION_FIELDS` the checkpoint's record and ``model_cfg`` disagree on."""
    saved = SodaModelConfig.from_dict(meta["model"])  # old records read as what they ran
    return "; ".join(f"{k}: checkpoint {getattr(saved, k)} vs this run {getattr(model_cfg, k)}"
                     for k in COMPUTATION_FIELDS if getattr(saved, k) != getattr(model_cfg, k))


def check_data_codec(ckpt: str, meta: dict[str, Any], data: dict[str, Any] | None, finetune: bool,
                     log: Callable[[str], None]) -> None:
    """A model trained on the codes of one codec, continued on another's, learns a new code
    language: refused when resuming (a mistake), a note when fine-tuning (a choice).  Unknown on
    either side (old checkpoints, text-only data) is not a difference."""
    theirs = (meta.get("data") or {}).get("codec_fingerprint")
    ours = (data or {}).get("codec_fingerprint")
    if theirs is None or ours is None or theirs == ours:
        return
    what = (f"{ckpt}: trained on shards of codec {meta['data'].get('codec')} (fingerprint {theirs}), "
            f"this run's shards are of codec {data.get('codec')} (fingerprint {ours})")
    if not finetune:
        raise layout.CheckpointError(what + "; resuming would mix the codes of two codecs (use --finetune "
                                     "to start a new run from these weights on purpose)")
    log(what + "; note: fine-tuning on the codes of another codec")


def load_checkpoint(path: str, model: list, optimizer, scheduler, *, model_cfg: SodaModelConfig,
                    tokenizer: SodaTokenizer, load_optimizer: bool = True, load_rng: bool = True,
                    finetune: bool = False, log: Callable[[str], None] = print,
                    data: dict[str, Any] | None = None) -> TrainState | None:
    """Load the checkpoint found at ``path`` (see :func:`layout.find_checkpoint`) into the
    given model/optimizer/scheduler.  Returns its train state, or None if there is none.
    ``data``: this run's shard codec (:func:`check_data_codec`)."""
    ckpt = layout.find_checkpoint(path)
    if ckpt is None:
        return None
    meta = layout.read_meta(ckpt)
    check_compatible(ckpt, meta, model_cfg, tokenizer)
    changed = changed_computation(meta, model_cfg)
    if changed:
        log(f"{ckpt}: note: this run computes the model differently from the run that saved it "
            f"({changed}); intended for warm starts, a mistake when resuming")
    if meta.get("weights_only") and not finetune:  # e.g. converted from Hugging Face: nothing to resume
        log(f"{ckpt}: weights-only checkpoint, loaded as with --finetune")
        finetune = True
    check_data_codec(ckpt, meta, data, finetune, log)
    same_layout = all(meta["parallel"][k] == v for k, v in _layout().items()
                      if k in ("tensor_model_parallel_size", "pipeline_model_parallel_size"))
    with_optimizer = load_optimizer and not finetune and meta["has_optimizer"]
    kind = optimizer_kind(optimizer)
    if with_optimizer and meta.get("optimizer") != kind:
        raise layout.CheckpointError(
            f"{ckpt}: optimizer state saved by a {meta.get('optimizer')} optimizer, this run uses a {kind} "
            "one (--use-distributed-optimizer differs); pass --no-load-optim to load only the weights")
    with_rng = load_rng and not finetune and same_layout
    if load_rng and not finetune and not same_layout:
        log(f"{ckpt}: saved under TP/PP {meta['parallel']}, RNG state not restored in this layout")
    sd = sharded_state_dict(model, optimizer, scheduler, TrainState(), with_optimizer=with_optimizer,
                            with_rng=with_rng, is_loading=True)
    if finetune:
        sd.pop("opt_param_scheduler")
    strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(ckpt), _dp_group())
    # megatron's naming: "unexpected" = requested here but absent from the checkpoint
    try:
        loaded, _not_requested, absent = dist_checkpointing.load(sd, ckpt, sharded_strategy=strategy,
                                                                 strict=StrictHandling.RETURN_ALL)
    except Exception as e:  # DCP wraps each rank's failure: surface a refused unpickling as itself
        refused = _unsafe_content(e)
        if refused is not None:
            raise refused from e
        raise
    missing = sorted(k for k in absent if not k.endswith("_extra_state"))
    if missing:
        raise layout.CheckpointError(f"{ckpt}: missing {len(missing)} tensors this model needs, e.g. {missing[:5]}")
    for key, chunk in zip(model_keys(model), model):
        unwrap(chunk).load_state_dict(loaded[key], strict=True)
    if with_optimizer:
        load_optimizer_state(optimizer, loaded["optimizer"])
    if not finetune:
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if with_rng:
        restore_rng(loaded["rng_state"])
    state = TrainState() if finetune else TrainState(**loaded["train_state"])
    log(f"loaded {ckpt} (iteration {state.iteration}, consumed samples {state.consumed_samples}"
        f"{', weights only' if finetune else ''}{'' if with_optimizer else ', fresh optimizer'})")
    return state
