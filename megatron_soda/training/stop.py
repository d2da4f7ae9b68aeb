"""When a run stops early: on a signal (``--exit-signal-handler``) or after a wall-clock budget
(``--exit-duration-in-mins``), both with Megatron-LM's flag names.

The signal handler only records the signal; nothing is done inside it.  At every step boundary
:meth:`StopConditions.reason` all-reduces (max over ranks) one small tensor, ``[signal seen,
minutes elapsed]``, so every rank stops after the same iteration even when Slurm, torchrun or a
user signalled one rank only; the trainer then saves a checkpoint of that iteration and returns,
and the process exits 0.  Megatron-LM does the same with an all-gather of the flag
(``megatron/training/dist_signal_handler.py``, ``training.py``); this is our own code.

The handler is installed only when the flag is given, for the life of the ``with`` block (from
before the distributed set-up, so that a signal during set-up is not lost), and the previous
handlers are restored on leaving it.

A worker must not outlive its torchrun agent: torchrun forwards SIGTERM, SIGINT, SIGHUP and
SIGQUIT to its workers, but any other signal that ends it (SIGUSR1, which Slurm's ``--signal``
sends, has no handler in torchrun; SIGKILL; an OOM kill) left the workers training on, orphaned,
with nobody to collect them.  :func:`die_with_launcher` asks the kernel to send each worker the
stop signal when its agent dies: with ``--exit-signal-handler`` that is ``--exit-signal`` (the
ranks agree, save and exit 0, as on any stop), else SIGTERM (the process ends).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")


class StopConditions:
    """The early-stop conditions of one run; :meth:`reason` is collective when any is set."""

    def __init__(
        self, signal_name: str | None, duration_mins: float | None, start: float | None = None
    ) -> None:
        self.signal_name = signal_name
        self.duration_mins = duration_mins
        self.start = time.monotonic() if start is None else start
        self.received: int | None = None

    @property
    def active(self) -> bool:
        return self.signal_name is not None or self.duration_mins is not None

    @contextmanager
    def installed(self) -> Iterator[StopConditions]:
        """Catch ``signal_name`` (when set) inside the block; restore the old handler after."""
        if self.signal_name is None:
            yield self
            return
        sig = signal.Signals[self.signal_name]
        previous = signal.signal(sig, self._on_signal)
        try:
            start_checkpoint_writer_shielded(sig)
            yield self
        finally:
            signal.signal(sig, previous)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum

    def reason(self, device: torch.device) -> str | None:
        """Why every rank should stop now, or None; the same answer on every rank."""
        if not self.active:
            return None
        minutes = (time.monotonic() - self.start) / 60
        local = torch.tensor(
            [1.0 if self.received is not None else 0.0, minutes], dtype=torch.float64, device=device
        )
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX)
        signalled, elapsed = local.tolist()
        if signalled:
            name = (
                signal.Signals(self.received).name
                if self.received is not None
                else self.signal_name
            )
            return f"{name} received (--exit-signal-handler)"
        if self.duration_mins is not None and elapsed > self.duration_mins:
            return f"{elapsed:.2f} min elapsed > --exit-duration-in-mins {self.duration_mins:g}"
        return None


def start_checkpoint_writer_shielded(sig: signal.Signals) -> None:
    """Start megatron-core's checkpoint result queue now, ignoring ``sig``.

    megatron-core 0.16.1's file writer reports through a ``multiprocessing`` Manager that it
    *spawns* at the first save (``filesystem_async._get_write_results_queue``).  A spawned process
    does not inherit our handler, so the very signal that asks for a final save (Slurm signals
    every process of the step; torchrun signals each worker's process group) killed it, and that
    save failed with ``BrokenPipeError``/``ConnectionRefusedError`` (seen under the local Slurm
    of ``tests/test_slurm.py``).  An ignored signal stays ignored across ``exec`` (a blocked one
    does not: the spawn resets the mask), so a manager started here never dies of ``sig``; it is
    shut down at exit as before.  ``sig`` is blocked meanwhile, so that one arriving now stays
    pending (Linux never discards a blocked signal) and reaches the handler afterwards.  Forked
    helpers (the parallel writers, data-loader workers) inherit the handler itself.
    """
    from megatron_soda.checkpointing.async_save import start_write_results_queue

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    handler = signal.signal(sig, signal.SIG_IGN)
    try:
        start_write_results_queue()  # as megatron's _get_write_results_queue, dying with this process
    finally:
        signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def die_with_launcher(signal_name: str | None) -> signal.Signals | None:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set), have the kernel send this worker
    ``signal_name`` (the ``--exit-signal`` when the handler is on; SIGTERM when None) when its
    agent dies; returns the signal, None when not under torchrun or not supported.  Not done for
    a process started by hand: its parent is a shell, whose end (``nohup``, ``disown``) must not
    stop a run."""
    from megatron_soda.compat.parent_death import die_with_parent

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    sig = signal.Signals[signal_name or "SIGTERM"]
    parent = os.getppid()
    if parent == 1:  # the agent is gone already
        os.kill(os.getpid(), sig)
    return sig if die_with_parent(sig, parent) else None
