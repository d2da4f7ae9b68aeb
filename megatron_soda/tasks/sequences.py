"""The token sequences a model scores, and which of their tokens count: the authors' prompts.

Following the first author's harness (``potsawee/blueberry-eval``, ``sWUGGY/
inference_speech_0shot.py`` lines 89-96 and ``inference_text_0shot.py`` lines 74-81): the
tokenizer prepends ``<bos>``; an audio item is ``<bos><audio_start> A <audio_end>``, a text item
``<bos><text_start> T <text_end>``; the log-probabilities of the tokens after ``<bos>`` are taken
and the first and last are dropped, so the predictions of the two markers do not count and the
score is the mean natural-log probability of the content tokens.

``score_span="semantic"`` scores codebook 0 only, as Llama-Mimi scores sWUGGY/sBLIMP.  Audio is
frame-major (cb0, cb1, ..., cb{n-1} for each frame), so the semantic tokens are every
``num_codebooks``-th audio token starting at the first.  (The authors' option to score fewer
codebooks reshapes the frame-major row to ``[num_codebooks, frames]``, which mixes codebooks:
not followed.)

A :class:`Scored` sequence marks position ``t`` when ``log p(ids[t] | ids[:t])`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_soda.tokenizer import SodaTokenizer

SCORE_SPANS = ("all_audio", "semantic")


@dataclass(frozen=True)
class Scored:
    ids: np.ndarray  # int64 [T]
    scored: np.ndarray  # bool [T]; scored[0] is always False (nothing predicts the first token)

    def __post_init__(self) -> None:
        if self.ids.shape != self.scored.shape or self.ids.ndim != 1:
            raise ValueError("ids and scored must be 1-D of one length")
        if self.scored.size and self.scored[0]:
            raise ValueError("the first token cannot be scored")

    def __len__(self) -> int:
        return int(self.ids.size)


def audio_sequence(tok: SodaTokenizer, codes: np.ndarray, score_span: str = "all_audio") -> Scored:
    """``<bos><audio_start> A <audio_end>`` for codes ``[>= num_codebooks, frames]``."""
    if score_span not in SCORE_SPANS:
        raise ValueError(f"score span {score_span!r}: choose one of {SCORE_SPANS}")
    lay = tok.layout
    audio = lay.codes_to_ids(codes)
    ids = np.concatenate([[tok.bos, lay.audio_start_id], audio, [lay.audio_end_id]]).astype(np.int64)
    scored = np.zeros(ids.size, dtype=bool)
    content = scored[2 : 2 + audio.size]
    if score_span == "all_audio":
        content[:] = True
    else:
        content[:: lay.num_codebooks] = True  # cb0 of every frame (frame-major)
    return Scored(ids, scored)


def text_sequence(tok: SodaTokenizer, text: str) -> Scored:
    """``<bos><text_start> T <text_end>``, the text tokens scored."""
    lay = tok.layout
    body = tok.encode_text(text)
    ids = np.array([tok.bos, lay.text_start_id, *body, lay.text_end_id], dtype=np.int64)
    scored = np.zeros(ids.size, dtype=bool)
    scored[2 : 2 + len(body)] = True
    return Scored(ids, scored)


def continuation_sequence(tok: SodaTokenizer, context: str, ending: str) -> tuple[Scored, int]:
    """Plain text as SODA pretrains on it (``<bos> text``, no markers): ``context + " " + ending``
    with the ending's tokens scored, and the ending's length in characters (HellaSwag's
    ``acc_norm`` divides by it).  As lm-evaluation-harness does (``HFLM._encode_pair`` and
    ``ConfigurableTask.process_results``): the continuation is the target delimiter ``" "`` plus
    the choice, the whole string is tokenized and the context's own tokens are split off the
    front, and the normaliser is ``len(choice)`` without the delimiter."""
    ctx = tok.encode_text(context)
    whole = tok.encode_text(context + " " + ending)
    ids = np.array([tok.bos, *whole], dtype=np.int64)
    scored = np.zeros(ids.size, dtype=bool)
    scored[1 + len(ctx) :] = True
    if not scored.any():
        raise ValueError(f"ending {ending!r} adds no tokens to its context")
    return Scored(ids, scored), len(ending)
