"""The authors' "Qwen3x" base tokenizer for warm starts from Qwen2/Qwen3 text models.

SODA's warm-start runs (marin ``experiments/audio/exp1699_marin_audio_ws.py``) trained on data
tokenized with ``potsawee/qwen3x-mimi-bpe-8cb-16k-tokenizer`` (marin
``experiments/audio/tokenize_qwen3x_audio.py:27``), built in two steps (potsawee/tokenize-audio
``codec-bpe/train_bpe_recipe.txt:76-86``, ``codec-bpe/qwen3x.ipynb``):

1. "Qwen3x" = the Qwen3 tokenizer with ``<|endoftext|>`` (id 151643) renamed ``<|end_of_text|>``
   (same id: Marin/Llama-3's EOS spelling) and a BOS ``<|begin_of_text|>`` added
   (``qwen3x.ipynb`` lines 51-135 and 155).  The notebook prints BOS id **151670**, not 151669
   (line 149): reloading the edited files re-adds the old name ``<|endoftext|>`` (still listed
   in ``tokenizer_config.json``) as a new token at 151669 before the BOS is added.
2. The 4 SODA markers, then the 16,384 audio characters ``chr(0xE000 + cb*2048 + code)``, are
   added after it (``train_bpe_recipe.txt:78-82``; codec-bpe's ``extend_existing_tokenizer``
   adds the ``--additional_special_tokens`` first, then the codec tokens in id order).

Hence, for Qwen3 (151,643 BPE tokens + 26 specials = 151,669 ids): EOS 151643, 151669 an unused
``<|endoftext|>``, BOS 151670, markers 151671..151674, audio 151675 + cb*2048 + code, 168,059 ids
(the notebook's total, line 373).  :func:`qwen3x_spec` builds that base (step 1) from any Qwen
``tokenizer.json``; :class:`~megatron_soda.tokenizer.SodaTokenizer` on it does step 2.  Text
encodes exactly as with the Qwen tokenizer (only the name of one special changes).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

QWEN_EOS = "<|endoftext|>"
QWEN_IM_START = "<|im_start|>"
QWEN3X_EOS = "<|end_of_text|>"
QWEN3X_BOS = "<|begin_of_text|>"


def _added(spec: dict[str, Any]) -> dict[str, int]:
    return {t["content"]: t["id"] for t in spec.get("added_tokens") or []}


def _size(spec: dict[str, Any]) -> int:
    vocab = (spec.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else range(len(vocab))
    return max([*ids, *_added(spec).values()], default=-1) + 1


def is_qwen_text_tokenizer(spec: dict[str, Any]) -> bool:
    """A Qwen2/Qwen3 ``tokenizer.json`` as released: ``<|endoftext|>`` directly followed by
    ``<|im_start|>`` among the added tokens, and neither Llama-3 name present yet."""
    added = _added(spec)
    vocab = (spec.get("model") or {}).get("vocab") or {}
    names = set(added) | (set(vocab) if isinstance(vocab, dict) else set())
    return (
        QWEN_EOS in added
        and added.get(QWEN_IM_START) == added[QWEN_EOS] + 1
        and not names & {QWEN3X_EOS, QWEN3X_BOS}
    )


def _special(token_id: int, content: str) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def qwen3x_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The Qwen3x base of a Qwen ``tokenizer.json`` (see the module docstring): EOS renamed in
    place, then ``<|endoftext|>`` and ``<|begin_of_text|>`` appended."""
    if not is_qwen_text_tokenizer(spec):
        raise ValueError("not a Qwen2/Qwen3 text tokenizer (<|endoftext|>, <|im_start|>)")
    out = copy.deepcopy(spec)
    size = _size(out)
    for t in out["added_tokens"]:
        if t["content"] == QWEN_EOS:
            t["content"] = QWEN3X_EOS
    out["added_tokens"].append(_special(size, QWEN_EOS))
    out["added_tokens"].append(_special(size + 1, QWEN3X_BOS))
    return out


def write_qwen3x_base(qwen_tokenizer_json: str, out_path: str) -> int:
    """Write the Qwen3x base of ``qwen_tokenizer_json`` to ``out_path``; returns the size of the
    Qwen tokenizer (the ids whose embedding rows a warm start copies)."""
    with open(qwen_tokenizer_json, encoding="utf-8") as f:
        spec = json.load(f)
    size = _size(spec)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(qwen3x_spec(spec), f, ensure_ascii=False)
    return size


def tokenizer_size(tokenizer_json: str) -> int:
    """Number of ids of a ``tokenizer.json`` (its largest id + 1)."""
    with open(tokenizer_json, encoding="utf-8") as f:
        return _size(json.load(f))
