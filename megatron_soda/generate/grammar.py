"""The SODA grammar as a logits mask applied at every step.

A row is in one of three places, derived from the prompt (its last structural token) and then
advanced token by token:

* ``text`` (after ``<text_start>``): text ids of the base vocabulary (never BOS/EOS) and
  ``<text_end>``; no audio ids, no other marker.
* ``audio`` (after ``<audio_start>``), ``pos`` audio tokens into the span: only codebook
  ``pos % n`` (ids ``audio_offset + cb*2048 ...``), since documents are frame-major cb0, cb1,
  ... cb{n-1}; ``<audio_end>`` only at a frame boundary and after at least one frame.
* ``between`` (after ``<text_end>``, ``<audio_end>`` or ``<bos>``): a span opener
  (``<text_start>``, ``<audio_start>``) or ``<eos>``.

``<bos>`` is never generated; ids past the tokenizer's vocabulary (a padded embedding) never
either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_soda.format.layout import TokenLayout

TEXT, AUDIO, BETWEEN = "text", "audio", "between"


class GrammarError(ValueError):
    """A prompt the grammar cannot continue (e.g. a malformed audio span)."""


@dataclass
class GrammarState:
    span: str  # TEXT | AUDIO | BETWEEN
    pos: int = 0  # audio tokens so far in the current audio span (prompt part included)

    @classmethod
    def from_prompt(cls, layout: TokenLayout, ids: np.ndarray) -> GrammarState:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            raise GrammarError("empty prompt")
        structural = np.flatnonzero(
            (ids >= layout.marker_offset) & (ids < layout.audio_offset)
            | (ids == layout.bos_id) | (ids == layout.eos_id)
        )
        if structural.size == 0:
            raise GrammarError("the prompt has no <bos> or span marker to start from")
        last = int(structural[-1])
        tid = int(ids[last])
        tail = ids[last + 1 :]
        if tid == layout.text_start_id:
            if (tail >= layout.audio_offset).any():
                raise GrammarError("audio ids inside the prompt's open text span")
            return cls(TEXT)
        if tid == layout.audio_start_id:
            state = cls(AUDIO)
            for t in tail:
                if not state.allows(layout, int(t)):
                    raise GrammarError(
                        f"the prompt's open audio span is not frame-major cb0..cb"
                        f"{layout.num_codebooks - 1} (id {int(t)} at audio position {state.pos})"
                    )
                state.advance(layout, int(t))
            return state
        if tid == layout.eos_id:
            raise GrammarError("the prompt ends a document (<eos>): nothing to continue")
        if tail.size:
            raise GrammarError("text or audio ids outside a span at the end of the prompt")
        return cls(BETWEEN)

    def frame_boundary(self, layout: TokenLayout) -> bool:
        return self.span == AUDIO and self.pos % layout.num_codebooks == 0 and self.pos > 0

    def allows(self, layout: TokenLayout, tid: int) -> bool:
        """Whether ``tid`` may come next (the scalar twin of :meth:`Grammar.masks`)."""
        if self.span == TEXT:
            return (0 <= tid < layout.base_vocab_size and tid not in (layout.bos_id, layout.eos_id)) \
                or tid == layout.text_end_id
        if self.span == AUDIO:
            if tid == layout.audio_end_id:
                return self.frame_boundary(layout)
            cb = self.pos % layout.num_codebooks
            lo = layout.audio_offset + cb * layout.codebook_size
            return lo <= tid < lo + layout.codebook_size
        return tid in (layout.text_start_id, layout.audio_start_id, layout.eos_id)

    def advance(self, layout: TokenLayout, tid: int) -> None:
        if tid == layout.text_start_id:
            self.span, self.pos = TEXT, 0
        elif tid == layout.audio_start_id:
            self.span, self.pos = AUDIO, 0
        elif tid in (layout.text_end_id, layout.audio_end_id):
            self.span, self.pos = BETWEEN, 0
        elif self.span == AUDIO:
            self.pos += 1


class Grammar:
    """Precomputed masks on the model's device; :meth:`masks` builds a ``[rows, vocab]`` bool
    mask (True = may be sampled) for the rows' states."""

    def __init__(self, layout: TokenLayout, vocab_size: int, device: torch.device | str) -> None:
        if vocab_size < layout.vocab_size:
            raise ValueError(f"model vocabulary {vocab_size} < tokenizer's {layout.vocab_size}")
        self.layout = layout
        n, size = layout.num_codebooks, layout.codebook_size
        table = torch.zeros(2 + n, vocab_size, dtype=torch.bool)
        table[0, : layout.base_vocab_size] = True  # text
        table[0, [layout.bos_id, layout.eos_id]] = False
        table[0, layout.text_end_id] = True
        table[1, [layout.text_start_id, layout.audio_start_id, layout.eos_id]] = True  # between
        for cb in range(n):
            lo = layout.audio_offset + cb * size
            table[2 + cb, lo : lo + size] = True
        self.table = table.to(device)
        self.device = torch.device(device)

    def row_index(self, state: GrammarState) -> int:
        if state.span == TEXT:
            return 0
        if state.span == BETWEEN:
            return 1
        return 2 + state.pos % self.layout.num_codebooks

    def masks(self, states: list[GrammarState]) -> torch.Tensor:
        index = torch.tensor([self.row_index(s) for s in states], device=self.device)
        mask = self.table.index_select(0, index)
        end_ok = torch.tensor([s.frame_boundary(self.layout) for s in states], device=self.device)
        mask[:, self.layout.audio_end_id] = end_ok
        return mask
