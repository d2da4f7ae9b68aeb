"""Batched KV-cache decoding with ``transformers`` under the SODA grammar and stop rules.

Rows are left-padded to one length; the attention mask hides the padding and the position ids
count real tokens only (``cumsum(mask) - 1``), so a row's positions, and therefore its logits,
are those it gets alone (RoPE being relative, it is the mask that matters most) (tests/test_generate.py checks batched == unbatched greedy).  The
prompt runs once through ``model(input_ids, attention_mask, position_ids,
past_key_values=DynamicCache(), use_cache=True)`` (the keyword is ``cache`` in transformers
5.x); each step then feeds one id per row.  A row
that stops is dropped from the batch (``DynamicCache.batch_select_indices``).  Each row samples
from its own generator seeded by (seed, index of the prompt in the call), so a row's samples
do not depend on the batch it shares (:mod:`megatron_soda.generate.sampling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_soda.generate.grammar import Grammar
from megatron_soda.generate.sampling import choose, row_generator
from megatron_soda.generate.settings import SamplingSettings
from megatron_soda.generate.silence import SilenceCodes
from megatron_soda.generate.stops import RowTracker
from megatron_soda.tokenizer import SodaTokenizer

STOP_MARKERS = ("text_end", "audio_end", "eos")


@dataclass
class Generation:
    token_ids: np.ndarray  # int64, the generated ids only (everything, nothing trimmed)
    stop_reason: str  # end_marker | max_tokens | repetition | silence
    text: str  # the generated text spans, decoded, joined by "\n"
    audio_codes: np.ndarray | None  # [n_cb, frames]: whole generated frames, trimmed; None if none
    text_spans: list[str] = field(default_factory=list)
    trimmed_frames: int = 0  # frames cut from audio_codes by the silence/repetition rule
    prompt_length: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. what a backend could not enforce

    @property
    def audio_frames(self) -> int:
        return 0 if self.audio_codes is None else int(self.audio_codes.shape[1])

    @property
    def audio_seconds(self) -> float:
        from megatron_soda.format.layout import FRAME_RATE

        return self.audio_frames / FRAME_RATE


def stop_id_for(tok: SodaTokenizer, prompt: np.ndarray, stop_at: str | None) -> int:
    """The id that ends a row: ``stop_at`` by name, or by default the marker closing the span
    the prompt leaves open (``<text_end>`` / ``<audio_end>``), else ``<eos>``."""
    from megatron_soda.generate.grammar import AUDIO, TEXT, GrammarState

    lay = tok.layout
    if stop_at is None:
        span = GrammarState.from_prompt(lay, prompt).span
        stop_at = {TEXT: "text_end", AUDIO: "audio_end"}.get(span, "eos")
    if stop_at not in STOP_MARKERS:
        raise ValueError(f"stop_at {stop_at!r}: choose one of {STOP_MARKERS}")
    return {"text_end": lay.text_end_id, "audio_end": lay.audio_end_id, "eos": lay.eos_id}[stop_at]


def finish(tok: SodaTokenizer, tracker: RowTracker, prompt_length: int) -> Generation:
    spans = [tok.decode_text(s) for s in tracker.text_spans]
    return Generation(
        token_ids=np.asarray(tracker.generated, dtype=np.int64),
        stop_reason=tracker.stop_reason or "max_tokens",
        text="\n".join(spans),
        audio_codes=tracker.audio_codes(),
        text_spans=spans,
        trimmed_frames=tracker.trimmed_frames,
        prompt_length=prompt_length,
    )


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: SodaTokenizer,
    prompts: Sequence[np.ndarray],
    settings: SamplingSettings,
    silence: SilenceCodes | None = None,
    stop_at: str | None = None,
    batch_size: int | None = None,
    first_row: int = 0,
) -> list[Generation]:
    """Generate a continuation of each prompt (ids starting with ``<bos>``).

    ``batch_size``: rows per forward (default all); ``first_row``: index of ``prompts[0]`` in
    the caller's whole list (a sharded caller passes its offset so that each item keeps its
    seed stream).  ``silence``: the codec's silence codes (None switches the silence rule off).
    """
    out: list[Generation] = []
    step = batch_size or max(1, len(prompts))
    for start in range(0, len(prompts), step):
        chunk = [np.asarray(p, dtype=np.int64) for p in prompts[start : start + step]]
        rows = range(first_row + start, first_row + start + len(chunk))
        out += _generate_batch(model, tokenizer, chunk, settings, silence, stop_at, rows)
    return out


def max_positions(model: torch.nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def check_prompt_fits(model: torch.nn.Module, prompt: np.ndarray) -> None:
    """Raise ValueError when ``prompt`` leaves no position to generate into."""
    limit = max_positions(model)
    if limit is not None and len(prompt) >= limit:
        raise ValueError(f"a prompt of {len(prompt)} tokens leaves nothing to generate in the "
                         f"model's {limit} positions")


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x renames ``past_key_values`` to ``cache`` (the old name warns)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, ids, mask, positions, cache) -> torch.Tensor:
    """Logits ``[rows, vocab]`` of the last position, the cache extended in place."""
    kw = {_cache_kwarg(model): cache}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **kw)
    return out.logits[:, -1, :]


def _generate_batch(model, tok, prompts, settings, silence, stop_at, rows) -> list[Generation]:
    lay = tok.layout
    device = next(model.parameters()).device
    for p in prompts:
        check_prompt_fits(model, p)
    limit = max_positions(model) or 1 << 62  # a row stops (max_tokens) at the last position
    trackers = [RowTracker(lay, p, settings.with_overrides(
        max_new_tokens=min(settings.max_new_tokens, limit - len(p))),
        stop_id_for(tok, p, stop_at), silence) for p in prompts]
    generators = [row_generator(settings.seed, r) for r in rows]
    vocab = model.get_output_embeddings().weight.shape[0]
    grammar = Grammar(lay, vocab, device)

    from transformers import DynamicCache

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), lay.eos_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.from_numpy(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = _forward(model, ids, mask, positions, cache)
    next_pos = positions[:, -1:] + 1
    active = list(range(len(prompts)))  # batch row -> prompt index
    while True:
        allowed = grammar.masks([trackers[i].state for i in active])
        chosen = choose(logits, allowed, settings, [generators[i] for i in active])
        for i, tid in zip(active, chosen):
            trackers[i].push(tid)
        keep = [b for b, i in enumerate(active) if not trackers[i].done]
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_pos = mask[keep], next_pos[keep]
            chosen = [chosen[b] for b in keep]
            active = [active[b] for b in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
        step_ids = torch.tensor(chosen, dtype=torch.long, device=device)[:, None]
        logits = _forward(model, step_ids, mask, next_pos, cache)
        next_pos = next_pos + 1
    return [finish(tok, t, len(p)) for t, p in zip(trackers, prompts)]
