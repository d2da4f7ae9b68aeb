"""The megatron_soda tokenizer of a Hugging Face directory.

* A SODA model (its ``tokenizer_config.json`` has ``soda_layout``, or its ``tokenizer.json``
  has the SODA markers): the tokenizer is, in order of preference, the base ``tokenizer.json``
  given with ``--tokenizer``; the trainer's tokenizer copy that ``convert_to_hf`` leaves in
  ``soda_tokenizer/`` (same base file, so the same tokenizer identity as the original run); or
  the base tokenizer recovered from ``tokenizer.json`` by dropping every added token from the
  first SODA id on.  Either way the result must reproduce the HF tokenizer's ids for markers,
  BOS/EOS, text and audio characters, which is checked.
* A plain Qwen3 text model (warm start): the base is the directory's ``tokenizer.json`` (or
  ``--tokenizer``), extended with the markers and audio tokens by :class:`SodaTokenizer`.  With
  the default ``layout="authors"`` a Qwen2/Qwen3 tokenizer first becomes the authors' "Qwen3x"
  base (:mod:`megatron_soda.tokenizer.qwen3x`), so ids match their warm-start tokenizer;
  ``layout="compact"`` extends the tokenizer as it is.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_config import read_json
from megatron_soda.format import (
    CODEBOOK_SIZE,
    DEFAULT_NUM_CODEBOOKS,
    MARKERS,
    TEXT_START,
    TokenLayout,
)
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError
from megatron_soda.tokenizer.hf_export import PUA_BASE, hf_ids, to_hf_string
from megatron_soda.tokenizer.qwen3x import is_qwen_text_tokenizer, tokenizer_size, write_qwen3x_base
from megatron_soda.tokenizer.soda_tokenizer import DEFAULT_ADDED_BOS, DEFAULT_ADDED_EOS

SODA_TOKENIZER_DIR = "soda_tokenizer"  # the trainer's tokenizer (base tokenizer.json + layout)
WARM_START_LAYOUTS = ("authors", "compact")


@dataclass
class ResolvedTokenizer:
    tokenizer: SodaTokenizer
    soda_source: bool  # False: a text model, warm start (new vocabulary rows)
    how: str
    tmpdir: tempfile.TemporaryDirectory | None = None  # keeps a recovered base file alive
    # ids whose embedding/output rows come from the HF weights (warm start: the text tokenizer's
    # own ids; the rest are new rows); None: all of them
    copy_rows: int | None = None


def _token_name(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_optional_json(path: str) -> dict:
    return read_json(path) if os.path.isfile(path) else {}


def _derived_layout(spec: dict, where: str) -> TokenLayout | None:
    """Layout implied by the markers and PUA audio characters of an HF tokenizer.json."""
    added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    if TEXT_START not in added:
        return None
    start = added[TEXT_START]
    if [added.get(m) for m in MARKERS] != [start + k for k in range(4)]:
        raise ConversionError(f"{where}: SODA markers are not at 4 consecutive ids")
    audio = start + 4
    n = sum(
        1
        for c, i in added.items()
        if len(c) == 1 and ord(c) >= PUA_BASE and i == audio + ord(c) - PUA_BASE
    )
    if n == 0 or n % CODEBOOK_SIZE:
        raise ConversionError(
            f"{where}: {n} audio characters found after the markers (expected a multiple of "
            f"{CODEBOOK_SIZE})"
        )
    return TokenLayout(
        base_vocab_size=start,
        bos_id=-1,
        eos_id=-1,
        marker_offset=start,
        num_codebooks=n // CODEBOOK_SIZE,
    )


def _recover_base(spec: dict, cutoff: int, directory: str) -> str:
    """Write ``spec`` without the added tokens at ids >= ``cutoff`` (the SODA additions)."""
    base = dict(spec)
    base["added_tokens"] = [t for t in spec.get("added_tokens") or [] if t["id"] < cutoff]
    model_vocab = (spec.get("model") or {}).get("vocab")
    if isinstance(model_vocab, dict) and any(i >= cutoff for i in model_vocab.values()):
        raise ConversionError(
            "the model vocabulary of tokenizer.json reaches into the SODA ids; pass the base "
            "text tokenizer with --tokenizer"
        )
    path = os.path.join(directory, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(base, f, ensure_ascii=False)
    return path


def _recover(
    spec: dict,
    tok_cfg: dict,
    declared: TokenLayout | None,
    known: TokenLayout,
    directory: str,
    tok_json: str,
) -> SodaTokenizer:
    """SodaTokenizer on the base recovered from an exported ``tokenizer.json``.

    Without a declared layout, the BOS/EOS that SodaTokenizer itself adds to a base without them
    (they sit just before the markers) may belong to either side; the candidate that strips them
    comes first, since it reproduces the original layout, and the first candidate that maps the
    HF tokenizer's ids exactly is taken."""
    added = {t["id"]: t["content"] for t in spec.get("added_tokens") or []}
    start = known.marker_offset
    if declared is not None:
        cutoffs = [declared.base_vocab_size]
    else:
        ours = {DEFAULT_ADDED_BOS, DEFAULT_ADDED_EOS, "<|soda_bos|>"}
        cutoffs = [
            c for c in (start - 2, start - 1) if all(added.get(i) in ours for i in range(c, start))
        ]
        cutoffs.append(start)
    bos, eos = (_token_name(tok_cfg.get(k)) for k in ("bos_token", "eos_token"))
    error: Exception | None = None
    for cutoff in cutoffs:
        base = _recover_base(spec, cutoff, directory)
        kept = {t["content"] for t in spec.get("added_tokens") or [] if t["id"] < cutoff}
        present = kept | set((spec.get("model") or {}).get("vocab") or {})
        try:
            tok = SodaTokenizer(
                base,
                num_codebooks=known.num_codebooks,
                bos_token=bos if bos in present else None,
                eos_token=eos if eos in present else None,
            )
            if tok.layout.marker_offset != start:
                raise ConversionError(
                    f"markers would land at {tok.layout.marker_offset}, not {start}"
                )
            verify_against_hf(tok, tok_json)
            return tok
        except (ConversionError, TokenizerError) as e:
            error = e
    raise ConversionError(
        f"{tok_json}: cannot recover the base text tokenizer ({error}); pass it with --tokenizer"
    )


def verify_against_hf(tok: SodaTokenizer, tokenizer_json: str) -> None:
    """The HF tokenizer must give megatron_soda's ids for an interleaved probe string (BOS,
    markers, text, audio characters of every codebook, EOS)."""
    lay = tok.layout
    text = "Hello world, this is a test."
    codes = np.array([[0, CODEBOOK_SIZE - 1, 5]] * lay.num_codebooks)
    audio = tok.encode_audio(codes).tolist()
    head = [tok.bos, lay.text_start_id]
    tail = [lay.text_end_id, lay.audio_start_id, *audio, lay.audio_end_id, tok.eos]
    want = [*head, *tok.encode_text(text), *tail]
    probe = to_hf_string(tok, head) + text + to_hf_string(tok, tail)
    got = hf_ids(tokenizer_json, probe).tolist()
    if got != want:
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise ConversionError(
            f"{tokenizer_json}: maps a SODA probe string to other ids than the megatron_soda "
            f"tokenizer (first difference at position {k}: {got[k : k + 3]} vs {want[k : k + 3]}); "
            "pass the base text tokenizer with --tokenizer"
        )


def _warm_start(base: str, num_codebooks: int | None, layout: str) -> ResolvedTokenizer:
    """SodaTokenizer on a text model's tokenizer (see the module docstring)."""
    if layout not in WARM_START_LAYOUTS:
        raise ConversionError(f"warm-start layout {layout!r}: choose {' or '.join(WARM_START_LAYOUTS)}")
    n = num_codebooks or DEFAULT_NUM_CODEBOOKS
    spec = _read_optional_json(base)
    if layout == "authors" and is_qwen_text_tokenizer(spec):
        tmp = tempfile.TemporaryDirectory(prefix="soda_qwen3x_")
        path = os.path.join(tmp.name, "tokenizer.json")
        copied = write_qwen3x_base(base, path)
        return ResolvedTokenizer(
            SodaTokenizer(path, num_codebooks=n),
            False,
            f"Qwen tokenizer {base} as the authors' Qwen3x base (EOS renamed <|end_of_text|>, "
            "<|endoftext|> and BOS <|begin_of_text|> appended), extended with SODA markers and "
            "audio tokens",
            tmp,
            copy_rows=copied,
        )
    tok = SodaTokenizer(base, num_codebooks=n)
    return ResolvedTokenizer(
        tok,
        False,
        f"text tokenizer {base} extended with SODA markers and audio tokens",
        copy_rows=tokenizer_size(base),
    )


def resolve_tokenizer(
    hf_dir: str,
    base_tokenizer: str | None = None,
    num_codebooks: int | None = None,
    layout: str = "authors",
) -> ResolvedTokenizer:
    """The megatron_soda tokenizer for the HF directory ``hf_dir`` (see the module docstring);
    ``layout`` applies to a warm start only."""
    tok_json = os.path.join(hf_dir, "tokenizer.json")
    tok_cfg = _read_optional_json(os.path.join(hf_dir, "tokenizer_config.json"))
    spec = _read_optional_json(tok_json)
    if not spec and base_tokenizer is None:
        raise ConversionError(
            f"{hf_dir}: no tokenizer.json (pass the base text tokenizer with --tokenizer)"
        )
    declared = TokenLayout.from_dict(tok_cfg["soda_layout"]) if "soda_layout" in tok_cfg else None
    derived = _derived_layout(spec, tok_json) if spec else None
    if (
        declared is not None
        and derived is not None
        and (derived.marker_offset, derived.num_codebooks)
        != (declared.marker_offset, declared.num_codebooks)
    ):
        raise ConversionError(
            f"{hf_dir}: tokenizer_config.json soda_layout disagrees with tokenizer.json's markers"
        )
    known = declared or derived
    try:
        if known is None:  # a text model: warm start
            return _warm_start(base_tokenizer or tok_json, num_codebooks, layout)
        if num_codebooks is not None and num_codebooks != known.num_codebooks:
            raise ConversionError(
                f"{hf_dir}: a SODA model with {known.num_codebooks} codebooks, "
                f"--num-codebooks {num_codebooks} given"
            )
        tmp, verified = None, False
        saved = os.path.join(hf_dir, SODA_TOKENIZER_DIR)
        if base_tokenizer is not None:
            tok, how = (
                SodaTokenizer(base_tokenizer, num_codebooks=known.num_codebooks),
                f"--tokenizer {base_tokenizer}",
            )
        elif os.path.isfile(os.path.join(saved, "soda_tokenizer.json")):
            tok, how = (
                SodaTokenizer.from_pretrained(saved),
                f"the trainer's tokenizer copy in {saved}",
            )
        else:
            tmp = tempfile.TemporaryDirectory(prefix="soda_base_tok_")
            tok = _recover(spec, tok_cfg, declared, known, tmp.name, tok_json)
            how, verified = f"base tokenizer recovered from {tok_json}", True  # _recover checked it
    except TokenizerError as e:
        raise ConversionError(f"{hf_dir}: {e}") from None
    lay = tok.layout
    if declared is not None and lay != declared:
        raise ConversionError(
            f"{hf_dir}: the tokenizer from {how} has layout {lay.to_dict()}, tokenizer_config.json "
            f"declares {declared.to_dict()}"
        )
    if (lay.marker_offset, lay.num_codebooks) != (known.marker_offset, known.num_codebooks):
        raise ConversionError(
            f"{hf_dir}: the tokenizer from {how} puts the markers at {lay.marker_offset}, "
            f"tokenizer.json at {known.marker_offset}"
        )
    if spec and not verified:
        verify_against_hf(tok, tok_json)
    return ResolvedTokenizer(tok, True, how, tmp)
