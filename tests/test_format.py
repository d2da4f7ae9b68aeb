"""The SODA format module: token kinds (numpy and torch), the document builder and the one
shard validator, each checked against a computation written here."""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest
import torch

from megatron_soda.data.inspect import inspect_main
from megatron_soda.data.merge import merge_outputs
from megatron_soda.data.shards import ShardWriter
from megatron_soda.format import (
    DEFAULT_NUM_CODEBOOKS,
    KIND_ACOUSTIC,
    KIND_MARKER,
    KIND_NAMES,
    KIND_SEMANTIC,
    KIND_TEXT,
    ShardError,
    TokenLayout,
    interleaved_document,
    interleaved_kind_counts,
    read_document,
    shard_layout,
    text_document,
    token_kinds,
    token_kinds_torch,
    validate_shard,
    variants,
)
from megatron_soda.format import shards as shard_format
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.training.data_checks import DataError, check_prefix


@pytest.fixture(scope="module", params=["llama3", "small_bpe"])
def layout(request, llama3_path, small_bpe_path) -> TokenLayout:
    """BOS/EOS inside the base vocabulary (Llama 3) or added after it (a small BPE)."""
    path = llama3_path if request.param == "llama3" else small_bpe_path
    return SodaTokenizer(path, num_codebooks=3).layout


def kind_of(i: int, lay: TokenLayout) -> int:
    if i in (lay.bos_id, lay.eos_id) or lay.base_vocab_size <= i < lay.audio_offset:
        return KIND_MARKER
    if i < lay.base_vocab_size:
        return KIND_TEXT
    return KIND_SEMANTIC if i < lay.audio_offset + lay.codebook_size else KIND_ACOUSTIC


def boundary_ids(lay: TokenLayout, rng: np.random.Generator) -> np.ndarray:
    a0, cb = lay.audio_offset, lay.codebook_size
    edges = [0, 1, lay.base_vocab_size - 1, lay.base_vocab_size, lay.bos_id, lay.eos_id]
    edges += [*lay.marker_ids, a0 - 1, a0, a0 + cb - 1, a0 + cb, lay.vocab_size - 1]
    return np.concatenate([edges, rng.integers(0, lay.vocab_size, 5000 - len(edges))])


# ------------------------------------------------------------------------------- kinds
def test_token_kinds_numpy_and_torch_agree_with_the_rules(layout):
    ids = boundary_ids(layout, np.random.default_rng(0))
    want = np.array([kind_of(int(i), layout) for i in ids], np.uint8)
    np.testing.assert_array_equal(token_kinds(ids, layout), want)
    np.testing.assert_array_equal(layout.token_kinds(ids.reshape(-1, 2)), want.reshape(-1, 2))
    for dtype in (torch.int64, torch.int32):
        got = token_kinds_torch(torch.from_numpy(ids).to(dtype).reshape(2, -1), layout)
        assert got.dtype == torch.uint8
        np.testing.assert_array_equal(got.reshape(-1).numpy(), want)
    counts = collections.Counter(KIND_NAMES[k] for k in want.tolist())
    assert layout.count_kinds(ids) == {name: counts[name] for name in KIND_NAMES}


# --------------------------------------------------------------------------- documents
def utterances(lay: TokenLayout, rng: np.random.Generator, n: int) -> tuple[list, list]:
    """Text ids and int16 codes with more codebooks than the layout uses; an utterance with no
    text and one with no frames included."""
    texts = [rng.integers(0, lay.base_vocab_size, int(rng.integers(0, 9))) for _ in range(n)]
    codes = [rng.integers(0, 2048, (8, int(rng.integers(0, 6)))).astype(np.int16) for _ in range(n)]
    texts[0] = texts[0][:0]
    codes[-1] = codes[-1][:, :0]
    return [t.astype(np.int32) for t in texts], codes


def expected_document(lay: TokenLayout, texts: list, codes: list, variant: str) -> list[int]:
    ts, te, a_s, a_e = lay.marker_ids
    doc = [lay.bos_id]
    for t, c in zip(texts, codes):
        text = [ts, *t.tolist(), te]
        audio = [a_s, *lay.codes_to_ids(c).tolist(), a_e]
        doc += {"text-first": text + audio, "audio-first": audio + text, "audio-only": audio}[
            variant
        ]
    return doc + [lay.eos_id]


@pytest.mark.parametrize("variant", ["text-first", "audio-first", "audio-only"])
def test_document_builder_matches_an_independent_build(layout, variant):
    rng = np.random.default_rng(1)
    for n in (1, 4):
        texts, codes = utterances(layout, rng, n)
        doc = interleaved_document(layout, texts, codes, variant)
        assert doc.dtype == np.int32
        assert doc.tolist() == expected_document(layout, texts, codes, variant)
        assert interleaved_kind_counts(layout, texts, codes, variant) == layout.count_kinds(doc)
        as_lists = interleaved_document(layout, [t.tolist() for t in texts], codes, variant)
        np.testing.assert_array_equal(as_lists, doc)


def test_text_documents_variants_and_bad_input(layout):
    assert text_document(layout, [5, 6, 7]).tolist() == [layout.bos_id, 5, 6, 7, layout.eos_id]
    assert text_document(layout, []).tolist() == [layout.bos_id, layout.eos_id]
    assert variants("both") == ("text-first", "audio-first")
    texts, codes = utterances(layout, np.random.default_rng(2), 2)
    with pytest.raises(ValueError, match="1 transcripts for 2 audio spans"):
        interleaved_document(layout, texts[:1], codes, "text-first")
    with pytest.raises(ValueError, match="unknown document variant 'both'"):
        interleaved_document(layout, texts, codes, "both")


# ------------------------------------------------------------------------------ shards
@pytest.fixture(scope="module")
def tok(small_bpe_path) -> SodaTokenizer:
    return SodaTokenizer(small_bpe_path)


def write(prefix: str, lay: TokenLayout, docs: list[np.ndarray], stats: bool = True) -> str:
    writer = ShardWriter(prefix)
    for doc in docs:
        writer.add(doc)
    writer.finalize()
    if stats:
        with open(prefix + ".stats.json", "w") as f:
            json.dump({"layout": lay.to_dict()}, f)
    return prefix


def documents(lay: TokenLayout, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [interleaved_document(lay, *utterances(lay, rng, 3), "audio-first") for _ in range(n)]


@pytest.fixture
def shard(tmp_path, tok) -> tuple[str, list[np.ndarray]]:
    docs = documents(tok.layout, 6)
    return write(str(tmp_path / "shard"), tok.layout, docs), docs


def test_a_good_shard(shard, tok):
    prefix, docs = shard
    lay = tok.layout
    s = validate_shard(prefix, lay, check_boundaries=True, allow_empty=False)
    flat = np.concatenate(docs)
    assert (s.documents, s.sequences, s.tokens, s.scanned) == (6, 6, flat.size, flat.size)
    assert (s.min_id, s.max_id) == (flat.min(), flat.max())
    assert [read_document(prefix, i).tolist() for i in range(6)] == [d.tolist() for d in docs]
    assert shard_layout(prefix) == lay and lay.num_codebooks == DEFAULT_NUM_CODEBOOKS
    assert check_prefix(prefix, tok) == {"prefix": prefix, "sequences": 6, "tokens": flat.size}


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


HEADER = shard_format._HEADER.size


@pytest.mark.parametrize(
    "damage, file, message",
    [
        (lambda p: os.remove(p + ".idx"), ".idx", "missing"),
        (lambda p: os.remove(p + ".bin"), ".bin", "missing"),
        (lambda p: _patch(p + ".idx", 0, b"NOTANIDX"), ".idx", "not a Megatron index file"),
        (lambda p: _patch(p + ".idx", 17, bytes([99])), ".idx", "dtype code 99"),
        (lambda p: os.truncate(p + ".idx", HEADER + 10), ".idx", "truncated index"),
        (lambda p: os.truncate(p + ".bin", 8), ".bin", r"truncated \(8 bytes"),
        (lambda p: open(p + ".bin", "ab").write(b"\0" * 4), ".bin", "longer than its index"),
        (lambda p: _patch(p + ".idx", HEADER + 6 * 4 + 8, b"\1" * 8), ".idx", "sequence pointers"),
        (lambda p: _patch(p + ".idx", HEADER + 6 * 12, b"\5" * 8), ".idx", "document index"),
        (
            lambda p: json.dump({"layout": {}}, open(p + ".stats.json", "w")),
            ".stats.json",
            "unreadable token layout",
        ),
    ],
)
def test_broken_shards_are_refused_naming_the_file(shard, tok, damage, file, message):
    prefix, _ = shard
    damage(prefix)
    with pytest.raises(ShardError, match=rf"{prefix}{file}: .*{message}"):
        validate_shard(prefix, tok.layout)


def test_layout_vocabulary_and_boundaries(tmp_path, tok, small_bpe_path):
    lay = tok.layout
    docs = documents(lay, 4)
    prefix = write(str(tmp_path / "a"), lay, docs)
    other = SodaTokenizer(small_bpe_path, num_codebooks=2).layout
    with pytest.raises(ShardError, match=rf"{prefix}\.stats\.json: token layout .*num_codebooks"):
        validate_shard(prefix, other)
    bare = write(str(tmp_path / "b"), lay, docs, stats=False)
    assert shard_layout(bare) is None
    flat = np.concatenate(docs)
    top, first = int(flat.max()), int(np.flatnonzero(flat == flat.max())[0])
    assert top >= other.vocab_size
    with pytest.raises(ShardError, match=rf"{bare}\.bin: token id {top} at position {first} is"):
        validate_shard(bare, other)
    validate_shard(bare, other, scan_ids=False)  # structure only
    docs = documents(lay, 3)
    docs[1] = docs[1][1:]
    cut = write(str(tmp_path / "c"), lay, docs)
    validate_shard(cut, lay)
    with pytest.raises(ShardError, match=rf"{cut}\.bin: document 1 does not start with BOS"):
        validate_shard(cut, lay, check_boundaries=True)


def test_negative_ids_without_a_layout(tmp_path, tok):
    prefix = write(str(tmp_path / "neg"), tok.layout, [np.array([1, -3, 2], np.int32)])
    with pytest.raises(ShardError, match=r"token id -3 at position 1 is outside"):
        validate_shard(prefix)


def test_sampled_scan_reads_head_and_tail(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(shard_format, "_SCAN_BLOCK", 4)
    ids = np.arange(100, dtype=np.int32)
    prefix = write(str(tmp_path / "big"), tok.layout, [ids], stats=False)
    budget = 3 * 4 * 4 / (1 << 30)  # three blocks of four int32 tokens
    s = validate_shard(prefix, max_scan_gib=budget)
    assert (s.scanned, s.min_id, s.max_id) == (12, 0, 99)
    assert validate_shard(prefix).scanned == 100


def test_empty_shard(tmp_path, tok):
    prefix = write(str(tmp_path / "empty"), tok.layout, [])
    s = validate_shard(prefix, tok.layout)
    assert (s.documents, s.tokens, s.scanned) == (0, 0, 0)
    with pytest.raises(ShardError, match=rf"{prefix}\.idx: the shard holds no documents"):
        validate_shard(prefix, tok.layout, allow_empty=False)


def test_one_error_type_for_preprocessing_trainer_and_inspect(shard, tok, tmp_path, capsys):
    prefix, _ = shard
    os.truncate(prefix + ".bin", 8)
    assert DataError is ShardError
    with pytest.raises(ShardError, match=rf"{prefix}\.bin: truncated"):
        check_prefix(prefix, tok, mode="quick")
    with pytest.raises(ShardError, match=rf"{prefix}\.bin: truncated"):
        merge_outputs([prefix], str(tmp_path / "merged"))
    assert not os.path.exists(tmp_path / "merged.bin")
    assert inspect_main([prefix]) == 1
    assert f"{prefix}.bin: truncated" in capsys.readouterr().err
