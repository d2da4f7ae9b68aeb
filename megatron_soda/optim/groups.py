"""Which elements of a megatron-core GPT share one cautious-mask statistic, so that the
statistic is the one SODA's Levanter run computed.

Levanter takes ``mask.mean()`` per leaf array of the parameter tree (marin
``lib/levanter/src/levanter/optim/cautious.py`` at cd838d5b, L121-126).  In SODA's Qwen3 models
those leaves are:

* per projection *type*, all layers together: ``LlamaConfig.scan_layers`` defaults to True
  (marin ``lib/levanter/src/levanter/models/llama.py`` at 0cf7458f), so the decoder is a haliax
  ``Stacked`` module whose arrays carry a leading layer axis (``QwenTransformer.init`` in
  ``models/qwen.py``: ``Stacked`` unless ``scan_layers`` is off; SODA's configs set a
  ``ScanCheckpointPolicy``, i.e. scanned layers);
* q, k and v separately (``Attention`` has ``q_proj``/``k_proj``/``v_proj``/``o_proj``, marin
  ``lib/levanter/src/levanter/layers/attention.py`` at 0009e749) and gate and up separately
  (``LlamaMlp.gate_proj``/``up_proj``/``down_proj``);
* one array each for the input embedding, the untied head and the final norm; the per-layer
  norms (input, post-attention, q-norm, k-norm) stacked like the projections;
* global arrays: a sharded JAX array's ``mean()`` is over the whole logical array.

megatron-core fuses q/k/v into ``linear_qkv`` and gate/up into ``linear_fc1``, keeps one tensor
per layer and splits tensors over tensor-parallel ranks: :func:`param_runs` cuts a local tensor
into runs of those groups (named by :func:`group_name`); the caller sums the counts over layers,
ranks and shards.  The padded vocabulary rows of the embedding and head (never used, never given
a gradient; Levanter's arrays have the tokenizer's rows) are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LAYER = re.compile(r"\.layers\.\d+\.")


@dataclass(frozen=True)
class GPTLayout:
    """What the fused layouts need, for one tensor-parallel rank."""

    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    gated_linear_unit: bool
    vocab_size: int  # the tokenizer's (unpadded) rows
    tensor_parallel_size: int = 1
    tensor_parallel_rank: int = 0


def group_name(param_name: str) -> str:
    """``module.module.decoder.layers.3.mlp.linear_fc2.weight`` -> ``decoder.layers.*.mlp.linear_fc2.weight``:
    wrapper prefixes dropped, the layer index (local to a pipeline stage) replaced by ``*``."""
    while param_name.startswith("module."):
        param_name = param_name[len("module."):]
    return _LAYER.sub(".layers.*.", param_name)


def param_runs(param_name: str, shape: tuple[int, ...], layout: GPTLayout) -> list[tuple[int, int, str | None]]:
    """``(start, end, group)`` runs over the flattened local tensor ``param_name`` of ``shape``
    (this rank's tensor-parallel part); group None: left out of the statistic."""
    name = group_name(param_name)
    numel = 1
    for n in shape:
        numel *= n
    if len(shape) != 2:
        return [(0, numel, name)]
    rows, width = shape
    tp, rank = layout.tensor_parallel_size, layout.tensor_parallel_rank
    if name.endswith("self_attention.linear_qkv.weight"):
        # Rows: per KV group its heads/groups query heads, then one key head, then one value head
        # (megatron-core's SelfAttention.get_query_key_value_tensors); rank r holds global rows
        # [r * rows, (r + 1) * rows) (column parallel; also when there are fewer groups than ranks).
        q_rows = layout.num_attention_heads // layout.num_query_groups * layout.head_dim
        per_group = q_rows + 2 * layout.head_dim
        if rows * tp != layout.num_query_groups * per_group:
            raise ValueError(f"{param_name}: {rows} rows x {tp} ranks do not match {layout}")
        first, runs = rank * rows, []
        for g in range(layout.num_query_groups):
            base = g * per_group
            for part, lo, hi in (("q", 0, q_rows), ("k", q_rows, q_rows + layout.head_dim),
                                 ("v", q_rows + layout.head_dim, per_group)):
                lo, hi = max(base + lo, first), min(base + hi, first + rows)
                if hi > lo:
                    runs.append(((lo - first) * width, (hi - first) * width, f"{name}:{part}"))
        return runs
    if name.endswith("mlp.linear_fc1.weight") and layout.gated_linear_unit:
        # [gate; up] on every tensor-parallel rank (megatron-core's MLP: chunk(2) of the local output)
        half = rows // 2 * width
        return [(0, half, f"{name}:gate"), (half, 2 * half, f"{name}:up")]
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        # vocabulary-parallel: rank r holds rows [r * rows, (r + 1) * rows) of the padded vocabulary
        used = min(max(layout.vocab_size - rank * rows, 0), rows)
        return [(0, used * width, name), (used * width, numel, None)]
    return [(0, numel, name)]


def clip_runs(runs: list[tuple[int, int, str | None]], start: int, end: int) -> list[tuple[int, int, str | None]]:
    """The runs of the elements ``[start, end)`` of a tensor (a distributed-optimizer shard),
    relative to ``start``."""
    out = []
    for lo, hi, group in runs:
        lo, hi = max(lo, start), min(hi, end)
        if hi > lo:
            out.append((lo - start, hi - start, group))
    return out
