"""One row's bookkeeping while it generates: grammar state, frames, and the stop rules.

Rules, checked after every token in this order (the first that holds is the stop reason):

1. ``end_marker``: the closing marker the mode waits for (``stop_id``), or ``<eos>``;
2. ``silence``: at a frame boundary, the last ``silence_frames`` generated frames of the
   current audio span are all silence frames (:class:`~megatron_soda.generate.silence.
   SilenceCodes.is_silent` on the first ``silence_codebooks`` codes);
3. ``repetition``: at a frame boundary, for some period ``p`` in ``1..repetition_ngram`` the
   last ``repetition_count * p`` generated frames of the span are ``repetition_count``
   copies of one ``p``-frame block (all codebooks equal), the block not being all silence;
4. ``max_tokens``: ``max_new_tokens`` ids have been generated.

Frames of the prompt never count: only generated frames can trigger 2 and 3 (a frame the
prompt leaves partial, e.g. a continuation cut mid-frame, is completed by generated ids and
counts as generated).
"""

from __future__ import annotations

import numpy as np

from megatron_soda.format.layout import TokenLayout
from megatron_soda.generate.grammar import AUDIO, TEXT, GrammarState
from megatron_soda.generate.settings import SamplingSettings
from megatron_soda.generate.silence import SilenceCodes


def repeated_period(frames: np.ndarray, max_period: int, copies: int) -> int:
    """The smallest period ``p <= max_period`` such that ``frames[-copies*p:]`` ([frames,
    n_cb]) is ``copies`` copies of its last ``p`` frames; 0 if none."""
    m = len(frames)
    for p in range(1, max_period + 1):
        if copies * p > m:
            break
        tail = frames[m - copies * p :]
        if (tail.reshape(copies, p, -1) == tail[-p:][None]).all():
            return p
    return 0


class RowTracker:
    """Feeds one row's generated ids through the grammar and the stop rules."""

    def __init__(
        self,
        layout: TokenLayout,
        prompt: np.ndarray,
        settings: SamplingSettings,
        stop_id: int,
        silence: SilenceCodes | None = None,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.stop_id = stop_id
        self.silence = silence
        self.state = GrammarState.from_prompt(layout, prompt)
        n = layout.num_codebooks
        # the open audio span's partial frame from the prompt, to complete it
        partial = self.state.pos % n if self.state.span == AUDIO else 0
        self._carry = list(np.asarray(prompt[len(prompt) - partial :], dtype=np.int64)) if partial else []
        self.generated: list[int] = []
        self.frames: list[np.ndarray] = []  # every whole generated frame (codes [n_cb])
        self.span_frames: list[np.ndarray] = []  # those of the current audio span
        self._frame: list[int] = list(self._carry)
        self.text_spans: list[list[int]] = [[]] if self.state.span == TEXT else []
        self.stop_reason: str | None = None
        self.trimmed_frames = 0

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def push(self, tid: int) -> str | None:
        """Record ``tid`` (it must be allowed); return the stop reason if the row stops now."""
        lay, s = self.layout, self.settings
        if not self.state.allows(lay, tid):
            raise ValueError(f"id {tid} is not allowed in state {self.state}")
        self.generated.append(tid)
        was_text = self.state.span == TEXT
        self.state.advance(lay, tid)
        if was_text and tid != lay.text_end_id:
            self.text_spans[-1].append(tid)
        if tid == lay.text_start_id:
            self.text_spans.append([])
        elif tid == lay.audio_start_id:
            self.span_frames, self._frame = [], []
        elif lay.audio_offset <= tid:
            self._frame.append(tid)
            if len(self._frame) == lay.num_codebooks:
                codes = lay.ids_to_codes(np.array(self._frame))[:, 0]
                self.frames.append(codes)
                self.span_frames.append(codes)
                self._frame = []
                self._check_frames()
        if tid == self.stop_id or tid == lay.eos_id:
            self.stop_reason = "end_marker"
        elif self.stop_reason is None and len(self.generated) >= s.max_new_tokens:
            self.stop_reason = "max_tokens"
        return self.stop_reason

    def _check_frames(self) -> None:
        s = self.settings
        span = self.span_frames
        if self.silence is not None and s.silence_frames and len(span) >= s.silence_frames:
            if all(self.silence.is_silent(f, s.silence_codebooks) for f in span[-s.silence_frames :]):
                self.stop_reason, self.trimmed_frames = "silence", s.silence_frames
                return
        if s.repetition_ngram:
            window = np.stack(span[-s.repetition_ngram * s.repetition_count :])
            p = repeated_period(window, s.repetition_ngram, s.repetition_count)
            if p and not (self.silence is not None and all(
                    self.silence.is_silent(f, s.silence_codebooks) for f in span[-p:])):
                self.stop_reason = "repetition"
                self.trimmed_frames = (s.repetition_count - 1) * p

    def audio_codes(self) -> np.ndarray | None:
        """Codes ``[n_cb, frames]`` of the whole generated frames, minus the trimmed ones."""
        if not self.frames:
            return None
        keep = len(self.frames) - self.trimmed_frames
        if keep <= 0:
            return np.zeros((self.layout.num_codebooks, 0), dtype=np.int64)
        return np.stack(self.frames[:keep], axis=1)
