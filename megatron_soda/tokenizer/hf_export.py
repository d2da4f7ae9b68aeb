"""Hugging Face ``tokenizer.json`` export with SODA's private-use-area audio characters.

SODA's released tokenizer writes audio token ``index = cb*2048 + code`` as the single
character ``chr(0xE000 + index)``, so an interleaved document is a plain string.  The
convention is fragile in known ways, which :func:`pua_hazards` measures and the export
warns about:

* The BMP private use area ends at U+F8FF (6,400 characters).  With 8 codebooks the audio
  characters run to U+11FFF, through CJK compatibility ideographs (U+F900..), alphabetic
  presentation forms (ligatures such as U+FB01), variation selectors, the BOM U+FEFF,
  half/full-width forms (U+FF01..), the noncharacters U+FFFE/U+FFFF and supplementary-plane
  scripts.  A transcript containing any of those characters is read as audio tokens by the
  exported tokenizer (megatron_soda's own pipeline encodes text and audio separately, so its
  ids are unaffected).
* Unicode normalisation (NFC/NFKC, applied by many text pipelines) rewrites hundreds of
  those characters into other characters, silently changing audio tokens.  Never normalise a
  SODA string; the exported tokenizer matches audio characters before its normaliser runs.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterable

import numpy as np

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.format.layout import MARKERS
from megatron_soda.tokenizer.soda_tokenizer import SodaTokenizer

logger = logging.getLogger(__name__)

PUA_BASE = 0xE000
BMP_PUA_LAST = 0xF8FF


def audio_char(index: int) -> str:
    """The character SODA's HF tokenizer uses for audio token ``index`` (= cb*2048 + code)."""
    return chr(PUA_BASE + index)


def pua_hazards(num_audio_tokens: int) -> dict:
    """How many audio characters leave the private use area or change under normalisation."""
    chars = [audio_char(i) for i in range(num_audio_tokens)]
    outside = sum(1 for c in chars if ord(c) > BMP_PUA_LAST)
    nfc = sum(1 for c in chars if unicodedata.normalize("NFC", c) != c)
    nfkc = sum(1 for c in chars if unicodedata.normalize("NFKC", c) != c)
    return {
        "num_audio_tokens": num_audio_tokens,
        "last_char": f"U+{PUA_BASE + num_audio_tokens - 1:04X}",
        "outside_private_use_area": outside,
        "changed_by_nfc": nfc,
        "changed_by_nfkc": nfkc,
    }


def text_audio_char_collisions(text: str, num_audio_tokens: int) -> int:
    """Number of characters in ``text`` that the exported tokenizer would read as audio."""
    lo, hi = PUA_BASE, PUA_BASE + num_audio_tokens
    return sum(1 for c in text if lo <= ord(c) < hi)


def to_hf_string(tok: SodaTokenizer, ids: Iterable[int]) -> str:
    """Render ids as the SODA string the exported HF tokenizer reads back to the same ids
    (text runs re-encode to the same ids when they came from encoding that text)."""
    lay = tok.layout
    parts = []
    for kind, run in tok.segments(ids):
        if kind == "special":
            parts.append(tok.special_name(int(run[0])))
        elif kind == "text":
            parts.append(tok.decode_text(run))
        else:
            parts.append("".join(audio_char(int(i) - lay.audio_offset) for i in run))
    return "".join(parts)


def _added_token(token_id: int, content: str, special: bool) -> dict:
    return {
        "id": int(token_id),
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,  # matched on the raw string, before any normaliser
        "special": special,
    }


def export_hf_tokenizer(tok: SodaTokenizer, out_dir: str, model_max_length: int = 4096) -> dict:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Returns the PUA hazard summary (also logged as a warning when non-trivial).
    """
    lay = tok.layout
    with open(tok.base_tokenizer_path, encoding="utf-8") as f:
        spec = json.load(f)
    added = list(spec.get("added_tokens") or [])
    for i, name in enumerate(lay.added_specials):
        added.append(_added_token(lay.base_vocab_size + i, name, special=True))
    for token_id, name in zip(lay.marker_ids, MARKERS):
        added.append(_added_token(token_id, name, special=True))
    for i in range(lay.num_audio_tokens):
        added.append(_added_token(lay.audio_offset + i, audio_char(i), special=False))
    spec["added_tokens"] = added

    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "tokenizer.json"), spec, ensure_ascii=False, indent=1)
    bos, eos = tok.special_name(lay.bos_id), tok.special_name(lay.eos_id)
    specials = {"bos_token": bos, "eos_token": eos, "pad_token": eos}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": list(MARKERS),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "soda_layout": lay.to_dict(),
        "soda_audio_char_base": f"U+{PUA_BASE:04X}",
    }
    write_json_atomic(
        os.path.join(out_dir, "tokenizer_config.json"), config, ensure_ascii=False, indent=1
    )
    write_json_atomic(
        os.path.join(out_dir, "special_tokens_map.json"),
        {**specials, "additional_special_tokens": list(MARKERS)},
        ensure_ascii=False,
        indent=1,
    )
    hazards = pua_hazards(lay.num_audio_tokens)
    if hazards["outside_private_use_area"] or hazards["changed_by_nfkc"]:
        logger.warning(
            "audio characters run to %s: %d lie past the private use area (U+F8FF) and %d change "
            "under NFKC (%d under NFC). Never Unicode-normalise SODA strings, and check that text "
            "does not contain characters in U+E000..%s.",
            hazards["last_char"],
            hazards["outside_private_use_area"],
            hazards["changed_by_nfkc"],
            hazards["changed_by_nfc"],
            hazards["last_char"],
        )
    return hazards


def hf_ids(hf_tokenizer_json: str, text: str) -> np.ndarray:
    """Encode a SODA string with an exported ``tokenizer.json`` (no extra specials)."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(hf_tokenizer_json)
    return np.asarray(t.encode(text, add_special_tokens=False).ids, dtype=np.int64)
