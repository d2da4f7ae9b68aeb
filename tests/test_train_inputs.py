"""The number of codebooks comes from the artifacts: a saved tokenizer directory carries it, shards
record it in PREFIX.stats.json; ``--num-codebooks`` may restate it and is checked."""

from __future__ import annotations

import os

import pytest
from helpers_train import write_shard

from megatron_soda.config import ConfigError
from megatron_soda.config.cli import flags_for, parse_argv
from megatron_soda.format import DEFAULT_NUM_CODEBOOKS
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError
from megatron_soda.training.run_inputs import load_tokenizer


def _config(tokenizer: str, prefixes: list[str], **fields):
    return parse_argv(flags_for(dict(device="cpu", model_size="tiny", tokenizer=tokenizer, data_path=prefixes,
                                     micro_batch_size=1, global_batch_size=1, train_iters=1, **fields)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_bpe_path):
    root = tmp_path_factory.mktemp("inputs")
    four = write_shard(str(root / "cb4" / "s"), SodaTokenizer(small_bpe_path, num_codebooks=4), "speech", 3, 1)
    eight = write_shard(str(root / "cb8" / "s"), SodaTokenizer(small_bpe_path, num_codebooks=8), "speech", 3, 1)
    return {"four": four, "eight": eight, "root": root}


def test_codebooks_come_from_the_data_when_not_given(shards, small_bpe_path):
    assert load_tokenizer(_config(small_bpe_path, [shards["four"]])).layout.num_codebooks == 4
    assert load_tokenizer(_config(small_bpe_path, [shards["four"]], num_codebooks=2)).layout.num_codebooks == 2
    with pytest.raises(ConfigError, match=r"different numbers of codebooks: .*cb8/s has 8"):
        load_tokenizer(_config(small_bpe_path, [shards["four"], shards["eight"]]))
    os.rename(shards["four"] + ".stats.json", shards["four"] + ".stats.moved")
    try:  # no record anywhere: the format's default
        tok = load_tokenizer(_config(small_bpe_path, [shards["four"]]))
        assert tok.layout.num_codebooks == DEFAULT_NUM_CODEBOOKS
    finally:
        os.rename(shards["four"] + ".stats.moved", shards["four"] + ".stats.json")


def test_a_saved_tokenizer_carries_its_codebooks(shards, small_bpe_path):
    saved = str(shards["root"] / "tok4")
    SodaTokenizer(small_bpe_path, num_codebooks=4).save(saved)
    assert load_tokenizer(_config(saved, [shards["eight"]])).layout.num_codebooks == 4  # the data check refuses later
    with pytest.raises(TokenizerError, match="saved with 4 codebooks, 8 requested"):
        load_tokenizer(_config(saved, [shards["four"]], num_codebooks=8))
