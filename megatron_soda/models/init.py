"""Layout-invariant parameter initialisation.

megatron-core initialises each rank's shard from that rank's RNG stream, so the same ``--seed``
gives a different model under another TP/PP layout.  Here every parameter is drawn as its full
*global* tensor from a generator seeded by ``(seed, checkpoint key)`` and each rank keeps its own
slice (located through the same sharding metadata that ``dist_checkpointing`` uses).  The same
seed therefore gives the same model for every TP/PP/VPP/DP layout, which is what makes
parallel-vs-single-process loss comparisons (and scaling-law reruns on other clusters)
meaningful.  The stream is per device type (CPU and CUDA generators differ).

Scheme (GPT-2/Megatron): weights ~ N(0, std); the two residual-branch output projections
(``linear_proj``, ``linear_fc2``) ~ N(0, std / sqrt(2 * num_layers)); norm weights 1; biases 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

NORM_SUFFIXES = ("layernorm.weight", "layer_norm_weight", "norm.weight")
RESIDUAL_OUTPUT_SUFFIXES = ("linear_proj.weight", "linear_fc2.weight")


def _iter_sharded_tensors(obj: object) -> Iterator[ShardedTensor]:
    if isinstance(obj, ShardedTensor):
        yield obj
    elif isinstance(obj, ShardedTensorFactory):
        for sub in obj.build():
            yield from _iter_sharded_tensors(sub)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_sharded_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_sharded_tensors(v)


def seed_for(seed: int, key: str) -> int:
    """A generator seed for the tensor named ``key`` (a non-negative 63-bit int)."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def parameter_shards(
    sharded: object, error: type[Exception] = NotImplementedError
) -> Iterator[ShardedTensor]:
    """The floating-point parameter shards of a sharded state dict (no ``_extra_state``, no
    empty entries); a flattened shard raises ``error``."""
    for sh in _iter_sharded_tensors(sharded):
        if sh.data is None or not sh.data.is_floating_point() or sh.key.endswith("_extra_state"):
            continue
        if sh.flattened_range is not None:
            raise error(f"flattened sharded tensor {sh.key}")
        yield sh


def copy_local_slice(sh: ShardedTensor, full: torch.Tensor) -> None:
    """Copy this rank's slice of ``full`` (the global tensor without the prepended axes) into
    the shard's data."""
    p = sh.prepend_axis_num
    local = full[tuple(slice(o, o + n) for o, n in zip(sh.global_offset[p:], sh.local_shape))]
    sh.data.copy_(local.reshape(sh.data.shape))


def init_std(key: str, std: float, num_layers: int) -> float | None:
    """Standard deviation for the parameter named ``key``; None for constant-initialised ones."""
    if key.endswith(NORM_SUFFIXES) or key.endswith("bias"):
        return None
    if key.endswith(RESIDUAL_OUTPUT_SUFFIXES):
        return std / math.sqrt(2.0 * num_layers)
    return std


@torch.no_grad()
def initialize_parameters(model_chunks: list[torch.nn.Module], seed: int, std: float, num_layers: int) -> None:
    """Initialise every parameter of ``model_chunks`` (unwrapped megatron modules) in place."""
    for chunk in model_chunks:
        sharded = chunk.sharded_state_dict(metadata={"non_homogeneous_layers": True})
        for sh in parameter_shards(sharded):
            scale = init_std(sh.key, std, num_layers)
            if scale is None:
                sh.data.fill_(0.0 if sh.key.endswith("bias") else 1.0)
                continue
            p = sh.prepend_axis_num
            key = sh.key + "".join(f"[{o}]" for o in sh.global_offset[:p])
            gen = torch.Generator(device=sh.data.device).manual_seed(seed_for(seed, key))
            full = torch.empty(sh.global_shape[p:], dtype=torch.float32, device=sh.data.device)
            full.normal_(0.0, scale, generator=gen)
            copy_local_slice(sh, full)
