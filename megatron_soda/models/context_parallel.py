"""Context parallelism (CP) for the local spec without Transformer Engine: FlexAttention over K and V
all-gathered across the CP group (docs/context_parallel.md).

The split is megatron-core's: the sequence of ``S`` tokens is cut into ``2 x CP`` chunks and CP rank
``r`` keeps chunks ``r`` and ``2 CP - 1 - r`` (load balance under the causal mask), as
``megatron.core.utils.get_batch_on_this_cp_rank`` (megatron/core/utils.py:1994-2038) does for
batches and ``get_pos_emb_on_this_cp_rank`` (models/common/embeddings/rope_utils.py:48-70) for the
rotary table.  megatron's ``GPTModel`` already gives each rank the rotary angles of its global
positions (``RotaryEmbedding.get_rotary_seq_len`` multiplies the local length by CP, then selects
the same two chunks), so only the batch split and the attention are ours:

* :func:`split_for_rank` cuts a ``[b, S]`` batch tensor down to this rank's ``[b, S / CP]``;
* :func:`gather_sequence` all-gathers K or V (``[s, b, heads, d]``, sequence first) over the CP
  group: megatron's ``gather_from_sequence_parallel_region`` (tensor_parallel/mappings.py:499-510),
  all-gather forward and reduce-scatter (sum) of dK/dV backward, since every rank's queries
  contribute to the gradient of every rank's keys;
* :func:`cp_block_mask` is the ``BlockMask`` for this rank's queries against the gathered keys,
  kept in *gathered* (rank-major) order: no reorder copy, a lookup of global positions instead.
  Each chunk is contiguous in global positions, so when ``S / (2 CP)`` is a multiple of the flex
  block (128) the mask is exactly as sparse as the global one restricted to this rank's rows.

The document ids travel whole (``[b, S]``, global) in ``attention_mask``, the per-token ids of every
rank: 4 bytes a token, no collective, and the mask needs the ids of the gathered keys anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

BLOCK_SIZE = 128  # FlexAttention's block, as models/attention.py
_MASKS: OrderedDict[tuple, tuple[torch.Tensor | None, Any]] = OrderedDict()
_MASK_CACHE_SIZE = 8


def chunk_positions(seq_len: int, cp_rank: int, cp_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Global positions of CP rank ``cp_rank``'s ``seq_len / cp_size`` tokens, in its local order:
    chunk ``cp_rank`` then chunk ``2 cp_size - 1 - cp_rank`` of ``2 cp_size`` equal chunks."""
    if seq_len % (2 * cp_size):
        raise ValueError(f"context parallelism {cp_size}: the sequence length {seq_len} is not a multiple of "
                         f"2 x {cp_size} = {2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first, second = cp_rank * chunk, (2 * cp_size - 1 - cp_rank) * chunk
    return torch.cat([torch.arange(first, first + chunk, device=device),
                      torch.arange(second, second + chunk, device=device)])


def gathered_positions(seq_len: int, cp_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Global position of each row of a sequence all-gathered over the CP group (rank-major)."""
    return torch.cat([chunk_positions(seq_len, r, cp_size, device) for r in range(cp_size)])


def split_for_rank(t: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1) -> torch.Tensor:
    """This rank's part of ``t`` along ``dim`` (the sequence), in local order."""
    if cp_size == 1:
        return t
    return t.index_select(dim, chunk_positions(t.size(dim), cp_rank, cp_size, t.device))


def cp_layout() -> tuple[int, int]:
    """(rank, size) of this process in megatron's context-parallel group; (0, 1) without one."""
    from megatron.core import parallel_state

    if not torch.distributed.is_initialized():
        return 0, 1
    group = parallel_state.get_context_parallel_group(check_initialized=False)
    if group is None:
        return 0, 1
    return group.rank(), group.size()


def gather_sequence(t: torch.Tensor, group: Any) -> torch.Tensor:
    """All-gather ``t`` [s, ...] along the first dimension over ``group`` (rank-major); backward
    reduce-scatters (sums) the gradient back to each rank's rows."""
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

    return gather_from_sequence_parallel_region(t, tensor_parallel_output_grad=True, group=group)


def _key(doc: torch.Tensor | None, b: int, sq: int, cp_rank: int, cp_size: int, device: torch.device) -> tuple:
    ident = None if doc is None else (doc.untyped_storage().data_ptr(), doc.storage_offset(), tuple(doc.shape),
                                      doc.stride(), doc._version)
    return (device, ident, b, sq, cp_rank, cp_size)


def cp_mask_mod(doc: torch.Tensor | None, b: int, sq: int, cp_rank: int, cp_size: int, device: torch.device):
    """The ``mask_mod`` "causal (and same document)" for this rank's ``sq`` queries (local order)
    against the ``sq x cp_size`` gathered keys (rank-major order), over global positions.
    ``doc``: global document ids ``[b, sq x cp_size]``, or None for causal attention only."""
    seq = sq * cp_size
    q_pos = chunk_positions(seq, cp_rank, cp_size, device)
    kv_pos = gathered_positions(seq, cp_size, device)
    if doc is None:
        def causal(b_: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return q_pos[q] >= kv_pos[kv]

        return causal
    if tuple(doc.shape) != (b, seq):
        raise ValueError(f"context parallelism: document ids must be the global [b, S] = {(b, seq)}, "
                         f"got {tuple(doc.shape)}")
    ids = doc.detach()
    q_doc, kv_doc = ids[:, q_pos], ids[:, kv_pos]

    def same_document_causal(b_: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (q_pos[q] >= kv_pos[kv]) & (q_doc[b_, q] == kv_doc[b_, kv])

    return same_document_causal


def cp_block_mask(doc: torch.Tensor | None, b: int, sq: int, cp_rank: int, cp_size: int,
                  device: torch.device) -> Any:
    """The ``BlockMask`` of :func:`cp_mask_mod` (``sq`` x ``sq cp_size``), built once per micro-batch
    and reused by every layer and the recomputation (cached as models/attention.py
    ``document_block_mask``: the entry holds the ids tensor, the key its version)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = _key(doc, b, sq, cp_rank, cp_size, device)
    hit = _MASKS.get(key)
    if hit is not None:
        _MASKS.move_to_end(key)
        return hit[1]
    mask_mod = cp_mask_mod(doc, b, sq, cp_rank, cp_size, device)
    mask = create_block_mask(mask_mod, b if doc is not None else None, None, sq, sq * cp_size, device=device,
                             BLOCK_SIZE=BLOCK_SIZE)
    _MASKS[key] = (None if doc is None else doc.detach(), mask)
    while len(_MASKS) > _MASK_CACHE_SIZE:
        _MASKS.popitem(last=False)
    return mask
