"""Hugging Face Qwen3 weights as megatron_soda's global tensors (fused, vocabulary padded).

Vocabulary rows: rows ``[0, copy_rows)`` come from the HF embedding/head; for a warm start
from a text model, rows ``[copy_rows, vocab_size)`` (every id the text tokenizer lacks: an added
BOS/EOS, the four markers, every audio token) are new and come from :func:`extension_rows`; the
padded rows up to ``padded_vocab_size`` are zero (never used: never looked up, logits masked).
"""

from __future__ import annotations

import torch

from megatron_soda.convert import names
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.safetensors_io import SafetensorsReader
from megatron_soda.models.config import SodaModelConfig

# HF tensors that carry no weights (buffers some old exports include).
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)
# What a weight may be stored as: read into the model's floating-point parameters exactly (an
# integer or boolean "weight" is a header that lies about its bytes, or not a model at all).
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


NOISE_UNITS = ("absolute", "std")


def extension_rows(
    old: torch.Tensor, count: int, noise: float, seed: int, name: str, unit: str = "absolute"
) -> torch.Tensor:
    """Rows for ``count`` new tokens: the mean of the existing rows plus Gaussian noise of
    standard deviation ``noise`` (``unit="absolute"``) or ``noise`` times the existing rows'
    per-dimension standard deviation (``unit="std"``).

    The default (mean + N(0, 0.02^2), embedding and output head drawn independently) is what the
    SODA authors did for their Qwen3x warm-start models (potsawee/tokenize-audio
    ``codec-bpe/qwen3x.ipynb`` lines 449-484: rows ``[0, 151669)`` copied, the 16,390 new ones
    ``mean(rows[:151669]) + 0.02 * randn``).  Why the mean: a new output row equal to the mean of
    the old ones gives each new token the average of the old tokens' logits for every hidden
    state, which (by Jensen) is at most the log of their average probability, so no new token
    starts out over-predicted; a new input row at the mean is a "typical" embedding the
    pretrained layers already handle.  The noise makes the rows distinct (deterministic: seeded
    by ``seed`` and the tensor name)."""
    from megatron_soda.models.init import seed_for  # (a megatron import: kept local)

    if unit not in NOISE_UNITS:
        raise ConversionError(f"new-row noise unit {unit!r}: choose {' or '.join(NOISE_UNITS)}")
    old = old.float()
    mean = old.mean(dim=0)
    scale = old.std(dim=0) if unit == "std" else torch.ones_like(mean)
    gen = torch.Generator().manual_seed(seed_for(seed, name))
    return mean + noise * scale * torch.randn(count, old.shape[1], generator=gen)


class HFWeights:
    """Megatron global tensors from an HF directory, checked against ``cfg`` up front."""

    def __init__(
        self,
        hf_dir: str,
        cfg: SodaModelConfig,
        *,
        tied: bool,
        copy_rows: int,
        extension: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.st = SafetensorsReader(hf_dir)
        self.cfg, self.tied, self.copy_rows = cfg, tied, copy_rows
        self.extension = extension or {}
        self._layer_params = {k: p for p in names.LAYER_PARAMS for k in p.megatron_keys}
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def hf_vocab_rows(self) -> int:
        return self.st.shape(names.HF_EMBEDDING)[0] if names.HF_EMBEDDING in self.st else -1

    def check(self) -> None:
        """Every tensor present with the shape the config implies, nothing unknown."""
        cfg, st, where = self.cfg, self.st, self.st.hf_dir
        problems = []
        vocab_names = [names.HF_EMBEDDING] + ([] if self.tied else [names.HF_OUTPUT])
        # the vocabulary tensors are checked below (rows: at least the tokenizer's copied ids)
        expected = {
            n: shape
            for n, shape in names.hf_specs(cfg)
            if n not in (names.HF_EMBEDDING, names.HF_OUTPUT)
        }
        for name, shape in expected.items():
            if name not in st:
                problems.append(f"missing {name}")
            elif st.shape(name) != shape:
                problems.append(
                    f"{name} has shape {st.shape(name)}, config.json implies {shape} "
                    f"(in {st.file_of(name)})"
                )
        for name in vocab_names:
            if name not in st:
                problems.append(
                    f"missing {name}"
                    + (" (tie_word_embeddings is false)" if name == names.HF_OUTPUT else "")
                )
            elif len(st.shape(name)) != 2 or st.shape(name)[1] != cfg.hidden_size:
                problems.append(
                    f"{name} has shape {st.shape(name)}, hidden size is {cfg.hidden_size} "
                    f"(in {st.file_of(name)})"
                )
            elif st.shape(name)[0] < self.copy_rows:
                problems.append(
                    f"{name} has {st.shape(name)[0]} rows, the tokenizer needs {self.copy_rows} "
                    f"(in {st.file_of(name)})"
                )
        for name in [*expected, *vocab_names]:
            if name in st and st.dtype(name) not in WEIGHT_DTYPES:
                problems.append(
                    f"{name} is stored as {st.dtype(name)}, a weight must be a floating-point "
                    f"type: F32, BF16, F16 or F64 (in {st.file_of(name)})"
                )
        known = set(expected) | set(vocab_names) | {names.HF_OUTPUT}
        unknown = [n for n in st.names() if n not in known and not n.endswith(_IGNORABLE_SUFFIXES)]
        if unknown:
            problems.append(f"tensors with no megatron_soda equivalent: {sorted(unknown)[:6]}")
        if problems:
            raise ConversionError(
                f"{where}: the weights do not match config.json/tokenizer: "
                + "; ".join(problems[:8])
            )

    def _hf_vocab_name(self, key: str) -> str:
        """The HF tensor of vocabulary key ``key`` (a tied output head reads the embedding)."""
        return names.HF_EMBEDDING if key == names.EMBEDDING or self.tied else names.HF_OUTPUT

    def base_rows(self, key: str) -> torch.Tensor:
        """The ``copy_rows`` HF rows of vocabulary key ``key`` (embedding or output head)."""
        return self.st.get(self._hf_vocab_name(key))[: self.copy_rows]

    def _vocab_tensor(self, key: str, out: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        hf_name = self._hf_vocab_name(key)
        if out is None or out.dtype != self.st.dtype(hf_name):
            out = torch.empty(cfg.padded_vocab_size, cfg.hidden_size, dtype=self.st.dtype(hf_name))
        self.st.get(hf_name, out=out[: self.copy_rows])  # read in place: no second copy
        out[cfg.vocab_size :] = 0
        new = cfg.vocab_size - self.copy_rows
        if new:
            rows = self.extension.get(key)
            if rows is None or tuple(rows.shape) != (new, cfg.hidden_size):
                raise ConversionError(f"no extension rows for {key}")
            out[self.copy_rows : cfg.vocab_size] = rows.to(out.dtype)
        return out

    def megatron_tensor(
        self, key: str, layer: int | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The global megatron tensor ``key`` (one layer of it for stacked layer keys); a vocabulary
        tensor is read straight into ``out`` (the whole parameter) when given and of its dtype."""
        ident = (key, layer)
        if self._cache is not None and self._cache[0] == ident:
            return self._cache[1]
        self._cache = None  # (the swiglu factory asks twice for fc1; otherwise each key once)
        if key in names.GLOBAL_PARAMS and names.GLOBAL_PARAMS[key][1]:
            result = self._vocab_tensor(key, out)
            if result is out:  # written in place: nothing to cache
                return result
        elif key in names.GLOBAL_PARAMS:
            result = self.st.get(names.GLOBAL_PARAMS[key][0])
        elif key in self._layer_params:
            if layer is None:
                raise ConversionError(f"{key}: a per-layer tensor needs a layer index")
            p = self._layer_params[key]
            result = names.fuse(p, [self.st.get(n.format(i=layer)) for n in p.hf], self.cfg)
        else:
            raise ConversionError(f"megatron parameter {key} has no Hugging Face source")
        self._cache = (ident, result)
        return result
