"""Checkpoint retention (--keep-last-k, --keep-every-iters) on fake checkpoint directories: which
ones are kept, that nothing unfinished is touched, and that an interrupted deletion never looks
like a checkpoint."""

from __future__ import annotations

import os

import pytest

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.checkpointing import layout, retention
from megatron_soda.checkpointing.layout import CheckpointError
from megatron_soda.config.cli import parse_argv


def _save(root: str, iteration: int, commit: bool = True) -> str:
    tmp = layout.prepare_tmp(root, iteration)
    write_json_atomic(os.path.join(tmp, layout.META), {"iteration": iteration})
    return layout.commit(root, iteration) if commit else tmp


def test_keep_last_k_and_every_m(tmp_path):
    its = range(2, 26, 2)
    assert retention.to_delete(its, keep_last_k=2) == list(range(2, 22, 2))
    assert retention.to_delete(its, keep_last_k=3, keep_every_iters=8) == [2, 4, 6, 10, 12, 14, 18]
    assert retention.to_delete(its, keep_last_k=100) == []
    # the tracker's checkpoint and a save in flight are kept whatever their age
    assert retention.to_delete(its, keep_last_k=1, latest=4, protected=[6]) == [2, *range(8, 24, 2)]
    with pytest.raises(ValueError):
        retention.to_delete(its, keep_last_k=0)


def test_a_twelve_iteration_run_saving_every_2_keeps_last_k_and_every_m(tmp_path):
    root = str(tmp_path)
    deleted = []
    for it in range(2, 13, 2):  # retention runs after each commit, as the trainer does
        _save(root, it)
        deleted += retention.apply_retention(root, keep_last_k=2, keep_every_iters=4)
    assert deleted == [2, 6]
    assert retention.complete_iterations(root) == [4, 8, 10, 12]
    assert sorted(os.listdir(root)) == [
        "iter_0000004",
        "iter_0000008",
        "iter_0000010",
        "iter_0000012",
        layout.TRACKER,
    ]


def test_unfinished_and_foreign_entries_are_never_deleted(tmp_path):
    root = str(tmp_path)
    for it in (2, 4, 6):
        _save(root, it)
    _save(root, 8, commit=False)  # a save in flight (or crashed): iter_8.tmp
    os.makedirs(os.path.join(root, "iter_0000001"))  # no metadata: not a complete checkpoint
    os.makedirs(os.path.join(root, "notes"))
    layout.write_tracker(root, 2)  # e.g. a run rewound to iteration 2 by hand: the tracker's wins
    assert retention.apply_retention(root, keep_last_k=1) == [4]
    assert sorted(os.listdir(root)) == [
        "iter_0000001",
        "iter_0000002",
        "iter_0000006",
        "iter_0000008.tmp",
        layout.TRACKER,
        "notes",
    ]
    assert layout.find_checkpoint(root) == layout.iteration_dir(root, 2)


def test_an_interrupted_deletion_does_not_look_like_a_checkpoint(tmp_path, monkeypatch):
    root = str(tmp_path)
    for it in (2, 4, 6):
        _save(root, it)

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt("killed during rmtree")

    monkeypatch.setattr(retention.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        retention.apply_retention(root, keep_last_k=2)
    monkeypatch.undo()
    doomed = layout.iteration_dir(root, 2) + retention.DELETING
    assert os.path.isfile(
        os.path.join(doomed, layout.META)
    )  # renamed first, whole files still there
    assert retention.complete_iterations(root) == [4, 6]
    assert layout.find_checkpoint(root) == layout.iteration_dir(root, 6)
    with pytest.raises(CheckpointError, match="not a published checkpoint"):
        layout.find_checkpoint(doomed)  # not even when named directly (--load)
    assert retention.apply_retention(root, keep_last_k=2) == []  # the next pass clears the leftover
    assert not os.path.exists(doomed)


@pytest.mark.parametrize("suffix", [".tmp", ".old", ".deleting"])
def test_unpublished_directories_are_refused_by_name(tmp_path, suffix):
    path = _save(str(tmp_path), 2) + suffix
    os.rename(layout.iteration_dir(str(tmp_path), 2), path)
    with pytest.raises(CheckpointError, match="not a published checkpoint"):
        layout.find_checkpoint(path)


ARGS = (
    "--device cpu --model-size tiny --tokenizer tokenizer.json --num-codebooks 8 --data-path P "
    "--train-iters 12 --global-batch-size 8 --micro-batch-size 2"
).split()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--keep-last-k", "2"], "need --save"),
        (["--async-save"], "need --save"),
        (["--save", "D", "--keep-every-iters", "4"], "--keep-every-iters needs --keep-last-k"),
        (["--save", "D", "--keep-last-k", "0"], "must be >= 1"),
    ],
)
def test_retention_and_async_flags_are_checked(extra, message, capsys):
    with pytest.raises(SystemExit):
        parse_argv(ARGS + extra)
    assert message in capsys.readouterr().err


def test_flags_parse():
    c = parse_argv(
        ARGS + ["--save", "D", "--async-save", "--keep-last-k", "3", "--keep-every-iters", "1000"]
    )
    assert (c.checkpoint.async_save, c.checkpoint.keep_last_k, c.checkpoint.keep_every_iters) == (
        True,
        3,
        1000,
    )
