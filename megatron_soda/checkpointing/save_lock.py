"""One training run per ``--save`` directory.

Two runs writing the same ``--save`` destroy each other's work: a save starts by removing a
leftover ``iter_N.tmp`` (another run's save in flight), retention deletes the other run's
checkpoints, and both append to the same metrics.  Rank 0 takes ``SAVE/.soda.lock``
(:class:`megatron_soda.output_lock.OutputLock`: stale locks of dead processes and of an earlier
run of the same Slurm job are taken over) for the whole run and tells every rank the outcome, so
that a refused run stops on every rank at once, before anything under ``--save`` is touched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from megatron_soda.checkpointing import layout
from megatron_soda.output_lock import OutputLock, OutputLocked


class SaveLocked(layout.CheckpointError):
    """Another live run writes this ``--save`` directory."""


def lock_path(save: str) -> str:
    return os.path.join(save, layout.LOCK)


@contextlib.contextmanager
def save_dir_locked(save: str | None, device: torch.device) -> Iterator[dict[str, Any] | None]:
    """Hold ``save``'s lock for the block (collective: call on every rank after the process group
    is up).  Yields the stale holder that was taken over (rank 0; for the log), else None.
    Raises :class:`SaveLocked` on every rank when rank 0 could not take it."""
    if not save:
        yield None
        return
    lock, error = None, None
    if torch.distributed.get_rank() == 0:
        candidate = OutputLock(lock_path(save), "training run")
        try:
            candidate.acquire()
            lock = candidate
        except OutputLocked as e:
            error = str(e)
        except OSError as e:
            error = f"--save {save}: cannot create the lock file {lock_path(save)} ({e})"
    try:
        refused = torch.tensor([0.0 if error is None else 1.0], device=device)
        torch.distributed.all_reduce(refused, op=torch.distributed.ReduceOp.MAX)
        if refused.item():
            raise SaveLocked(error or f"--save {save}: another run holds it (rank 0 names it)")
        yield lock.took_over if lock is not None else None
    finally:
        if lock is not None:
            lock.release()
