"""Residual-stream activations of concept sentences, with anchor labels.

Each sentence runs alone (as the authors do: ``get_features_mean_shift.py`` lines 38-74) as a
SODA text span ``<bos><text_start> sentence <text_end>`` (``fmt="soda"``, default) or as plain
``<bos> sentence`` (``fmt="plain"``, a text backbone's own format).  The residual stream of
layer ``l`` (0-based) is the output of decoder block ``l``, where the steering hooks add
(the authors take ``hidden_states[l + 1]``, skipping the embeddings, lines 77-82).  It is
captured by a forward hook on the block, not read from HF ``hidden_states``: transformers puts
the *final-normed* output in ``hidden_states[-1]``, so the last layer would come from another
space than the one steered.

Anchor positions: the tokens whose character span (the base tokenizer's offsets) overlaps a
whole-word occurrence of the anchor.  Counted tokens: the sentence's own tokens; BOS and the
two markers are excluded (the authors exclude BOS, lines 65-70; markers are ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_soda.steer.concepts import ConceptItem

FORMATS = ("soda", "plain")


@dataclass
class Encoded:
    ids: np.ndarray  # int64 [T], starting with <bos>
    counted: np.ndarray  # bool [T]: the sentence's own tokens
    anchor: np.ndarray  # bool [T]: anchor tokens (a subset of counted)


def encode_sentence(tok, item: ConceptItem, fmt: str = "soda") -> Encoded:
    if fmt not in FORMATS:
        raise ValueError(f"text format {fmt!r}: choose one of {FORMATS}")
    enc = tok.base.encode(item.sentence, add_special_tokens=False)
    spans = item.anchor_spans()
    hit = np.array([any(s < a_end and e > a_start for a_start, a_end in spans)
                    for s, e in enc.offsets], dtype=bool)
    text = np.asarray(enc.ids, dtype=np.int64)
    lay = tok.layout
    head = [lay.bos_id] + ([lay.text_start_id] if fmt == "soda" else [])
    tail = [lay.text_end_id] if fmt == "soda" else []
    ids = np.concatenate([np.asarray(head, np.int64), text, np.asarray(tail, np.int64)])
    counted = np.zeros(len(ids), dtype=bool)
    counted[len(head): len(head) + len(text)] = True
    anchor = np.zeros(len(ids), dtype=bool)
    anchor[len(head): len(head) + len(text)] = hit
    return Encoded(ids, counted, anchor)


@dataclass
class Activations:
    """Counted tokens of all sentences, concatenated in sentence order."""

    states: dict[int, torch.Tensor]  # layer -> float32 [N, hidden]
    anchor: torch.Tensor  # bool [N]
    sentence: torch.Tensor  # int64 [N]: index of the token's sentence
    median_norm: dict[int, float]  # every layer: median L2 norm of its counted tokens
    fmt: str
    n_sentences: int
    skipped: list[str] = field(default_factory=list)  # anchors that fell on no token


@torch.no_grad()
def layer_outputs(model: torch.nn.Module, ids: np.ndarray) -> list[torch.Tensor]:
    """The output of every decoder block (``model.model.layers``) for one sequence, each
    ``[T, hidden]``: the residual stream the steering hooks add to."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []

    def keep(module, args, output):
        out.append((output[0] if isinstance(output, tuple) else output)[0])

    handles = [block.register_forward_hook(keep) for block in model.model.layers]
    try:
        model.model(input_ids=torch.from_numpy(ids)[None].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


def collect(model: torch.nn.Module, tok, items: Sequence[ConceptItem], layers: Sequence[int] | None = None,
            fmt: str = "soda") -> Activations:
    """Activations of ``layers`` (default all) at the counted tokens of ``items``."""
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer}: the model has layers 0..{n_layers - 1}")
    per_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(n_layers)}
    anchors, sentences, skipped = [], [], []
    for k, item in enumerate(items):
        enc = encode_sentence(tok, item, fmt)
        if not enc.anchor.any():
            skipped.append(f"{item.where}: anchor {item.anchor!r} falls on no token")
            continue
        hs = layer_outputs(model, enc.ids)
        sel = torch.from_numpy(enc.counted).to(hs[0].device)
        for layer in range(n_layers):
            per_layer[layer].append(hs[layer][sel].float().cpu())
        anchors.append(torch.from_numpy(enc.anchor[enc.counted]))
        sentences.append(torch.full((int(enc.counted.sum()),), k, dtype=torch.long))
    if not anchors:
        raise ValueError("no usable sentence (every anchor missing)")
    full = {layer: torch.cat(v) for layer, v in per_layer.items()}
    median = {layer: float(v.norm(dim=-1).median()) for layer, v in full.items()}
    return Activations({layer: full[layer] for layer in layers}, torch.cat(anchors),
                       torch.cat(sentences), median, fmt, len(anchors), skipped)
