"""Layout-invariant parameter initialisation.

megatron-core initialises each rank's shard from that rank's RNG stream, so the same ``--seed``
gives a different model under another TP/PP layout.  Here every parameter is drawn as its full
*global* tensor from a generator seeded by ``(seed, checkpoint key)`` and each rank keeps its own
slice (located through the same sharding metadata that ``dist_checkpointing`` uses).  The same
seed therefore gives the same model for every TP/PP/VPP/DP layout, which is what makes
parallel-vs-single-process loss comparisons (and scaling-law reruns on other clusters)
meaningful.  The stream is per device type (CPU and CUDA generators differ).

Two schemes (``--init-method``):

* ``levanter`` (default: what every SODA model was initialised with): every linear weight, the
  untied output head included, ~ N(0, 1) truncated to [-3, 3] times 1/sqrt(fan_in); the input
  embedding ~ the same truncated normal times 1/hidden.  Levanter builds its Qwen3 from
  haliax's ``Linear.init``/``Embedding.init`` with no init_scale (levanter
  src/levanter/layers/attention.py:1473-1488, src/levanter/models/llama.py:264-266, 446, 503 @
  9263f81), and those are haliax src/haliax/nn/linear.py:63 and nn/embedding.py:50 (@ f41e7d4,
  the version of SODA's training period; ``initializer_range`` is not used for them).  Fused
  megatron weights ([q; k; v], [gate; up]) have the same fan-in as their parts, so drawing them
  whole gives the same distribution.
* ``megatron`` (GPT-2/Megatron-LM): weights ~ N(0, ``--init-method-std``); the two residual
  output projections (``linear_proj``, ``linear_fc2``) ~ N(0, std / sqrt(2 * num_layers)).

Norm weights are 1 and biases 0 in both.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_soda.models.config import SodaModelConfig

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


INPUT_EMBEDDING = "word_embeddings.weight"


def init_std(key: str, shape: tuple[int, ...], arch: SodaModelConfig) -> float | None:
    """Scale for the parameter named ``key`` with global (per-layer) ``shape`` [out, in]: the
    standard deviation of the normal (``megatron``) or the factor on the truncated standard normal
    (``levanter``); None for constant-initialised ones."""
    if key.endswith(NORM_SUFFIXES) or key.endswith("bias"):
        return None
    if arch.init_method == "levanter":
        return 1.0 / shape[-1] if key.endswith(INPUT_EMBEDDING) else 1.0 / math.sqrt(shape[-1])
    if key.endswith(RESIDUAL_OUTPUT_SUFFIXES):
        return arch.init_method_std / math.sqrt(2.0 * arch.num_layers)
    return arch.init_method_std


@torch.no_grad()
def initialize_parameters(model_chunks: list[torch.nn.Module], seed: int, arch: SodaModelConfig) -> None:
    """Initialise every parameter of ``model_chunks`` (unwrapped megatron modules) in place with
    ``arch.init_method``."""
    for chunk in model_chunks:
        sharded = chunk.sharded_state_dict(metadata={"non_homogeneous_layers": True})
        for sh in parameter_shards(sharded):
            p = sh.prepend_axis_num
            scale = init_std(sh.key, tuple(sh.global_shape[p:]), arch)
            if scale is None:
                sh.data.fill_(0.0 if sh.key.endswith("bias") else 1.0)
                continue
            key = sh.key + "".join(f"[{o}]" for o in sh.global_offset[:p])
            gen = torch.Generator(device=sh.data.device).manual_seed(seed_for(seed, key))
            full = torch.empty(sh.global_shape[p:], dtype=torch.float32, device=sh.data.device)
            if arch.init_method == "levanter":
                torch.nn.init.trunc_normal_(full, 0.0, 1.0, -3.0, 3.0, generator=gen).mul_(scale)
            else:
                full.normal_(0.0, scale, generator=gen)
            copy_local_slice(sh, full)
