"""On-disk layout of a checkpoint directory and its crash-safe commit protocol.

    SAVE/
      latest_checkpointed_iteration.txt   iteration of the newest *complete* checkpoint
      iter_0000006/                       dist_checkpointing files + soda_checkpoint.json
                                          + tokenizer/ + run_args.json
      iter_0000012.tmp/                   a save in progress (or one that crashed)
      iter_0000002.deleting/              a checkpoint being deleted by retention (retention.py)
      .soda.lock                          the one training run writing here (save_lock.py)

A save writes everything into ``iter_N.tmp``, renames it to ``iter_N`` (atomic on one file
system) and only then rewrites the tracker (write to a temp file, ``os.replace``).  A crash at any
point leaves the tracker naming the previous complete checkpoint, which is what a restart loads;
a stale ``.tmp`` directory is removed by the next save of that iteration.  With ``--async-save``
the rename and the tracker update run only once every rank's background write has finished
(:mod:`megatron_soda.checkpointing.async_save`).
"""

from __future__ import annotations

import json
import os
import shutil

from megatron_soda import atomic_files

TRACKER = "latest_checkpointed_iteration.txt"
META = "soda_checkpoint.json"
LOCK = ".soda.lock"  # not a checkpoint: nothing here lists it (names start with iter_ or the tracker's)
UNPUBLISHED = ("tmp", "old", "deleting")  # suffixes of iter_N directories that are not checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into this run."""


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_tracker(root: str) -> int | None:
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{path}: expected an iteration number, found {text!r}") from None


def write_tracker(root: str, iteration: int) -> None:
    atomic_files.write_text_atomic(os.path.join(root, TRACKER), f"{iteration}\n", durable=True)
    fsync_dir(root)


def prepare_tmp(root: str, iteration: int) -> str:
    """Fresh ``iter_N.tmp`` (a leftover from a crashed save is discarded).  Rank 0 only."""
    tmp = iteration_dir(root, iteration) + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


def commit(root: str, iteration: int) -> str:
    """Publish ``iter_N.tmp`` as ``iter_N`` and point the tracker at it.  Rank 0 only."""
    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    old = final + ".old"
    if os.path.exists(final):  # the same iteration saved again (e.g. a rerun): replace it
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(root)
    write_tracker(root, iteration)
    if os.path.exists(old):
        shutil.rmtree(old)
    return final


def find_checkpoint(path: str) -> str | None:
    """The checkpoint to load from ``path``: ``path`` itself if it is one ``iter_N`` directory,
    else the one named by its tracker; None if ``path`` holds no checkpoint yet.  A directory
    that is not a published checkpoint (``.tmp``, ``.old``, ``.deleting``) is refused."""
    name, _, suffix = os.path.basename(os.path.normpath(path)).rpartition(".")
    if name.startswith("iter_") and suffix in UNPUBLISHED:
        raise CheckpointError(f"{path}: not a published checkpoint (.{suffix}: an unfinished save, "
                              "commit or deletion); load the directory holding it or a complete iter_N")
    if os.path.isfile(os.path.join(path, META)):
        return path
    iteration = read_tracker(path)
    if iteration is None:
        return None
    ckpt = iteration_dir(path, iteration)
    if not os.path.isfile(os.path.join(ckpt, META)):
        raise CheckpointError(f"{os.path.join(path, TRACKER)} names iteration {iteration}, but {ckpt} "
                              f"is missing or incomplete (no {META})")
    return ckpt


def read_meta(ckpt: str) -> dict:
    with open(os.path.join(ckpt, META)) as f:
        return json.load(f)
