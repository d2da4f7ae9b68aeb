"""Faults around a training run: two runs on one ``--save`` (the lock), a damaged newest
checkpoint (verification, ``--load-fallback``), and processes that must not outlive their parent
(megatron's asynchronous checkpoint writer, torchrun workers).

The in-process tests use real checkpoints written by ``save_checkpoint`` and real processes
killed with SIGKILL; the ``torchrun`` ones run pretrain_soda.py end to end (gloo, CPU)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch
from helpers_train import (
    PYTHON_BIN,
    REPO,
    SingleProcessMegatron,
    _free_port,
    base_args,
    build_tiny_model,
    losses,
    torchrun,
    train_workspace,
)

from megatron_soda.checkpointing import layout, retention
from megatron_soda.checkpointing.layout import CheckpointError
from megatron_soda.checkpointing.verify import choose_checkpoint, damage
from megatron_soda.output_lock import OutputLock
from megatron_soda.tokenizer import SodaTokenizer

TESTS = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, small_bpe_path) -> str:
    """A --save directory with the checkpoints of iterations 2 and 4 (tracker on 4)."""
    from megatron_soda.checkpointing import TrainState, save_checkpoint

    root = str(tmp_path_factory.mktemp("ck") / "save")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    with SingleProcessMegatron():
        model, cfg = build_tiny_model(tok.vocab_size)
        for it in (2, 4):
            save_checkpoint(root, TrainState(iteration=it), [model], None, None, model_cfg=cfg, tokenizer=tok,
                            run_args={}, save_optimizer=False)
    return root


def _truncate(path: str, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def _overwrite(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


DAMAGES = {  # name -> (file under iter_0000004, how it is damaged)
    "distcp truncated": ("__0_0.distcp", _truncate),
    "distcp missing": ("__0_1.distcp", os.remove),
    ".metadata truncated": (".metadata", _truncate),
    ".metadata missing": (".metadata", os.remove),
    "common.pt truncated": ("common.pt", _truncate),
    "metadata.json not JSON": ("metadata.json", lambda p: _overwrite(p, '{"sharded_backend": "torch_')),
    "soda_checkpoint.json truncated": (layout.META, _truncate),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_named_and_falls_back_to_the_previous(two_checkpoints, tmp_path, kind):
    root = str(tmp_path / "save")
    shutil.copytree(two_checkpoints, root)
    assert choose_checkpoint(root, fallback=False, log=print) == layout.iteration_dir(root, 4)  # whole
    name, damage_it = DAMAGES[kind]
    damaged = os.path.join(layout.iteration_dir(root, 4), name)
    damage_it(damaged)

    with pytest.raises(CheckpointError) as e:
        choose_checkpoint(root, fallback=False, log=print)
    message = str(e.value)
    assert damaged in message and "--load-fallback" in message and "\n" not in message
    logged: list[str] = []
    assert choose_checkpoint(root, fallback=True, log=logged.append) == layout.iteration_dir(root, 2)
    assert len(logged) == 1 and layout.iteration_dir(root, 2) in logged[0] and damaged in logged[0]
    # a checkpoint named explicitly is never swapped for another one
    with pytest.raises(CheckpointError, match=damaged.replace(".", r"\.")):
        choose_checkpoint(layout.iteration_dir(root, 4), fallback=True, log=print)


def test_truncation_message_gives_the_sizes(two_checkpoints, tmp_path):
    from megatron_soda.safe_loading import load_dcp_metadata

    ckpt = str(tmp_path / "iter_0000004")
    shutil.copytree(layout.iteration_dir(two_checkpoints, 4), ckpt)
    shard = os.path.join(ckpt, "__0_0.distcp")
    with open(os.path.join(ckpt, ".metadata"), "rb") as f:  # independent: the furthest byte DCP reads
        needed = max(i.offset + i.length for i in load_dcp_metadata(f).storage_data.values()
                     if i.relative_path == "__0_0.distcp")
    assert damage(ckpt) is None
    _truncate(shard, keep=(needed - 1) / os.path.getsize(shard))  # one byte short is enough
    assert damage(ckpt) == f"{shard}: truncated ({needed - 1} bytes, .metadata needs at least {needed})"


def test_tracker_trouble_falls_back_too(two_checkpoints, tmp_path):
    root = str(tmp_path / "save")
    shutil.copytree(two_checkpoints, root)
    shutil.rmtree(layout.iteration_dir(root, 4))  # the tracker names a checkpoint that is gone
    with pytest.raises(CheckpointError, match="names iteration 4"):
        choose_checkpoint(root, fallback=False, log=print)
    assert choose_checkpoint(root, fallback=True, log=print) == layout.iteration_dir(root, 2)
    os.remove(os.path.join(root, layout.TRACKER))  # checkpoints, but no tracker at all
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt: missing"):
        choose_checkpoint(root, fallback=False, log=print)
    assert choose_checkpoint(root, fallback=True, log=print) == layout.iteration_dir(root, 2)
    assert choose_checkpoint(str(tmp_path / "empty"), fallback=False, log=print) is None


def test_no_whole_checkpoint_to_fall_back_to(two_checkpoints, tmp_path):
    root = str(tmp_path / "save")
    shutil.copytree(two_checkpoints, root)
    for it in (2, 4):
        _truncate(os.path.join(layout.iteration_dir(root, it), "__0_0.distcp"))
    logged: list[str] = []
    with pytest.raises(CheckpointError, match="no earlier complete checkpoint"):
        choose_checkpoint(root, fallback=True, log=logged.append)
    assert logged and "iter_0000002" in logged[0] and "damaged too" in logged[0]


# ---------------------------------------------------------------- one writer per --save
def test_the_save_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    from megatron_soda.checkpointing.save_lock import SaveLocked, lock_path, save_dir_locked

    save = str(tmp_path / "save")
    cpu = torch.device("cpu")
    with SingleProcessMegatron():
        with OutputLock(lock_path(save), "training run"):  # a live run (this process) holds it
            with pytest.raises(SaveLocked, match=f"pid {os.getpid()}"):
                with save_dir_locked(save, cpu):
                    pass
        # a run that died without releasing it (SIGKILL, os._exit)
        dead = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import os
            from megatron_soda.output_lock import OutputLock
            OutputLock({lock_path(save)!r}, "training run").acquire()
            print(os.getpid(), flush=True)
            os._exit(9)""")], capture_output=True, text=True, check=False)
        dead_pid = int(dead.stdout)
        assert json.load(open(lock_path(save)))["pid"] == dead_pid
        with save_dir_locked(save, cpu) as took_over:
            assert took_over["pid"] == dead_pid and "is gone" in took_over["reason"]
            assert json.load(open(lock_path(save)))["pid"] == os.getpid()
        assert not os.path.exists(lock_path(save))  # released at the end of the run


def test_the_lock_file_is_not_a_checkpoint(tmp_path):
    root = str(tmp_path)
    for it in (2, 4, 6):
        tmp = layout.prepare_tmp(root, it)
        _overwrite(os.path.join(tmp, layout.META), "{}")
        layout.commit(root, it)
    with OutputLock(os.path.join(root, layout.LOCK), "training run"):
        assert retention.apply_retention(root, keep_last_k=1) == [2, 4]
        assert layout.find_checkpoint(root) == layout.iteration_dir(root, 6)
        assert sorted(os.listdir(root)) == [layout.LOCK, "iter_0000006", layout.TRACKER]


# ---------------------------------------------------------------- orphans
_ASYNC_PARENT = """
import multiprocessing, os, sys, time
sys.path.insert(0, {tests!r})
from helpers_train import SingleProcessMegatron
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron_soda.checkpointing.async_save import AsyncSaves

def write(pids_file):  # stands in for megatron's writer: forks a bucket writer, both take a while
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    child.start()
    with open(pids_file, "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(120)

if __name__ == "__main__":
    with SingleProcessMegatron():
        saves = AsyncSaves()
        from megatron.core.dist_checkpointing.strategies import filesystem_async
        manager = filesystem_async._get_write_results_queue()._manager._process.pid  # megatron's queue
        with open({pids!r} + ".manager", "w") as f:
            f.write(str(manager))
        saves.schedule(AsyncRequest(write, ({pids!r},), []), lambda: None, 1)
        time.sleep(120)
"""


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_async_checkpoint_writer_dies_with_the_trainer(tmp_path):
    """The forked writer, the bucket writer it forks and megatron's result-queue manager."""
    pids_file = str(tmp_path / "pids")
    script = tmp_path / "trainer.py"
    script.write_text(_ASYNC_PARENT.format(tests=TESTS, pids=pids_file))
    trainer = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ, PYTHONWARNINGS="ignore"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (os.path.exists(pids_file) and len(open(pids_file).read().split()) == 2):
            assert trainer.poll() is None and time.monotonic() < deadline, "the writer never started"
            time.sleep(0.1)
        writers = [int(p) for p in open(pids_file).read().split()] + [int(open(pids_file + ".manager").read())]
        assert all(psutil.pid_exists(p) for p in writers)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        assert _gone_within(writers, 5) == []
    finally:
        trainer.kill()
        _kill_all(writers)


# ---------------------------------------------------------------- end to end (torchrun)
ITERS = 4  # checkpoints at 2 and 4: the newest is damaged, the previous one is the fallback


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_bpe_path):
    return train_workspace(tmp_path_factory.mktemp("faults"), small_bpe_path)


def _args(work, name: str, *extra: str) -> tuple[str, list[str]]:
    metrics = str(work["root"] / f"{name}.jsonl")
    return metrics, base_args(work["tok"], work["speech"], work["text"], metrics, "--train-iters", str(ITERS),
                              "--eval-iters", "0", "--global-batch-size", "4", *extra)


def _worker_traceback(proc: subprocess.CompletedProcess) -> bool:
    """A worker printed a traceback (torchrun's own, for a worker that exited 1, does not count)."""
    return re.search(r'File ".*(megatron_soda/|pretrain_soda\.py|megatron/core/)', proc.stdout + proc.stderr) is not None


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "pretrain_soda.py: error:" in line]


@pytest.mark.torchrun
def test_a_second_run_on_the_same_save_is_refused(work):
    save = str(work["root"] / "ck_locked")
    metrics, cmd = _args(work, "locked", "--save", save, "--save-interval", "2")
    with OutputLock(os.path.join(save, layout.LOCK), "training run"):  # the first run, alive
        started = time.monotonic()
        proc = torchrun(2, cmd, timeout=120, check=False)
        assert time.monotonic() - started < 120  # every rank exits: no hang
    assert proc.returncode != 0
    errors = _error_lines(proc)
    assert len(errors) == 1 and "another training run writes here" in errors[0], proc.stderr[-3000:]
    assert f"pid {os.getpid()}" in errors[0] and not _worker_traceback(proc)
    assert os.listdir(save) == [] and not os.path.exists(metrics)  # nothing of the holder's touched


def _torchrun_in_background(out_dir, nproc: int, args: list[str]) -> tuple[subprocess.Popen, str]:
    """``torchrun`` of pretrain_soda.py as :func:`helpers_train.torchrun` runs it, but started in the
    background (output to files under ``out_dir``: two runs at once never block on a full pipe)."""
    os.makedirs(out_dir)
    cmd = [os.path.join(PYTHON_BIN, "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(_free_port()),
           os.path.join(REPO, "pretrain_soda.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(os.path.join(out_dir, "stdout"), "w") as out, open(os.path.join(out_dir, "stderr"), "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err), out_dir


def _finished(started: tuple[subprocess.Popen, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc, out_dir = started
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
    texts = [open(os.path.join(out_dir, name), errors="replace").read() for name in ("stdout", "stderr")]
    return subprocess.CompletedProcess(proc.args, code, *texts)


@pytest.mark.torchrun
def test_truncated_shard_fails_naming_it_and_falls_back_with_the_flag(work):
    save = str(work["root"] / "ck_damaged")
    metrics, cmd = _args(work, "first", "--save", save, "--save-interval", "2")
    torchrun(2, cmd)
    first = losses(metrics)
    assert layout.read_tracker(save) == ITERS
    shard = os.path.join(layout.iteration_dir(save, ITERS), "__0_0.distcp")
    _truncate(shard)
    # The run without --load-fallback and the one with it start at once, each on its own copy of
    # the damaged --save (the first one changes nothing in its copy, see below).
    refused = str(work["root"] / "ck_damaged_refused")
    shutil.copytree(save, refused)
    refused_shard = os.path.join(layout.iteration_dir(refused, ITERS), "__0_0.distcp")
    # a stale lock, as a killed run leaves it: taken over, and said so
    with open(os.path.join(save, layout.LOCK), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": 2**22 + 7, "pid_start": "1", "token": "x"}, f)
    again, cmd_again = _args(work, "again", "--save", refused, "--save-interval", "2", "--train-iters", str(ITERS + 2))
    fallback, cmd_fb = _args(work, "fallback", "--save", save, "--save-interval", "2", "--load-fallback")
    started_again = _torchrun_in_background(str(work["root"] / "out_again"), 2, cmd_again)
    started_fb = _torchrun_in_background(str(work["root"] / "out_fallback"), 2, cmd_fb)

    proc = _finished(started_again)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = _error_lines(proc)
    assert len(errors) == 1 and refused_shard in errors[0] and "truncated" in errors[0], proc.stderr[-3000:]
    assert not _worker_traceback(proc) and (not os.path.exists(again) or losses(again) == {})
    assert layout.read_tracker(refused) == ITERS and damage(layout.iteration_dir(refused, ITERS)) is not None

    proc = _finished(started_fb)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "took over a stale lock" in out and str(2**22 + 7) in out, out[-3000:]
    previous = layout.iteration_dir(save, ITERS - 2)
    assert f"--load-fallback: loading {previous}" in out and shard in out, out[-3000:]
    resumed = losses(fallback)
    assert sorted(resumed) == [ITERS - 1, ITERS]  # redone from the previous checkpoint
    assert resumed == {i: first[i] for i in resumed}  # as any resume from it: identical losses
    assert layout.read_tracker(save) == ITERS and damage(layout.iteration_dir(save, ITERS)) is None
    assert not os.path.exists(os.path.join(save, layout.LOCK))


@pytest.mark.torchrun
def test_workers_stop_when_torchrun_dies_of_sigusr1(work):
    """SIGUSR1 (Slurm's --signal) sent to torchrun alone: torchrun has no handler for it and
    dies; its workers must not train on as orphans.  With --exit-signal-handler they stop after
    the same iteration, save it and exit."""
    save = str(work["root"] / "ck_agent")
    metrics, cmd = _args(work, "agent", "--save", save, "--train-iters", "10000", "--exit-signal-handler")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    agent = subprocess.Popen([os.path.join(PYTHON_BIN, "torchrun"), "--nproc_per_node", "2", "--master_port",
                              str(_free_port()), os.path.join(REPO, "pretrain_soda.py"), *cmd],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not (os.path.exists(metrics) and max(losses(metrics), default=0) >= 2):
            assert agent.poll() is None and time.monotonic() < deadline, "training never reached iteration 2"
            time.sleep(0.1)
        workers = [p.pid for p in psutil.Process(agent.pid).children()
                   if "pretrain_soda.py" in " ".join(p.cmdline())]
        assert len(workers) == 2
        agent.send_signal(signal.SIGUSR1)
        agent.wait(timeout=30)
        assert _gone_within(workers, 60) == []
        stopped = layout.read_tracker(save)
        assert stopped is not None and 2 <= stopped < 10000 and max(losses(metrics)) == stopped
    finally:
        agent.kill()
        _kill_all(workers)
