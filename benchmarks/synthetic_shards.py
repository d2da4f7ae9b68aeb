"""Synthetic SODA-structured shards for the training benchmarks.

Documents are written with megatron's IndexedDatasetBuilder, as preprocess_data.py writes
them: recordings of 1-8 utterances of 2-15 s (12.5 frames/s x 8 codebooks, frame-major)
interleaved with transcripts in both orders, under three speech prefixes weighted 131:73:37
(SODA's token counts) and a text prefix, blended 95/5.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from megatron_soda.format import TokenLayout

SPEECH_SPLIT = (("yodas2_en", 131), ("emilia_yodas_en", 73), ("emilia_en", 37))  # SODA's B tokens
TEXT_PREFIX = "nemotron_cc_hq"


def _speech_document(layout: TokenLayout, rng: np.random.Generator) -> list[int]:
    """One recording: ``<bos>(<text_start>T<text_end><audio_start>A<audio_end>)* <eos>`` or the
    audio-first order, 1-8 utterances of 2-15 s (12.5 frames/s x num_codebooks tokens)."""
    text_first = bool(rng.integers(2))
    doc = [layout.bos_id]
    for _ in range(int(rng.integers(1, 9))):
        seconds = float(rng.uniform(2.0, 15.0))
        words = max(1, int(seconds * 2.5))
        text = [
            layout.text_start_id,
            *rng.integers(0, layout.base_vocab_size, int(words * 1.3)).tolist(),
            layout.text_end_id,
        ]
        codes = rng.integers(0, layout.codebook_size, (layout.num_codebooks, int(seconds * 12.5)))
        audio = [layout.audio_start_id, *layout.codes_to_ids(codes).tolist(), layout.audio_end_id]
        doc += text + audio if text_first else audio + text
    return doc + [layout.eos_id]


def _text_document(layout: TokenLayout, rng: np.random.Generator) -> list[int]:
    n = int(rng.integers(50, 2000))
    return [layout.bos_id, *rng.integers(0, layout.base_vocab_size, n).tolist(), layout.eos_id]


def write_shard(prefix: str, layout: TokenLayout, kind: str, min_tokens: int, seed: int) -> str:
    """PREFIX.bin/.idx (int32, one sequence per document, as preprocess_data.py writes them) and
    PREFIX.stats.json with the layout, holding at least ``min_tokens`` tokens."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    tokens = docs = 0
    while tokens < min_tokens:
        doc = _speech_document(layout, rng) if kind == "speech" else _text_document(layout, rng)
        builder.add_document(torch.tensor(doc, dtype=torch.int32), [len(doc)])
        tokens += len(doc)
        docs += 1
    builder.finalize(prefix + ".idx")
    with open(prefix + ".stats.json", "w") as f:
        json.dump(
            {
                "layout": layout.to_dict(),
                "documents": docs,
                "total_tokens": tokens,
                "synthetic": True,
            },
            f,
        )
    return prefix


def blend_args(root: str, text_weight: float = 0.05) -> list[str]:
    """The ``--data-path`` arguments (weight, prefix, ...) of the synthetic blend in ``root``,
    without writing anything."""
    total = sum(w for _, w in SPEECH_SPLIT)
    speech = [
        x
        for name, w in SPEECH_SPLIT
        for x in (f"{(1 - text_weight) * w / total:.6f}", os.path.join(root, name))
    ]
    return speech + [f"{text_weight:.6f}", os.path.join(root, TEXT_PREFIX)]


def synthetic_blend(
    root: str,
    tokenizer_path: str,
    num_codebooks: int | None = None,
    tokens_per_prefix: int = 400_000,
    text_weight: float = 0.05,
) -> list[str]:
    """SODA's 95/5 speech/text blend over three speech prefixes (131:73:37) and one text
    prefix, as ``--data-path`` arguments.  Reuses shards already in ``root``."""
    from megatron_soda.tokenizer import SodaTokenizer

    layout = SodaTokenizer.load(tokenizer_path, num_codebooks=num_codebooks).layout
    for i, (name, _) in enumerate(SPEECH_SPLIT):
        prefix = os.path.join(root, name)
        if not os.path.isfile(prefix + ".idx"):
            write_shard(prefix, layout, "speech", tokens_per_prefix, seed=10 + i)
    prefix = os.path.join(root, TEXT_PREFIX)
    if not os.path.isfile(prefix + ".idx"):
        write_shard(prefix, layout, "text", tokens_per_prefix // 4, seed=20)
    return blend_args(root, text_weight)
