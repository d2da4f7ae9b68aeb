"""HF tokenizer.json export with SODA's private-use-area audio characters."""

import logging

import numpy as np
import pytest

from megatron_soda.tokenizer.hf_export import (
    audio_char,
    export_hf_tokenizer,
    hf_ids,
    pua_hazards,
    text_audio_char_collisions,
    to_hf_string,
)


def _document(tok, texts, codes_list):
    lay = tok.layout
    ids = [tok.bos]
    for text, codes in zip(texts, codes_list):
        ids += [lay.text_start_id] + tok.encode_text(text) + [lay.text_end_id, lay.audio_start_id]
        ids += tok.encode_audio(codes).tolist() + [lay.audio_end_id]
    return ids + [tok.eos]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, soda_tokenizer):
    out = tmp_path_factory.mktemp("hf")
    export_hf_tokenizer(soda_tokenizer, str(out))
    return out


def test_audio_characters_follow_soda_convention(soda_tokenizer):
    codes = np.array([[3], [0], [0], [0], [0], [0], [0], [5]])
    ids = [
        soda_tokenizer.layout.audio_start_id,
        *soda_tokenizer.encode_audio(codes).tolist(),
        soda_tokenizer.layout.audio_end_id,
    ]
    s = to_hf_string(soda_tokenizer, ids)
    assert (
        s
        == "<|audio_start|>"
        + "".join(chr(0xE000 + cb * 2048 + c) for cb, c in enumerate(codes[:, 0]))
        + "<|audio_end|>"
    )
    assert audio_char(0) == "\ue000"


def test_round_trip_through_tokenizers_and_transformers(exported, soda_tokenizer):
    from transformers import AutoTokenizer

    rng = np.random.default_rng(1)
    texts = [
        "Shall I compare thee to a summer's day?",
        " Thou art more lovely",
        "café, naïve — 日本語 ok",
    ]
    ids = _document(soda_tokenizer, texts, [rng.integers(0, 2048, (8, n)) for n in (5, 1, 30)])
    s = to_hf_string(soda_tokenizer, ids)
    assert hf_ids(str(exported / "tokenizer.json"), s).tolist() == ids
    hf = AutoTokenizer.from_pretrained(str(exported))
    assert hf(s, add_special_tokens=False)["input_ids"] == ids
    assert hf.decode(ids) == s
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (128000, 128001, 128001)
    assert len(hf) == 144644


def test_round_trip_with_a_base_lacking_bos_eos(tmp_path, small_bpe_path):
    from megatron_soda.tokenizer import SodaTokenizer

    tok = SodaTokenizer(small_bpe_path, num_codebooks=2)
    export_hf_tokenizer(tok, str(tmp_path))
    ids = _document(tok, ["To be, or not to be"], [np.array([[1, 2, 3], [2047, 0, 5]])])
    assert hf_ids(str(tmp_path / "tokenizer.json"), to_hf_string(tok, ids)).tolist() == ids


def test_export_warns_about_characters_past_the_private_use_area(tmp_path, soda_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        hazards = export_hf_tokenizer(soda_tokenizer, str(tmp_path))
    assert hazards["last_char"] == "U+11FFF"
    assert hazards["outside_private_use_area"] == 16384 - 6400
    assert hazards["changed_by_nfkc"] > 0
    assert "Never Unicode-normalise" in caplog.text


def test_small_vocab_within_private_use_area_is_safe():
    h = pua_hazards(2048)
    assert h["outside_private_use_area"] == 0 and h["changed_by_nfkc"] == 0


def test_normalisation_hazard_is_real(exported, soda_tokenizer):
    """A transcript with a ligature collides with an audio character: exactly the fragility warned about."""
    import unicodedata

    assert text_audio_char_collisions("ﬁne", 16384) == 1
    assert text_audio_char_collisions("fine", 16384) == 0
    ch = audio_char(0xFB01 - 0xE000)
    assert unicodedata.normalize("NFKC", ch) != ch
