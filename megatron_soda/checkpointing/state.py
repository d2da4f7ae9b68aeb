"""What goes into a checkpoint, as a megatron ``ShardedStateDict``.

* ``model`` (``model0``, ``model1``, ... with virtual pipeline stages): every chunk's sharded
  state dict, keyed by global names/offsets, so it reloads under any TP/PP/VPP layout;
* ``optimizer``: megatron's optimizer sharded state dict; the distributed optimizer is saved in
  the ``fully_reshardable`` format (the default ``fully_sharded_model_space`` fails in
  megatron-core 0.16 with "ShardedTensor.flattened_range is not supported"), which also reloads
  under another DP size;
* ``opt_param_scheduler``, ``train_state`` (iteration, consumed samples, ...): common objects;
* ``rng_state``: one ShardedObject per (pipeline, tensor) rank, replicated over data parallel.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.distributed import DistributedDataParallel
from megatron.core.transformer.module import Float16Module

SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The megatron model inside DDP / Float16Module wrappers (whose keys carry ``module.``)."""
    while isinstance(chunk, (DistributedDataParallel, Float16Module)):
        chunk = chunk.module
    return chunk


def model_keys(model: list) -> list[str]:
    return ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]


def model_state(model: list) -> dict[str, Any]:
    return {key: unwrap(chunk).sharded_state_dict(metadata=dict(SHARDING_METADATA))
            for key, chunk in zip(model_keys(model), model)}


def _rng_state() -> dict[str, Any]:
    return {
        "random": random.getstate(),
        "numpy": _numpy_rng_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with its key as a tensor: checkpoints are loaded with
    ``torch.load(weights_only=True)`` (``safe_loading``), which builds tensors but no numpy arrays."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def rng_sharded_object() -> ShardedObject:
    pp, tp = parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject(
        "rng_state", [_rng_state()], (pp, tp),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )


def restore_rng(states: list[dict[str, Any]]) -> None:
    state = states[0]
    random.setstate(state["random"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def inner_optimizers(optimizer) -> list:
    """The optimizers inside megatron's ChainedOptimizer (one per parameter group kind), or the
    optimizer itself."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def prime_optimizer_state(optimizer) -> None:
    """Make the inner torch optimizers hold state before a load.

    A freshly built DistributedOptimizer has no Adam state, and its ``sharded_state_dict(...,
    is_loading=True)`` asserts that a ``step`` exists.  Megatron's own remedy
    (``_init_optimizer_states_with_dummy_values``) runs one Adam step on zero gradients; it is
    done here with every learning rate at 0 so that not even weight decay touches a parameter
    (all values are then overwritten by the checkpoint)."""
    for opt in inner_optimizers(optimizer):
        init = getattr(opt, "_init_optimizer_states_with_dummy_values", None)
        if init is None or opt.optimizer is None or len(opt.optimizer.state):
            continue
        saved = [group["lr"] for group in opt.optimizer.param_groups]
        for group in opt.optimizer.param_groups:
            group["lr"] = 0.0
        init()
        for group, lr in zip(opt.optimizer.param_groups, saved):
            group["lr"] = lr


def load_optimizer_state(optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict`` with a workaround for megatron-core 0.16.1's distributed
    optimizer on torch's Adam (no Transformer Engine/Apex): its ``fully_reshardable`` loader copies
    every key of the inner per-parameter state, which for torch Adam includes ``step``, but the
    checkpoint side deliberately has no per-parameter ``step`` (it is restored from the param
    groups) -> ``KeyError: 'step'``.  The parameter state is therefore loaded with ``step``
    hidden, after the rest of the state (which sets ``step``) has been loaded."""
    optimizers = inner_optimizers(optimizer)
    states = [state] if len(optimizers) == 1 else [state[i] for i in range(len(optimizers))]
    for opt, sd in zip(optimizers, states):
        if not (isinstance(sd, dict) and sd.get("param_state_sharding_type") == "fully_reshardable"):
            opt.load_state_dict(sd)
            continue
        param_state = sd.pop("param_state")
        sd.pop("param_state_sharding_type")
        opt.load_state_dict(sd)
        steps = {p: st.pop("step") for p, st in opt.optimizer.state.items() if "step" in st}
        try:
            opt.load_parameter_state_from_fully_reshardable(param_state)
        finally:
            # megatron sets one shared ``step`` tensor for all parameters, which torch's Adam
            # then increments once per parameter per update: give each its own.
            for p, step in steps.items():
                opt.optimizer.state[p]["step"] = step.clone()


def sharded_state_dict(model: list, optimizer, scheduler, train_state: TrainState, *,
                       with_optimizer: bool, with_rng: bool, is_loading: bool) -> dict[str, Any]:
    state: dict[str, Any] = model_state(model)
    if with_optimizer:
        if is_loading:
            prime_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading,
                                                          metadata=dict(SHARDING_METADATA))
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    state["train_state"] = train_state.to_dict()
    if with_rng:
        state["rng_state"] = rng_sharded_object()
    return state
