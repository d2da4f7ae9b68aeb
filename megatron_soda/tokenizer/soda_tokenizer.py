"""SodaTokenizer: any base text ``tokenizer.json`` extended with SODA's markers and audio tokens.

Text is encoded by the base tokenizer (through the fast ``tokenizers`` library) with
``encode_special_tokens`` on, so a transcript that happens to contain ``<|end_of_text|>``
never injects a control token.  Audio codes map to ids arithmetically (see
:class:`~megatron_soda.format.layout.TokenLayout`), never through string matching.

A saved tokenizer directory (:meth:`SodaTokenizer.save`, e.g. a checkpoint's ``tokenizer/``)
carries its layout, number of codebooks included; only a bare base ``tokenizer.json`` needs
to be told the number (else :data:`~megatron_soda.format.layout.DEFAULT_NUM_CODEBOOKS`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.format.kinds import KIND_ACOUSTIC, KIND_MARKER, KIND_SEMANTIC
from megatron_soda.format.layout import (
    DEFAULT_NUM_CODEBOOKS,
    FRAME_RATE,
    MARKERS,
    TokenLayout,
    layout_mismatch,
)

BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|bos|>")
EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "<|eos|>")
DEFAULT_ADDED_BOS = "<|begin_of_text|>"
DEFAULT_ADDED_EOS = "<|end_of_text|>"

BASE_FILE = "tokenizer.json"
LAYOUT_FILE = "soda_tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer file or layout that cannot be used."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SodaTokenizer:
    """Unified text + audio tokenizer.

    Also satisfies what megatron-core's datasets expect of a tokenizer (``vocab_size``,
    ``eod``, ``bos``, ``eos``, ``pad``, ``unique_identifiers``, ``tokenize``, ``detokenize``).
    """

    def __init__(
        self,
        base_tokenizer_path: str,
        num_codebooks: int = DEFAULT_NUM_CODEBOOKS,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        if not os.path.isfile(base_tokenizer_path):
            raise TokenizerError(f"{base_tokenizer_path}: no such tokenizer file")
        try:
            self._base = Tokenizer.from_file(base_tokenizer_path)
        except Exception as e:  # tokenizers raises a bare Exception on malformed json
            raise TokenizerError(
                f"{base_tokenizer_path}: not a Hugging Face tokenizer.json ({e})"
            ) from e
        self.base_tokenizer_path = os.path.abspath(base_tokenizer_path)
        self.base_sha256 = _sha256(base_tokenizer_path)
        self._base.encode_special_tokens = True
        vocab = self._base.get_vocab(with_added_tokens=True)
        base_size = max(vocab.values()) + 1 if vocab else 0
        for m in MARKERS:
            if m in vocab:
                raise TokenizerError(
                    f"{base_tokenizer_path}: already contains SODA marker {m}; pass the *base* text "
                    "tokenizer, not an extended one"
                )

        added: list[str] = []

        def resolve(explicit: str | None, candidates: Sequence[str], default: str) -> int:
            if explicit is not None:
                if explicit not in vocab:
                    raise TokenizerError(f"{base_tokenizer_path}: has no token {explicit!r}")
                return vocab[explicit]
            for c in candidates:
                if c in vocab:
                    return vocab[c]
            added.append(default)
            return base_size + len(added) - 1

        bos_id = resolve(bos_token, BOS_CANDIDATES, DEFAULT_ADDED_BOS)
        eos_id = resolve(eos_token, EOS_CANDIDATES, DEFAULT_ADDED_EOS)
        if bos_id == eos_id:
            # GPT-2 style "<|endoftext|>" for both: SODA needs a distinct BOS so that document
            # boundaries (derived from EOS) are unambiguous.
            added.append(DEFAULT_ADDED_BOS if DEFAULT_ADDED_BOS not in vocab else "<|soda_bos|>")
            bos_id = base_size + len(added) - 1
        self.layout = TokenLayout(
            base_vocab_size=base_size,
            bos_id=bos_id,
            eos_id=eos_id,
            marker_offset=base_size + len(added),
            num_codebooks=num_codebooks,
            added_specials=tuple(added),
        )
        self._requested_specials = (bos_token, eos_token)

        def name_of(token_id: int) -> str:
            return (
                added[token_id - base_size]
                if token_id >= base_size
                else self._base.id_to_token(token_id)
            )

        self._special_names = {bos_id: name_of(bos_id), eos_id: name_of(eos_id)}
        for i, m in zip(self.layout.marker_ids, MARKERS):
            self._special_names[i] = m
        self.unique_identifiers = OrderedDict(
            [
                ("class", type(self).__name__),
                ("base_sha256", self.base_sha256),
                ("num_codebooks", num_codebooks),
                ("layout", json.dumps(self.layout.to_dict(), sort_keys=True)),
            ]
        )
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)

    # ------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, directory: str) -> SodaTokenizer:
        """Load a tokenizer saved with :meth:`save` (e.g. inside a checkpoint)."""
        meta_path = os.path.join(directory, LAYOUT_FILE)
        if not os.path.isfile(meta_path):
            raise TokenizerError(f"{directory}: no {LAYOUT_FILE} (not a saved SodaTokenizer)")
        with open(meta_path) as f:
            meta = json.load(f)
        tok = cls(
            os.path.join(directory, BASE_FILE),
            num_codebooks=meta["layout"]["num_codebooks"],
            bos_token=meta.get("bos_token"),
            eos_token=meta.get("eos_token"),
        )
        tok.check_layout(TokenLayout.from_dict(meta["layout"]), where=meta_path)
        return tok

    @classmethod
    def load(cls, path: str, num_codebooks: int | None = None) -> SodaTokenizer:
        """A directory saved with :meth:`save` (its own layout: ``num_codebooks``, if given,
        must agree with it) or a base ``tokenizer.json`` (``num_codebooks``, default
        :data:`DEFAULT_NUM_CODEBOOKS`)."""
        if os.path.isdir(path):
            tok = cls.from_pretrained(path)
            if num_codebooks is not None and tok.layout.num_codebooks != num_codebooks:
                raise TokenizerError(
                    f"{path}: saved with {tok.layout.num_codebooks} codebooks, {num_codebooks} "
                    "requested (a saved tokenizer carries its own number: it need not be given)"
                )
            return tok
        n = DEFAULT_NUM_CODEBOOKS if num_codebooks is None else num_codebooks
        return cls(path, num_codebooks=n)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        dst = os.path.join(directory, BASE_FILE)
        if os.path.abspath(dst) != self.base_tokenizer_path:
            shutil.copyfile(self.base_tokenizer_path, dst)
        meta = {
            "layout": self.layout.to_dict(),
            "base_sha256": self.base_sha256,
            "bos_token": self._requested_specials[0],
            "eos_token": self._requested_specials[1],
        }
        write_json_atomic(os.path.join(directory, LAYOUT_FILE), meta, indent=2)

    def check_layout(self, other: TokenLayout, where: str = "") -> None:
        """Raise if ``other`` (e.g. recorded in shards or a checkpoint) differs from this layout."""
        why = layout_mismatch(other, self.layout)
        if why:
            raise TokenizerError(f"{where}: {why}")

    # ----------------------------------------------------------- megatron API
    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def eod(self) -> int:
        return self.layout.eos_id

    @property
    def eos(self) -> int:
        return self.layout.eos_id

    @property
    def bos(self) -> int:
        return self.layout.bos_id

    @property
    def pad(self) -> int:
        return self.layout.eos_id

    def tokenize(self, text: str) -> list[int]:
        return self.encode_text(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.render(ids)

    # --------------------------------------------------------------- encoding
    @property
    def base(self) -> Tokenizer:
        return self._base

    def encode_text(self, text: str) -> list[int]:
        return self._base.encode(text, add_special_tokens=False).ids

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Batch text encoding (parallel inside the Rust library)."""
        if not texts:
            return []
        return [e.ids for e in self._base.encode_batch(list(texts), add_special_tokens=False)]

    def encode_audio(self, codes: np.ndarray) -> np.ndarray:
        return self.layout.codes_to_ids(codes)

    def decode_text(self, ids: Iterable[int]) -> str:
        return self._base.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_audio(self, ids: np.ndarray) -> np.ndarray:
        return self.layout.ids_to_codes(ids)

    def special_name(self, token_id: int) -> str | None:
        return self._special_names.get(int(token_id))

    # ------------------------------------------------------------- rendering
    def segments(self, ids: Iterable[int]) -> list[tuple[str, np.ndarray]]:
        """Split ids into runs of ("text" | "audio" | "special", ids)."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if ids.size == 0:
            return []
        kinds = self.layout.token_kinds(ids).astype(np.int64)
        kinds[kinds == KIND_ACOUSTIC] = KIND_SEMANTIC  # one run per audio span
        cuts = np.flatnonzero(np.diff(kinds)) + 1
        out = []
        for run in np.split(np.arange(ids.size), cuts):
            k = kinds[run[0]]
            if k == KIND_MARKER:
                out.extend(("special", ids[i : i + 1]) for i in run)
            else:
                out.append(("audio" if k == KIND_SEMANTIC else "text", ids[run]))
        return out

    def render(self, ids: Iterable[int], max_codes: int = 8) -> str:
        """Readable rendering of a document: text as text, markers by name, audio summarised."""
        parts = []
        for kind, run in self.segments(ids):
            if kind == "special":
                parts.append(self._special_names.get(int(run[0]), f"<id {int(run[0])}>"))
            elif kind == "text":
                parts.append(self.decode_text(run))
            else:
                parts.append(self._render_audio(run, max_codes))
        return "".join(parts)

    def _render_audio(self, run: np.ndarray, max_codes: int) -> str:
        n = self.layout.num_codebooks
        try:
            codes = self.layout.ids_to_codes(run)
        except ValueError:
            return f"[audio: {run.size} ids, malformed]"
        frames = codes.shape[1]
        head = " ".join(str(c) for c in codes[0, :max_codes])
        more = " ..." if frames > max_codes else ""
        return f"[audio {frames} frames = {frames / FRAME_RATE:.2f}s x {n} cb | cb0: {head}{more}]"

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"SodaTokenizer(base={os.path.basename(self.base_tokenizer_path)}, "
            f"base_vocab={lay.base_vocab_size}, markers={lay.marker_offset}, "
            f"audio={lay.audio_offset}+{lay.num_audio_tokens}, vocab={lay.vocab_size})"
        )


__all__ = ["SodaTokenizer", "TokenizerError", "KIND_SEMANTIC", "KIND_ACOUSTIC"]
