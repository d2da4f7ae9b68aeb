"""Token kinds: what each id of the unified vocabulary is, for statistics and per-kind losses.

The rules are written once (:func:`_kind_rules`) as comparisons that numpy arrays and torch
tensors both understand; :func:`token_kinds` (numpy, preprocessing and rendering) and
:func:`token_kinds_torch` (the training loss, on the ids' device) only apply them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from megatron_soda.format.layout import TokenLayout

KIND_TEXT = 0
KIND_SEMANTIC = 1  # codebook 0
KIND_ACOUSTIC = 2  # codebooks 1..n-1
KIND_MARKER = 3  # the four markers plus BOS/EOS
KIND_NAMES = ("text", "semantic", "acoustic", "markers")


def _kind_rules(ids, layout: TokenLayout) -> list[tuple[int, object]]:
    """(kind, mask) pairs, applied in order over KIND_TEXT (a later rule wins): BOS/EOS count
    as markers even when the base vocabulary holds them."""
    a0 = layout.audio_offset
    return [
        (KIND_SEMANTIC, (ids >= a0) & (ids < a0 + layout.codebook_size)),
        (KIND_ACOUSTIC, ids >= a0 + layout.codebook_size),
        (KIND_MARKER, (ids >= layout.base_vocab_size) & (ids < a0)),
        (KIND_MARKER, (ids == layout.bos_id) | (ids == layout.eos_id)),
    ]


def token_kinds(ids: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Kind of each id (uint8, the shape of ``ids``)."""
    ids = np.asarray(ids)
    kinds = np.full(ids.shape, KIND_TEXT, dtype=np.uint8)
    for kind, mask in _kind_rules(ids, layout):
        kinds[mask] = kind
    return kinds


def token_kinds_torch(ids: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """:func:`token_kinds` of a tensor, computed on its device (uint8)."""
    import torch

    kinds = torch.full_like(ids, KIND_TEXT, dtype=torch.uint8)
    for kind, mask in _kind_rules(ids, layout):
        kinds[mask] = kind
    return kinds


def count_kinds(ids: np.ndarray, layout: TokenLayout) -> dict[str, int]:
    """Number of ids of each kind, by name."""
    counts = np.bincount(token_kinds(ids, layout).ravel(), minlength=len(KIND_NAMES))
    return {name: int(c) for name, c in zip(KIND_NAMES, counts)}
