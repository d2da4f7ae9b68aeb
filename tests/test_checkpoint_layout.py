"""Checkpoint directory protocol (crash safety) and compatibility checks, without training."""

from __future__ import annotations

import json
import os

import pytest

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.checkpointing import layout
from megatron_soda.checkpointing.layout import CheckpointError
from megatron_soda.models import preset
from megatron_soda.tokenizer import SodaTokenizer


def _fake_save(root: str, iteration: int, commit: bool = True) -> str:
    tmp = layout.prepare_tmp(root, iteration)
    with open(os.path.join(tmp, "weights"), "w") as f:
        f.write(str(iteration))
    write_json_atomic(os.path.join(tmp, layout.META), {"iteration": iteration})
    return layout.commit(root, iteration) if commit else tmp


def test_commit_publishes_and_moves_the_tracker(tmp_path):
    root = str(tmp_path)
    assert layout.find_checkpoint(root) is None
    _fake_save(root, 6)
    assert layout.read_tracker(root) == 6
    assert layout.find_checkpoint(root) == layout.iteration_dir(root, 6)
    _fake_save(root, 12)
    assert layout.find_checkpoint(root) == layout.iteration_dir(root, 12)
    assert sorted(os.listdir(root)) == ["iter_0000006", "iter_0000012", layout.TRACKER]


def test_a_crash_before_commit_leaves_the_previous_checkpoint_loadable(tmp_path):
    root = str(tmp_path)
    _fake_save(root, 6)
    _fake_save(root, 12, commit=False)  # e.g. killed while writing
    assert layout.find_checkpoint(root) == layout.iteration_dir(root, 6)
    _fake_save(root, 12)  # the next save of 12 replaces the stale temporary directory
    assert not os.path.exists(layout.iteration_dir(root, 12) + ".tmp")
    with open(os.path.join(layout.iteration_dir(root, 12), "weights")) as f:
        assert f.read() == "12"


def test_resaving_an_iteration_replaces_it(tmp_path):
    root = str(tmp_path)
    _fake_save(root, 6)
    _fake_save(root, 6)
    assert sorted(os.listdir(root)) == ["iter_0000006", layout.TRACKER]


def test_tracker_pointing_at_a_missing_checkpoint_is_an_error(tmp_path):
    layout.write_tracker(str(tmp_path), 42)
    with pytest.raises(CheckpointError, match="iter_0000042 is missing or incomplete"):
        layout.find_checkpoint(str(tmp_path))
    (tmp_path / layout.TRACKER).write_text("garbage")
    with pytest.raises(CheckpointError, match="expected an iteration number"):
        layout.read_tracker(str(tmp_path))


def test_an_iteration_directory_can_be_loaded_directly(tmp_path):
    path = _fake_save(str(tmp_path), 3)
    assert layout.find_checkpoint(path) == path


def _meta(cfg, tok) -> dict:
    return {"model": cfg.to_dict(), "tokenizer": dict(tok.unique_identifiers)}


def test_compatibility_refuses_another_shape_or_tokenizer(small_bpe_path):
    from megatron_soda.checkpointing.io import check_compatible

    tok8 = SodaTokenizer(small_bpe_path, num_codebooks=8)
    cfg = preset("tiny").with_overrides(vocab_size=tok8.vocab_size)
    check_compatible("CK", _meta(cfg, tok8), cfg, tok8)
    check_compatible("CK", _meta(cfg, tok8), cfg.with_overrides(seq_length=512, rotary_base=10), tok8)

    wider = cfg.with_overrides(hidden_size=128)
    with pytest.raises(CheckpointError, match="CK: checkpoint of another model shape .*hidden_size: checkpoint 64 vs this run 128"):
        check_compatible("CK", _meta(cfg, tok8), wider, tok8)

    tok4 = SodaTokenizer(small_bpe_path, num_codebooks=4)
    cfg4 = cfg.with_overrides(vocab_size=tok8.vocab_size)  # same shape, other tokenizer
    meta = _meta(cfg4, tok8)
    with pytest.raises(CheckpointError, match=r"CK: saved with another tokenizer .*--tokenizer CK/tokenizer \(it carries"):
        check_compatible("CK", json.loads(json.dumps(meta)), cfg4, tok4)
