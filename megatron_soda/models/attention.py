"""Core attention from PyTorch's own kernels, for megatron-core's local layer spec (no Transformer
Engine): :class:`TorchCoreAttention` is a drop-in ``core_attention`` with the interface of
megatron-core 0.16.1's ``DotProductAttention`` (megatron/core/transformer/dot_product_attention.py:
constructor at lines 42-51, ``forward`` at 142-151) and, like it, no parameters, so checkpoints are
interchangeable with the ``local`` backend.

Two kernels, chosen by what the batch carries in ``attention_mask``:

* ``None``: causal attention only -> ``torch.nn.functional.scaled_dot_product_attention`` with
  ``is_causal`` (flash / memory-efficient kernels on GPU; GQA through ``enable_gqa``);
* an integer ``[b, s]`` tensor of per-token document ids (``training/data.py`` ``document_ids``):
  causal attention within each document -> FlexAttention with a ``BlockMask`` (causal AND same
  document), which skips the blocks that cross documents instead of computing and masking them;
* a boolean ``[b|1, 1, sq, sk]`` mask (megatron's convention, True = masked: what the ``local``
  batches and the task evaluator pass) -> SDPA with that mask, so any caller of the local spec
  still gets correct attention.

Why document ids in ``attention_mask`` (and not a BlockMask or a new argument): megatron passes
``attention_mask`` untouched from ``GPTModel.forward`` through ``TransformerBlock`` (also into
``tensor_parallel.checkpoint`` under full recompute), ``TransformerLayer`` and ``SelfAttention``
(also through the selective ``core_attn`` recompute) to ``core_attention``.  Those checkpoints save
their arguments with ``save_for_backward``, which takes tensors only, so a ``BlockMask`` object
cannot travel there; a ``[b, s]`` int tensor can, costs ``4 b s`` bytes instead of the ``b s^2``
of a dense mask, and needs no change to megatron.  The ``BlockMask`` is built from it once per
micro-batch (:func:`document_block_mask`, cached on the ids tensor's storage) and reused by every
layer and by the recomputation.

Under context parallelism (``config.context_parallel_size > 1``, flex only) K and V are
all-gathered over the CP group and the mask is over global positions: the ids then stay global
``[b, S]`` while the queries are this rank's ``S / CP`` (:mod:`megatron_soda.models.context_parallel`,
docs/context_parallel.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

BLOCK_SIZE = 128  # FlexAttention's default block (rows x columns of one mask block)


def flex_available() -> bool:
    """Whether this torch has FlexAttention (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_MASKS: OrderedDict[tuple, tuple[torch.Tensor, Any]] = OrderedDict()
_MASK_CACHE_SIZE = 8  # micro-batches in flight (pipeline schedules keep several)


def _cache_key(doc: torch.Tensor) -> tuple:
    return (doc.device, doc.untyped_storage().data_ptr(), doc.storage_offset(), tuple(doc.shape),
            doc.stride(), doc._version)


def document_block_mask(doc: torch.Tensor) -> Any:
    """The FlexAttention ``BlockMask`` "causal and same document" for document ids ``doc`` [b, s].

    Cached: the first layer of a micro-batch builds it, the others (and the recomputation, which
    sees a detached alias of the same storage) reuse it.  The cache holds the ids tensor itself, so
    its storage cannot be freed and reused by another micro-batch while the entry lives, and the
    key includes the tensor's version counter, so an in-place change is a miss."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = _cache_key(doc)
    hit = _MASKS.get(key)
    if hit is not None:
        _MASKS.move_to_end(key)
        return hit[1]
    ids = doc.detach()

    def same_document_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (q >= kv) & (ids[b, q] == ids[b, kv])

    b, s = ids.shape
    mask = create_block_mask(same_document_causal, b, None, s, s, device=ids.device, BLOCK_SIZE=BLOCK_SIZE)
    _MASKS[key] = (ids, mask)
    while len(_MASKS) > _MASK_CACHE_SIZE:
        _MASKS.popitem(last=False)
    return mask


_COMPILED_FLEX: Any = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any, scale: float) -> torch.Tensor:
    """FlexAttention on [b, h, s, d] tensors.  GPU: the compiled (fused, block-sparse) kernel.
    CPU: torch 2.13's ``flex_attention`` refuses backward on CPU (``_validate_device``, "FlexAttention
    does not support backward on CPU"), so with gradients the flex_attention higher-order op is
    called directly: its eager implementation is the dense reference (same BlockMask, the
    ``mask_mod`` applied to the full score matrix), differentiable and exact, not fast.  That is
    the path CPU tests and CPU runs take; without gradients the public eager API is used."""
    from torch.nn.attention.flex_attention import flex_attention

    gqa = q.size(1) != k.size(1)
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        from torch._higher_order_ops.flex_attention import flex_attention as flex_hop
        from torch.nn.attention.flex_attention import _apply_kernel_options, _identity

        options = _apply_kernel_options(q, k, v, False, None, None)
        out, _, _ = flex_hop(q, k, v, _identity, block_mask.as_tuple(), scale, options)
        return out
    if q.device.type == "cpu":
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


class TorchCoreAttention(MegatronModule):
    """megatron-core ``core_attention`` on PyTorch's SDPA / FlexAttention (see the module doc).

    Query [sq, b, np, hn], key/value [sk, b, ng, hn] (np/ng heads of this tensor-parallel rank,
    GQA when ng < np); output [sq, b, np * hn], as ``DotProductAttention``.  The softmax scale is
    megatron's: ``softmax_scale`` (``config.softmax_scale``, passed by ``SelfAttention``) or
    ``1/sqrt(kv_channels)``; ``apply_query_key_layer_scaling`` divides and multiplies back by the
    same factor there (dot_product_attention.py:88-107), so it does not change the scale here."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.softmax_type != "vanilla":
            raise ValueError(f"TorchCoreAttention: softmax_type {config.softmax_type} is not supported")
        if config.window_size is not None:
            raise ValueError("TorchCoreAttention: sliding-window attention is not supported")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError("TorchCoreAttention: attention dropout is not supported (SODA trains without)")
        if pg_collection is None:
            required = ["tp", "cp"] if config.context_parallel_size > 1 else ["tp"]
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=required)
        self.pg_collection = pg_collection
        # context parallelism (models/context_parallel.py): K/V all-gathered, FlexAttention
        self.cp_group = pg_collection.cp if config.context_parallel_size > 1 else None
        world = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, world)
        self.num_query_groups_per_partition = divide(config.num_query_groups, world)
        self.hidden_size_per_partition = divide(config.kv_channels * config.num_attention_heads, world)
        self.softmax_scale = 1.0 / math.sqrt(config.kv_channels) if softmax_scale is None else softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError("TorchCoreAttention: packed (THD) sequences are Transformer Engine's path")
        if attention_bias is not None:
            raise ValueError("TorchCoreAttention: attention_bias is not supported")
        sq, b = query.shape[:2]
        if self.cp_group is not None:
            if (self.attn_mask_type if attn_mask_type is None else attn_mask_type) != AttnMaskType.causal:
                raise ValueError("TorchCoreAttention: context parallelism is built for causal attention only")
            return self._context_parallel(query, key, value, attention_mask)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        gqa = q.size(1) != k.size(1)
        if attention_mask is None:
            mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
            causal = mask_type == AttnMaskType.causal
            if causal and sq != key.size(0):
                raise ValueError("TorchCoreAttention: causal attention without a mask needs sq == sk")
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.softmax_scale,
                                                 enable_gqa=gqa)
        elif attention_mask.dtype == torch.bool:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask, scale=self.softmax_scale,
                                                 enable_gqa=gqa)
        else:
            if attention_mask.shape != (b, sq) or sq != key.size(0):
                raise ValueError(f"TorchCoreAttention: document ids must be [b, s] = {(b, sq)}, got "
                                 f"{tuple(attention_mask.shape)}")
            out = _flex(q, k, v, document_block_mask(attention_mask), self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)

    def _context_parallel(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None) -> torch.Tensor:
        """This rank's queries (its 2 load-balanced chunks) against K/V all-gathered over the CP
        group, with the mask over global positions (and global document ids, ``[b, S]``)."""
        from megatron_soda.models import context_parallel as cp

        if attention_mask is not None and attention_mask.dtype == torch.bool:
            raise ValueError("TorchCoreAttention: context parallelism takes document ids or no mask, not a "
                             "dense boolean mask (--attention-backend flex)")
        sq, b = query.shape[:2]
        rank, size = self.cp_group.rank(), self.cp_group.size()
        key, value = cp.gather_sequence(key, self.cp_group), cp.gather_sequence(value, self.cp_group)
        mask = cp.cp_block_mask(attention_mask, b, sq, rank, size, query.device)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        out = _flex(q, k, v, mask, self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
