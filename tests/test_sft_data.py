"""format/sft.py: the S2ST document, its loss start, and the loss-start sidecar of SFT shards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron_soda.data.shards import ShardWriter
from megatron_soda.format import ShardError, validate_shard
from megatron_soda.format.sft import (
    LOSS_START_SUFFIX,
    is_sft_shard,
    read_loss_starts,
    s2st_document,
    s2st_prompt_ids,
    write_loss_starts,
)
from megatron_soda.format.shard_verify import check_stats_current


def _codes(seed: int, frames: int, n_cb: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2048, size=(n_cb, frames), dtype=np.int16)


def _reference(tok, src_codes, src_lang, src_text, tgt_text, tgt_codes) -> list[int]:
    """The authors' f-string (combine_cvss_mimi.py lines 66-72), spelled token by token:
    audio ids by hand (frame-major, codebook blocks), each text span one tokenized string."""
    lay = tok.layout

    def audio(codes):
        return [lay.audio_offset + cb * lay.codebook_size + int(codes[cb, f])
                for f in range(codes.shape[1]) for cb in range(lay.num_codebooks)]

    base = tok.base  # the HF tokenizer itself, not SodaTokenizer.encode_text
    span = lambda lang, text: base.encode(f"<language>{lang}</language>{text}",  # noqa: E731
                                          add_special_tokens=False).ids
    return ([lay.bos_id, lay.audio_start_id] + audio(src_codes) + [lay.audio_end_id]
            + [lay.text_start_id] + span(src_lang, src_text) + [lay.text_end_id]
            + [lay.text_start_id] + span("en", tgt_text) + [lay.text_end_id]
            + [lay.audio_start_id] + audio(tgt_codes) + [lay.audio_end_id, lay.eos_id])


@pytest.mark.parametrize("tokenizer", ["soda_tokenizer", "small"])
def test_document_matches_the_authors_format_and_loss_starts_sit_on_markers(
    tokenizer, request, small_bpe_path
):
    from megatron_soda.tokenizer import SodaTokenizer

    tok = (request.getfixturevalue("soda_tokenizer") if tokenizer == "soda_tokenizer"
           else SodaTokenizer(small_bpe_path, num_codebooks=4))
    src, tgt = _codes(1, 5), _codes(2, 3)
    src_text, tgt_text = "Bonjour à tous, ça va?", "Hello everyone, how are you?"
    want = _reference(tok, src, "fr", src_text, tgt_text, tgt)
    lay = tok.layout
    text_starts = [i for i, t in enumerate(want) if t == lay.text_start_id]
    for prompt_end, expected_start in (("source_audio", text_starts[0]),
                                       ("source_text", text_starts[1])):
        ids, start = s2st_document(tok, src, "fr", src_text, tgt_text, tgt, prompt_end=prompt_end)
        assert ids.dtype == np.int64 and ids.tolist() == want
        assert start == expected_start
        prompt = s2st_prompt_ids(tok, src, "fr", src_text, prompt_end=prompt_end)
        assert prompt.tolist() == want[:start]
    # the default instruction is the source speech alone
    assert s2st_prompt_ids(tok, src, "fr").tolist() == want[: text_starts[0]]
    assert want[text_starts[0] - 1] == lay.audio_end_id


def test_bad_arguments_are_refused(soda_tokenizer):
    src = _codes(1, 2)
    with pytest.raises(ValueError, match="prompt end"):
        s2st_document(soda_tokenizer, src, "de", "a", "b", src, prompt_end="target_text")
    with pytest.raises(ValueError, match="source text"):
        s2st_prompt_ids(soda_tokenizer, src, "de", prompt_end="source_text")
    with pytest.raises(ValueError, match="target codes"):
        s2st_document(soda_tokenizer, src, "de", "a", "b", src[:, :0])


def _shard(tmp_path, docs, starts=None, *, stats=True):
    prefix = str(tmp_path / "sft")
    w = ShardWriter(prefix, sft=starts is not None)
    for i, d in enumerate(docs):
        w.add(d, None if starts is None else starts[i])
    identity = w.close()
    if stats:
        with open(prefix + ".stats.json", "w") as f:
            json.dump({"files": identity, "documents": len(docs),
                       "sft": {"format": "s2st", "prompt_end": "source_audio",
                               "documents": len(docs)}}, f)
    w.publish()
    return prefix


def test_sidecar_round_trip_and_identity(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 100, size=n) for n in (5, 9, 3)]
    starts = [int(rng.integers(1, len(d))) for d in docs]
    prefix = _shard(tmp_path, docs, starts)
    assert is_sft_shard(prefix)
    got = read_loss_starts(prefix)
    assert got.dtype == np.int64 and got.tolist() == starts
    assert np.load(prefix + LOSS_START_SUFFIX, allow_pickle=False).tolist() == starts
    summary = validate_shard(prefix, check_stats=True)
    assert summary.loss_starts and summary.documents == 3
    # a rewritten sidecar (same size, other values) no longer matches the stats' identity
    other = [1 if starts[0] != 1 else 2, *starts[1:]]
    write_loss_starts(prefix, other)
    assert read_loss_starts(prefix).tolist() == other
    with pytest.raises(ShardError, match="loss_start.npy has sha256"):
        check_stats_current(prefix, 3, sum(len(d) for d in docs))


@pytest.mark.parametrize("bad,match", [
    ([1, 1], "holds 2 loss starts, .* holds 3 documents"),
    ([1, 0, 1], "document 1 has loss start 0"),
    ([1, 1, 3], "document 2 has loss start 3, outside 1..2"),
    (np.array([1.0, 1.0, 1.0]), "1-D integer array"),
    (np.ones((3, 1), np.int64), "1-D integer array"),
])
def test_sidecar_validation_names_the_file(tmp_path, bad, match):
    docs = [np.arange(4), np.arange(6), np.arange(3)]
    prefix = _shard(tmp_path, docs, stats=False)
    assert not is_sft_shard(prefix) and not validate_shard(prefix).loss_starts
    np.save(prefix + LOSS_START_SUFFIX, np.asarray(bad), allow_pickle=False)
    for check in (read_loss_starts, validate_shard):
        with pytest.raises(ShardError, match=match) as e:
            check(prefix)
        assert str(e.value).startswith(prefix + LOSS_START_SUFFIX)


def test_sidecar_required_by_sft_stats_and_not_pickled(tmp_path):
    prefix = _shard(tmp_path, [np.arange(4), np.arange(5)], [1, 2])
    os.remove(prefix + LOSS_START_SUFFIX)
    with pytest.raises(ShardError, match="missing"):
        validate_shard(prefix)
    np.save(prefix + LOSS_START_SUFFIX, np.array([1, {}], dtype=object), allow_pickle=True)
    with pytest.raises(ShardError, match="not a numpy .npy array"):
        read_loss_starts(prefix)


def test_writer_refuses_missing_or_out_of_range_starts(tmp_path):
    w = ShardWriter(str(tmp_path / "x"), sft=True)
    with pytest.raises(ValueError, match="loss start per document"):
        w.add(np.arange(3))
    with pytest.raises(ValueError, match="outside 1..2"):
        w.add(np.arange(3), 3)
    w.abort()
