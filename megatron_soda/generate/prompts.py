"""Prompts as the authors build them, as token ids starting with ``<bos>``.

The authors write prompts as strings and tokenize them with the Hugging Face tokenizer, which
prepends ``<|begin_of_text|>`` (blueberry-eval ``asr_librispeech/inference_0shot.py`` line 144:
"by default, tokenizer prepends the <|begin_of_text|> token"), so every prompt here starts with
``tok.bos``:

* ASR (``asr_librispeech/inference_0shot.py`` line 178):
  ``<bos><audio_start>A<audio_end><text_start>``
* TTS with a voice prompt (``tts_seedttseval/inference_0shot.py`` lines 178-183):
  ``<bos><text_start>prompt_text<text_end><audio_start>prompt_audio<audio_end>
  <text_start>target_text<text_end><audio_start>``
* speech continuation: ``<bos><audio_start>A`` (the span left open);
* S2ST in the CVSS fine-tuning format (potsawee/tokenize-audio
  ``cvss-mimi/combine_cvss_mimi.py`` lines 68-71): the fine-tuning document's instruction
  (format/sft.py, default ``<bos><audio_start>src<audio_end>``) and the model writes
  ``<text_start><language>xx</language>`` source text ``<text_end>``,
  ``<text_start><language>en</language>`` target text ``<text_end><audio_start>`` target speech
  ``<audio_end>`` (the tags are plain text there, not special tokens).

Codes are ``[codebooks, frames]`` as :class:`megatron_soda.audio.codec.MimiCodec` encodes them.
"""

from __future__ import annotations

import numpy as np

from megatron_soda.format.sft import DEFAULT_PROMPT_END, language_tag, s2st_prompt_ids, text_span
from megatron_soda.tokenizer import SodaTokenizer

__all__ = ["asr_prompt", "continue_prompt", "language_tag", "s2st_prompt", "tts_prompt"]


def _ids(parts: list) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in parts])


def _audio(tok: SodaTokenizer, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f"audio codes must be [codebooks, frames>0], got shape {codes.shape}")
    return tok.encode_audio(codes)


def _text(tok: SodaTokenizer, text: str) -> list[int]:
    return tok.encode_text(text)


def asr_prompt(tok: SodaTokenizer, codes: np.ndarray) -> np.ndarray:
    """``<bos><audio_start>A<audio_end><text_start>``: the model writes the transcript."""
    lay = tok.layout
    return _ids([[lay.bos_id, lay.audio_start_id], _audio(tok, codes),
                 [lay.audio_end_id, lay.text_start_id]])


def tts_prompt(
    tok: SodaTokenizer,
    text: str,
    prompt_codes: np.ndarray | None = None,
    prompt_text: str | None = None,
) -> np.ndarray:
    """``<bos>[<text_start>prompt_text<text_end><audio_start>prompt_audio<audio_end>]
    <text_start>text<text_end><audio_start>``: the voice prompt is optional, but its audio
    and transcript go together."""
    lay = tok.layout
    if (prompt_codes is None) != (prompt_text is None):
        raise ValueError("a voice prompt needs both its audio and its transcript")
    parts: list = [[lay.bos_id]]
    if prompt_codes is not None:
        parts += [[lay.text_start_id], _text(tok, prompt_text or ""), [lay.text_end_id],
                  [lay.audio_start_id], _audio(tok, prompt_codes), [lay.audio_end_id]]
    parts += [[lay.text_start_id], _text(tok, text), [lay.text_end_id, lay.audio_start_id]]
    return _ids(parts)


def continue_prompt(tok: SodaTokenizer, codes: np.ndarray) -> np.ndarray:
    """``<bos><audio_start>A``: the audio span is left open and the model continues it."""
    lay = tok.layout
    return _ids([[lay.bos_id, lay.audio_start_id], _audio(tok, codes)])


def s2st_prompt(
    tok: SodaTokenizer,
    src_codes: np.ndarray,
    src_lang: str,
    src_text: str | None = None,
    tgt_lang: str = "en",
    tgt_text: str | None = None,
    prompt_end: str = DEFAULT_PROMPT_END,
) -> np.ndarray:
    """The instruction of the fine-tuning document (:func:`megatron_soda.format.sft.s2st_prompt_ids`:
    the document up to its loss start): ``<bos><audio_start>src<audio_end>`` by default, and the
    model writes ``<text_start><language>src_lang</language>`` transcript ``<text_end>``, the
    translation span and the target speech through its ``<audio_end>``; with
    ``prompt_end="source_text"`` the source text span (``src_text``) is part of the prompt.

    Forcing text instead (``src_text`` with the default prompt end, or ``tgt_text``): the prompt
    runs through the given spans (``...<text_start><language>src_lang</language>src_text
    <text_end><text_start><language>tgt_lang</language>`` [``tgt_text<text_end><audio_start>``])."""
    if tgt_text is None and (src_text is None or prompt_end == "source_text"):
        return s2st_prompt_ids(tok, src_codes, src_lang, src_text, prompt_end=prompt_end)
    lay = tok.layout
    if src_text is None:
        raise ValueError("a target text needs the source text before it")
    # tag and text tokenized as one string, as the authors' f-string is
    parts: list = [[lay.bos_id, lay.audio_start_id], _audio(tok, src_codes),
                   [lay.audio_end_id, lay.text_start_id], _text(tok, text_span(src_lang, src_text)),
                   [lay.text_end_id, lay.text_start_id], _text(tok, text_span(tgt_lang, tgt_text or ""))]
    if tgt_text is not None:
        parts += [[lay.text_end_id, lay.audio_start_id]]
    return _ids(parts)
