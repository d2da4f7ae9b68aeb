"""Bad shards are refused before training, with a message naming the file."""

from __future__ import annotations

import json
import os

import pytest
from helpers_train import write_shard

from megatron_soda.audio.codec import codec_fingerprint
from megatron_soda.checkpointing.io import check_data_codec
from megatron_soda.checkpointing.layout import CheckpointError
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.training.data_checks import (
    DataError,
    check_blend_provenance,
    check_prefix,
    check_split,
)


@pytest.fixture(scope="module")
def tok(small_bpe_path):
    return SodaTokenizer(small_bpe_path, num_codebooks=8)


@pytest.fixture
def shard(tmp_path, tok):
    return write_shard(str(tmp_path / "speech" / "shard"), tok, "speech", num_docs=20, seed=0)


def test_a_good_shard_passes(shard, tok):
    summary = check_prefix(shard, tok)
    assert summary["sequences"] == 20 and summary["tokens"] == os.path.getsize(shard + ".bin") // 4


@pytest.mark.parametrize("suffix", [".bin", ".idx"])
def test_missing_file(shard, tok, suffix):
    os.remove(shard + suffix)
    with pytest.raises(DataError, match=f"{shard}{suffix}: missing"):
        check_prefix(shard, tok)


def test_missing_prefix_names_the_path(tmp_path, tok):
    with pytest.raises(DataError, match=str(tmp_path / "nope.idx")):
        check_prefix(str(tmp_path / "nope"), tok)


def _truncate(path: str, drop: int) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - drop)


def test_truncated_bin(shard, tok):
    _truncate(shard + ".bin", 8)
    with pytest.raises(DataError, match=rf"{shard}\.bin: truncated"):
        check_prefix(shard, tok)


@pytest.mark.parametrize("drop", [4, 200])
def test_truncated_idx(shard, tok, drop):
    _truncate(shard + ".idx", drop)
    with pytest.raises(DataError, match=rf"{shard}\.idx: truncated"):
        check_prefix(shard, tok)


def test_ids_beyond_the_vocabulary(tmp_path, tok, small_bpe_path):
    """A shard made with 8 codebooks read by a 1-codebook tokenizer (no stats.json to tell)."""
    prefix = write_shard(str(tmp_path / "s" / "shard"), tok, "speech", num_docs=5, seed=0)
    os.remove(prefix + ".stats.json")
    small = SodaTokenizer(small_bpe_path, num_codebooks=1)
    with pytest.raises(DataError, match=rf"{prefix}\.bin: token id \d+ at position \d+ is outside"):
        check_prefix(prefix, small)
    check_prefix(prefix, small, mode="quick")  # quick mode does not scan ids


def test_layout_recorded_by_preprocessing_must_match(shard, small_bpe_path):
    other = SodaTokenizer(small_bpe_path, num_codebooks=4)
    with pytest.raises(DataError, match=rf"{shard}\.stats\.json: token layout"):
        check_prefix(shard, other)
    with open(shard + ".stats.json") as f:
        assert json.load(f)["layout"]["num_codebooks"] == 8


def test_split_that_leaves_a_split_empty():
    check_split("P", 200, "98,2,0")
    with pytest.raises(DataError, match="P: --split 969,30,1 gives its test split no documents"):
        check_split("P", 200, "969,30,1")


def test_a_blend_of_one_codec_passes_and_says_which(tmp_path, tok):
    a = write_shard(str(tmp_path / "a" / "s"), tok, "speech", 5, seed=0)
    b = write_shard(str(tmp_path / "b" / "s"), tok, "speech", 5, seed=1)
    text = write_shard(str(tmp_path / "t" / "s"), tok, "text", 5, seed=2)  # no codec: any is fine
    old = write_shard(str(tmp_path / "o" / "s"), tok, "speech", 5, seed=3, codec="random:tiny:9")
    with open(old + ".stats.json") as f:
        stats = json.load(f)
    for key in ("codec", "codec_fingerprint", "codec_random"):  # made before fingerprints: unknown
        stats.pop(key)
    with open(old + ".stats.json", "w") as f:
        json.dump(stats, f)
    shared = check_blend_provenance([text, a, old, b])
    assert shared == {
        "codec": "random:tiny",
        "codec_fingerprint": codec_fingerprint("random:tiny"),
        "codec_random": True,
    }
    assert check_blend_provenance([text]) == {}


def test_a_blend_of_two_codecs_is_refused_naming_both(tmp_path, tok):
    a = write_shard(str(tmp_path / "a" / "s"), tok, "speech", 5, seed=0)
    b = write_shard(str(tmp_path / "b" / "s"), tok, "speech", 5, seed=1, codec="random:tiny:1")
    with pytest.raises(DataError) as e:
        check_blend_provenance([a, b])
    msg = str(e.value)
    assert f"{a} has codec_fingerprint {codec_fingerprint('random:tiny')}" in msg
    assert f"{b} has codec_fingerprint {codec_fingerprint('random:tiny:1')}" in msg


def test_a_blend_of_two_codebook_counts_or_layouts_is_refused(tmp_path, tok, small_bpe_path):
    a = write_shard(str(tmp_path / "a" / "s"), tok, "speech", 5, seed=0)
    four = SodaTokenizer(small_bpe_path, num_codebooks=4)
    b = write_shard(str(tmp_path / "b" / "s"), four, "speech", 5, seed=1)
    with pytest.raises(DataError, match=f"{a} has num_codebooks 8, {b} has num_codebooks 4"):
        check_blend_provenance([a, b])
    t = write_shard(str(tmp_path / "t" / "s"), four, "text", 5, seed=1)  # text: the layout differs
    with pytest.raises(DataError, match=f"{a} has layout .*, {t} has layout"):
        check_blend_provenance([a, t])


def test_a_checkpoint_of_another_codec_is_refused_on_resume_and_noted_on_finetune():
    meta = {"data": {"codec": "kyutai/mimi", "codec_fingerprint": "aaaa"}}
    ours = {"codec": "random:tiny", "codec_fingerprint": "bbbb"}
    with pytest.raises(
        CheckpointError,
        match="trained on shards of codec kyutai/mimi .*this run's shards are of codec random:tiny",
    ):
        check_data_codec("ck", meta, ours, finetune=False, log=print)
    notes: list[str] = []
    check_data_codec("ck", meta, ours, finetune=True, log=notes.append)
    assert len(notes) == 1 and "fine-tuning on the codes of another codec" in notes[0]
    for unknown in ({}, {"data": {}}):  # checkpoints from before the record: no opinion
        check_data_codec("ck", unknown, ours, finetune=False, log=notes.append)
    check_data_codec("ck", meta, {}, finetune=False, log=notes.append)  # text-only data
    check_data_codec(
        "ck", meta, {**ours, "codec_fingerprint": "aaaa"}, finetune=False, log=notes.append
    )
    assert len(notes) == 1
