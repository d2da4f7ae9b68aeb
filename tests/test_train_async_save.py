"""``--async-save`` and checkpoint retention: the commit protocol in one process, then end to end
under torchrun (gloo, CPU).

One data-parallel run with the distributed optimizer saves every 2 iterations in the background,
keeps the 2 newest checkpoints plus every 4th iteration, and is killed while the checkpoint of its
last iteration is being written; a second run resumes.  Resumed losses must be *identical* to the
uninterrupted ones (same layout, same computation; see test_train_torchrun.py)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers_train import (
    SingleProcessMegatron,
    base_args,
    build_tiny_model,
    losses,
    torchrun,
    train_workspace,
)

from megatron_soda.checkpointing import layout
from megatron_soda.checkpointing.retention import complete_iterations
from megatron_soda.tokenizer import SodaTokenizer

ITERS = 8
FLAGS = [
    "--train-iters",
    str(ITERS),
    "--global-batch-size",
    "4",
    "--use-distributed-optimizer",
    "--async-save",
    "--save-interval",
    "2",
    "--keep-last-k",
    "2",
    "--keep-every-iters",
    "4",
    "--eval-iters",
    "0",
]


def test_async_save_publishes_only_after_the_write_and_keeps_the_values_at_save_time(
    tmp_path, small_bpe_path
):
    from megatron_soda.checkpointing import TrainState, save_checkpoint
    from megatron_soda.checkpointing.async_save import AsyncSaves
    from megatron_soda.testing.checkpoints import load_stage

    root, tok = str(tmp_path / "ck"), SodaTokenizer(small_bpe_path, num_codebooks=8)
    with SingleProcessMegatron():
        model, cfg = build_tiny_model(tok.vocab_size)
        at_save = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
        saves, committed = AsyncSaves(), []
        kwargs = dict(model_cfg=cfg, tokenizer=tok, run_args={}, save_optimizer=False)
        path = save_checkpoint(
            root,
            TrainState(iteration=2),
            [model],
            None,
            None,
            **kwargs,
            async_saves=saves,
            on_commit=committed.append,
        )
        assert saves.in_flight == 2 and committed == [] and layout.read_tracker(root) is None
        assert os.path.isdir(path + ".tmp") and not os.path.exists(path)
        with torch.no_grad():  # training goes on while the shards are written
            for p in model.parameters():
                p.add_(1.0)
        saves.wait()
        assert saves.in_flight is None and committed == [path] and layout.read_tracker(root) == 2
        assert layout.read_meta(path)["train_state"]["iteration"] == 2
        fresh, _ = build_tiny_model(tok.vocab_size, seed=7)
        load_stage(fresh, path)
        for k, v in fresh.state_dict().items():
            if k in at_save:
                assert torch.equal(v, at_save[k]), k


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_bpe_path):
    return train_workspace(tmp_path_factory.mktemp("async"), small_bpe_path)


def launch(work, name: str, *extra: str, check: bool = True):
    metrics = str(work["root"] / f"{name}.jsonl")
    proc = torchrun(
        2, base_args(work["tok"], work["speech"], work["text"], metrics, *extra), check=check
    )
    return metrics, proc


@pytest.mark.torchrun
def test_async_save_commits_after_all_writes_survives_a_crash_and_resumes_exactly(work):
    ckpt = str(work["root"] / "ck")
    first, proc = launch(
        work, "crashed", *FLAGS, "--save", ckpt, "--inject-crash-in-save", str(ITERS), check=False
    )
    assert (
        proc.returncode != 0
        and f"injected crash: --inject-crash-in-save {ITERS}: data being written" in proc.stderr
    )
    uninterrupted = losses(first)
    assert sorted(uninterrupted) == list(range(1, ITERS + 1))
    assert "saving " + layout.iteration_dir(ckpt, 2) + " in the background" in proc.stdout
    # the save in flight was never published; retention ran after each commit: the last 2 (2 is
    # gone) + every 4th (4 is kept once it is no longer among the last 2: below)
    assert layout.read_tracker(ckpt) == 6
    assert os.path.isdir(layout.iteration_dir(ckpt, ITERS) + ".tmp")
    assert complete_iterations(ckpt) == [4, 6]
    assert not [n for n in os.listdir(ckpt) if n.endswith(".deleting")]

    resumed, proc = launch(work, "resumed", *FLAGS, "--save", ckpt)
    assert "loaded " + layout.iteration_dir(ckpt, 6) in proc.stdout
    got = losses(resumed)
    assert got == {i: uninterrupted[i] for i in range(7, ITERS + 1)}
    assert layout.read_tracker(ckpt) == ITERS  # the final save is committed before the run ends
    assert complete_iterations(ckpt) == [4, 6, 8]
    assert sorted(os.listdir(ckpt)) == [f"iter_{i:07d}" for i in (4, 6, 8)] + [layout.TRACKER]

    # an older asynchronously saved checkpoint (kept by --keep-every-iters) resumes exactly too:
    # two iterations (the second one after an update with the loaded optimizer state), stopped
    # by --exit-interval so that the LR schedule is the one of --train-iters ITERS
    again, proc = launch(
        work,
        "from4",
        *FLAGS,
        "--load",
        layout.iteration_dir(ckpt, 4),
        "--save",
        str(work["root"] / "ck_from4"),
        "--exit-interval",
        "6",
    )
    assert losses(again) == {i: uninterrupted[i] for i in (5, 6)}
