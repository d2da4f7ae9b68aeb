"""Optional vLLM backend (``--backend vllm``, GPU only, ``pip install vllm``).

Same prompts, settings and output record as the transformers engine, with what vLLM allows:

* the grammar cannot be applied per step here (vLLM's V1 engine has no per-request logits
  processors), so each request gets a static ``allowed_token_ids`` set: for TTS/continue the
  audio ids and ``<audio_end>``, for ASR the text ids and ``<text_end>``, for S2ST everything
  but ``<bos>``.  Codebook order and frame-boundary ``<audio_end>`` are then *checked* after
  the fact: the output is replayed through the same grammar and stop rules
  (:class:`~megatron_soda.generate.stops.RowTracker`), cut at the first violation (recorded
  in ``Generation.notes``) or where a silence/repetition rule would have stopped;
* the stop marker and ``<eos>`` are ``stop_token_ids``; ``max_tokens`` is the cap;
* each request is seeded with the row's seed (:func:`row_seed`), but vLLM's sampler is not
  ours, so samples differ from the transformers engine's (greedy agrees up to kernels).

Only Hugging Face exports are accepted (vLLM loads the directory itself).  Not exercised by
the CPU tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_soda.generate.engine import Generation, finish, stop_id_for
from megatron_soda.generate.grammar import AUDIO, TEXT, GrammarState
from megatron_soda.generate.settings import SamplingSettings
from megatron_soda.generate.silence import SilenceCodes
from megatron_soda.generate.stops import RowTracker
from megatron_soda.tokenizer import SodaTokenizer


def load_tokenizer(path: str) -> SodaTokenizer:
    from megatron_soda.convert.hf_tokenizer import resolve_tokenizer

    resolved = resolve_tokenizer(path)
    if not resolved.soda_source:
        raise ValueError(f"{path}: a text model without SODA's audio tokens ({resolved.how})")
    return resolved.tokenizer


def row_seed(seed: int, row: int) -> int:
    state = np.random.SeedSequence([int(seed), int(row)]).generate_state(1, np.uint32)[0]
    return int(state)


def _allowed_ids(tok: SodaTokenizer, prompt: np.ndarray, stop_id: int) -> list[int] | None:
    """The static set: the open span's ids and its closing marker when the row stops there
    (ASR, TTS, continue), else None (everything; S2ST crosses spans)."""
    lay = tok.layout
    span = GrammarState.from_prompt(lay, prompt).span
    if span == TEXT and stop_id == lay.text_end_id:
        ids = [i for i in range(lay.base_vocab_size) if i not in (lay.bos_id, lay.eos_id)]
        return ids + [lay.text_end_id]
    if span == AUDIO and stop_id == lay.audio_end_id:
        return list(range(lay.audio_offset, lay.vocab_size)) + [lay.audio_end_id]
    return None


def generate_vllm(
    model_dir: str,
    tok: SodaTokenizer,
    prompts: Sequence[np.ndarray],
    settings: SamplingSettings,
    silence: SilenceCodes | None = None,
    stop_at: str | None = None,
    first_row: int = 0,
    llm=None,
) -> list[Generation]:
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise ImportError("--backend vllm needs vLLM on a GPU machine: pip install vllm") from e
    if llm is None:
        llm = LLM(model=model_dir, skip_tokenizer_init=True)
    lay = tok.layout
    requests, params = [], []
    for r, p in enumerate(prompts):
        stop_id = stop_id_for(tok, p, stop_at)
        params.append(SamplingParams(
            temperature=settings.temperature, top_p=settings.top_p,
            top_k=settings.top_k if settings.top_k > 0 else -1,
            max_tokens=settings.max_new_tokens, seed=row_seed(settings.seed, first_row + r),
            stop_token_ids=[stop_id, lay.eos_id], allowed_token_ids=_allowed_ids(tok, p, stop_id),
            detokenize=False))
        requests.append({"prompt_token_ids": [int(i) for i in p]})
    outputs = llm.generate(requests, params)
    results = []
    for p, out in zip(prompts, outputs):
        tracker = RowTracker(lay, p, settings, stop_id_for(tok, p, stop_at), silence)
        notes = []
        for i, tid in enumerate(out.outputs[0].token_ids):
            if not tracker.state.allows(lay, int(tid)):
                notes.append(f"vllm: id {int(tid)} at generated position {i} breaks the "
                             "grammar; output cut there")
                tracker.stop_reason = tracker.stop_reason or "max_tokens"
                break
            if tracker.push(int(tid)):
                break
        gen = finish(tok, tracker, len(p))
        gen.notes = notes
        results.append(gen)
    return results
