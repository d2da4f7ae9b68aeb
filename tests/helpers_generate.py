"""Shared pieces of the generation tests: an independent grammar checker and a model wrapper
that biases chosen logits (to force markers, silence or a repeating frame)."""

from __future__ import annotations

import numpy as np
import torch


def allowed_next(layout, prompt: np.ndarray, generated: list[int]) -> np.ndarray:
    """The legal next ids (sorted), from the span the checker below ends in."""
    n, size, a0 = layout.num_codebooks, layout.codebook_size, layout.audio_offset
    span, pos = _walk(layout, list(prompt) + list(generated))
    if span == "text":
        ids = [i for i in range(layout.base_vocab_size) if i not in (layout.bos_id, layout.eos_id)]
        return np.array(ids + [layout.text_end_id])
    if span == "audio":
        lo = a0 + (pos % n) * size
        ids = list(range(lo, lo + size)) + ([layout.audio_end_id] if pos and pos % n == 0 else [])
        return np.array(sorted(ids))
    return np.array(sorted([layout.text_start_id, layout.audio_start_id, layout.eos_id]))


def _walk(layout, ids):
    span, pos = None, 0
    for t in ids:
        if t == layout.text_start_id:
            span = "text"
        elif t == layout.audio_start_id:
            span, pos = "audio", 0
        elif t in (layout.text_end_id, layout.audio_end_id, layout.bos_id):
            span = "between"
        elif span == "audio":
            pos += 1
    return span, pos


def check_grammar(layout, prompt: np.ndarray, generated: np.ndarray) -> None:
    """Re-derives the span state from scratch (not through megatron_soda.generate.grammar) and
    asserts every generated id is legal."""
    n, size, a0 = layout.num_codebooks, layout.codebook_size, layout.audio_offset
    span, pos = _walk(layout, prompt.tolist())
    for i, t in enumerate(generated.tolist()):
        assert t != layout.bos_id, f"BOS generated at {i}"
        if span == "text":
            assert t < layout.base_vocab_size or t == layout.text_end_id, (i, t)
            assert t != layout.eos_id, (i, t)
            if t == layout.text_end_id:
                span = "between"
        elif span == "audio":
            if t == layout.audio_end_id:
                assert pos % n == 0 and pos > 0, f"<audio_end> mid-frame at {i} (pos {pos})"
                span = "between"
            else:
                assert a0 <= t < a0 + n * size, (i, t)
                assert (t - a0) // size == pos % n, f"codebook {(t - a0) // size} at audio pos {pos}"
                pos += 1
        else:
            assert t in (layout.text_start_id, layout.audio_start_id, layout.eos_id), (i, t)
            span = {layout.text_start_id: "text", layout.audio_start_id: "audio"}.get(t, "end")
            pos = 0


class Biased(torch.nn.Module):
    """Wraps a causal LM; ``bias(call, logits)`` may edit the last position's logits of forward
    call number ``call`` (0 = the prompt pass) in place."""

    def __init__(self, model, bias) -> None:
        super().__init__()
        self.inner, self.bias, self.calls = model, bias, 0

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep,
                past_key_values=None):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=use_cache,
                         logits_to_keep=logits_to_keep, cache=past_key_values)
        self.bias(self.calls, out.logits[:, -1, :])
        self.calls += 1
        return out
