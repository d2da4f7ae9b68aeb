"""Preemption and time limits: under torchrun (2 processes, gloo, CPU) ``--exit-signal-handler``
(SIGTERM to one worker: every rank stops after the same iteration, saves it, exits 0, and the
resumed run's losses are those of a run never stopped) and ``--exit-duration-in-mins``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import torch
from helpers_train import PYTHON_BIN, REPO, _free_port, base_args, losses, torchrun, train_workspace

from megatron_soda.checkpointing import layout
from megatron_soda.training.stop import StopConditions

ITERS = 10
SIGNAL_AT = 3  # SIGTERM once the metrics show this iteration
SAVE_INTERVAL = 100  # never reached: the only checkpoint is the one taken on the signal


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_bpe_path):
    return train_workspace(tmp_path_factory.mktemp("preempt"), small_bpe_path)


def args(work, name: str, *extra: str) -> tuple[str, list[str]]:
    metrics = str(work["root"] / f"{name}.jsonl")
    return metrics, base_args(
        work["tok"],
        work["speech"],
        work["text"],
        metrics,
        "--train-iters",
        str(ITERS),
        "--eval-interval",
        "1000",
        "--global-batch-size",  # one micro-batch per rank: what is checked is where the ranks stop
        "4",
        *extra,
    )


def last_iteration(metrics: str) -> int:
    try:
        return max(losses(metrics), default=0)
    except (OSError, ValueError):  # not there yet, or a line being written
        return 0


def run_and_signal(cmd: list[str], metrics: str, timeout: float = 120) -> tuple[int, str]:
    """Start torchrun; SIGTERM one worker's process group (not torchrun) once ``metrics`` reaches
    SIGNAL_AT."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [
            os.path.join(PYTHON_BIN, "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            os.path.join(REPO, "pretrain_soda.py"),
            *cmd,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while last_iteration(metrics) < SIGNAL_AT:
            assert proc.poll() is None and time.monotonic() < deadline, (
                "run ended before the signal"
            )
            time.sleep(0.05)
        workers = [
            p
            for p in psutil.Process(proc.pid).children()
            if "pretrain_soda.py" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, workers
        # one rank only, as torchrun signals it: its process group (megatron's helper processes too)
        os.killpg(workers[-1].pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


@pytest.mark.torchrun
def test_sigterm_to_one_rank_saves_that_iteration_and_resumes_exactly(work):
    ckpt = str(work["root"] / "ck_signal")
    metrics, cmd = args(
        work,
        "signal",
        "--save",
        ckpt,
        "--save-interval",
        str(SAVE_INTERVAL),
        "--exit-signal-handler",
    )
    rc, out = run_and_signal(cmd, metrics)
    assert rc == 0, out[-4000:]
    stopped = layout.read_tracker(ckpt)
    assert SIGNAL_AT <= stopped < ITERS and stopped % SAVE_INTERVAL, stopped
    assert f"stopping after iteration {stopped}: SIGTERM received" in out, out[-4000:]
    assert max(losses(metrics)) == stopped  # both ranks stopped there; nothing trained after

    resumed = str(work["root"] / "resumed.jsonl")
    metrics_full, full_cmd = args(work, "full")
    # the same command (requeued job), and beside it (independent) a run never stopped
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(torchrun, 2, [*cmd, "--metrics-jsonl", resumed]),
            pool.submit(torchrun, 2, full_cmd),
        ]
        for run in runs:
            run.result()
    full, after = losses(metrics_full), losses(resumed)
    assert sorted(after) == list(range(stopped + 1, ITERS + 1))
    assert {i: full[i] for i in after} == after  # identical, not close
    assert layout.read_tracker(ckpt) == ITERS


@pytest.mark.torchrun
def test_exit_duration_stops_after_saving(work):
    ckpt = str(work["root"] / "ck_duration")
    metrics, cmd = args(work, "duration", "--save", ckpt, "--exit-duration-in-mins", "0.0001")
    proc = torchrun(2, cmd)
    assert "--exit-duration-in-mins 0.0001" in proc.stdout + proc.stderr
    assert layout.read_tracker(ckpt) == 1 == max(losses(metrics))


def test_handler_only_with_the_flag_and_restored_after():
    before = signal.getsignal(signal.SIGUSR1)
    with StopConditions(None, None).installed() as off:
        assert (
            signal.getsignal(signal.SIGUSR1) is before and off.reason(torch.device("cpu")) is None
        )
    stop = StopConditions("SIGUSR1", None)
    with stop.installed():
        assert stop.reason(torch.device("cpu")) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.reason(torch.device("cpu")) == "SIGUSR1 received (--exit-signal-handler)"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_duration_is_checked_against_the_start():
    assert StopConditions(None, 1.0, start=time.monotonic()).reason(torch.device("cpu")) is None
    why = StopConditions(None, 1.0, start=time.monotonic() - 61).reason(torch.device("cpu"))
    assert why is not None and "--exit-duration-in-mins 1" in why
