"""Which checkpoints of a ``--save`` directory to keep (``--keep-last-k``, ``--keep-every-iters``)
and how to delete the others without ever leaving something that looks complete.

Only *complete* checkpoints are candidates: an ``iter_N`` directory (exact name, no suffix) holding
``soda_checkpoint.json``.  Never deleted: the tracker's checkpoint, the ``--keep-last-k`` newest,
every iteration that is a multiple of ``--keep-every-iters``, any iteration passed as protected
(a save in flight), and anything else in the directory (``.tmp`` saves, a commit's ``.old``).

A deletion first renames ``iter_N`` to ``iter_N.deleting`` (atomic on one file system), then
removes it: a deletion interrupted half-way leaves a ``.deleting`` directory, which no loader
accepts (:func:`layout.find_checkpoint`) and the next pass removes.  Rank 0 only.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable

from megatron_soda.checkpointing import layout

DELETING = ".deleting"
_COMPLETE_NAME = re.compile(r"iter_(\d{7,})")


def complete_iterations(root: str) -> list[int]:
    """Iterations of the complete checkpoints under ``root``, ascending."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _COMPLETE_NAME.fullmatch(name)
        if m and os.path.isfile(os.path.join(root, name, layout.META)):
            found.append(int(m.group(1)))
    return sorted(found)


def to_delete(
    iterations: Iterable[int],
    *,
    keep_last_k: int,
    keep_every_iters: int | None = None,
    latest: int | None = None,
    protected: Iterable[int] = (),
) -> list[int]:
    """The iterations (ascending) that retention removes from ``iterations`` (complete ones)."""
    ordered = sorted(set(iterations))
    if keep_last_k < 1:
        raise ValueError(f"keep_last_k must be >= 1, got {keep_last_k}")
    keep = set(ordered[-keep_last_k:]) | set(protected)
    if latest is not None:
        keep.add(latest)
    if keep_every_iters:
        keep |= {i for i in ordered if i % keep_every_iters == 0}
    return [i for i in ordered if i not in keep]


def delete_checkpoint(root: str, iteration: int) -> None:
    """Rename ``iter_N`` to ``iter_N.deleting`` (from then on it is not a checkpoint), then remove it."""
    final = layout.iteration_dir(root, iteration)
    doomed = final + DELETING
    if os.path.exists(doomed):  # a previous deletion of the same iteration was interrupted
        shutil.rmtree(doomed)
    os.rename(final, doomed)
    layout.fsync_dir(root)
    shutil.rmtree(doomed)


def remove_interrupted_deletions(root: str) -> list[str]:
    """Remove the ``iter_N.deleting`` leftovers of interrupted deletions; returns their names."""
    names = sorted(n for n in os.listdir(root) if n.startswith("iter_") and n.endswith(DELETING))
    for name in names:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return names


def apply_retention(
    root: str,
    *,
    keep_last_k: int,
    keep_every_iters: int | None = None,
    protected: Iterable[int] = (),
) -> list[int]:
    """Delete what :func:`to_delete` selects among ``root``'s complete checkpoints (after a
    commit, rank 0); returns the deleted iterations."""
    remove_interrupted_deletions(root)
    doomed = to_delete(
        complete_iterations(root),
        keep_last_k=keep_last_k,
        keep_every_iters=keep_every_iters,
        latest=layout.read_tracker(root),
        protected=protected,
    )
    for iteration in doomed:
        delete_checkpoint(root, iteration)
    return doomed
