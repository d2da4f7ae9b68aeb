"""SODA's document formats and the held-out split."""

import dataclasses

import numpy as np
import pytest

from megatron_soda.data.split import heldout_score, is_heldout
from megatron_soda.format import interleaved_document, text_document, variants


@pytest.fixture()
def spans(soda_tokenizer):
    """Two utterances of one frame each, under SODA's Llama-3 layout cut to 2 codebooks: audio
    ids 128260 + code (codebook 0) and 130308 + code (codebook 1)."""
    texts = [[10, 11], [12]]
    codes = [np.array([[0], [5]], np.int16), np.array([[1], [6]], np.int16)]
    return dataclasses.replace(soda_tokenizer.layout, num_codebooks=2), texts, codes


def test_text_first(spans):
    lay, texts, audios = spans
    doc = interleaved_document(lay, texts, audios, "text-first").tolist()
    ts, te, as_, ae = lay.marker_ids
    assert doc == [
        lay.bos_id,
        ts,
        10,
        11,
        te,
        as_,
        128260,
        130313,
        ae,
        ts,
        12,
        te,
        as_,
        128261,
        130314,
        ae,
        lay.eos_id,
    ]


def test_audio_first(spans):
    lay, texts, audios = spans
    doc = interleaved_document(lay, texts, audios, "audio-first").tolist()
    ts, te, as_, ae = lay.marker_ids
    assert doc == [
        lay.bos_id,
        as_,
        128260,
        130313,
        ae,
        ts,
        10,
        11,
        te,
        as_,
        128261,
        130314,
        ae,
        ts,
        12,
        te,
        lay.eos_id,
    ]


def test_audio_only_and_text_only(spans):
    lay, texts, audios = spans
    ts, te, as_, ae = lay.marker_ids
    assert interleaved_document(lay, texts, audios, "audio-only").tolist() == [
        lay.bos_id,
        as_,
        128260,
        130313,
        ae,
        as_,
        128261,
        130314,
        ae,
        lay.eos_id,
    ]
    assert text_document(lay, [5, 6, 7]).tolist() == [lay.bos_id, 5, 6, 7, lay.eos_id]
    assert text_document(lay, [5]).dtype == np.int32


def test_variants():
    assert variants("both") == ("text-first", "audio-first")
    assert variants("audio-only") == ("audio-only",)
    with pytest.raises(ValueError, match="unknown interleave"):
        variants("text-only")


def test_mismatched_spans_rejected(spans):
    lay, texts, audios = spans
    with pytest.raises(ValueError, match="transcripts"):
        interleaved_document(lay, texts[:1], audios, "text-first")


def test_split_is_deterministic_and_near_the_fraction():
    ids = [f"rec{i}" for i in range(20000)]
    held = [i for i in ids if is_heldout(i, 0.05)]
    assert 0.04 < len(held) / len(ids) < 0.06
    assert held == [i for i in ids if is_heldout(i, 0.05)]
    assert not any(is_heldout(i, 0.0) for i in ids[:100])
    # pieces of a recording (Emilia "#n" suffixes) land on the same side
    assert heldout_score("EN_B0_S1") == heldout_score("EN_B0_S1#2")
