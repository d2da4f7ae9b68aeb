"""``--async-save``: checkpoint shards written in the background while training goes on.

Built on megatron-core 0.16.1's own machinery:

* ``dist_checkpointing.save(..., async_sharded_save=True)`` (serialization.py) does the
  synchronous part (planning, ``common.pt``, the fully-parallel distribution of shards, staging
  the tensors to host memory) and returns an ``AsyncRequest`` whose ``async_fn`` writes the
  shard files and whose ``finalize_fns`` (the ``torch_dist`` ``.metadata`` gather, then
  ``metadata.json``) must run on all ranks once every rank's write is done.  Only an
  ``AsyncSaveShardedStrategy`` supports it: ``torch_dist`` (ours, also under the
  ``FullyParallelSaveStrategyWrapper``) does, the deprecated ``zarr`` does not.
* ``AsyncCallsQueue`` (strategies/async_utils.py) runs ``async_fn`` in a forked process
  (``TemporalAsyncCaller``); ``maybe_finalize_async_calls`` all-reduces "is my writer alive" and,
  when no rank's is, runs the finalize functions on every rank.

We append our commit (metadata, tokenizer, ``run_args.json``, the ``iter_N.tmp`` -> ``iter_N``
rename, the tracker, then retention) as the last finalize function: it runs only after every
rank's write and megatron's metadata are complete, so a crash at any point before leaves the
tracker on the previous checkpoint.

The forked writer is not megatron's persistent worker (``AsyncCallsQueue(persistent=True)``): that
one receives the tensors through a ``torch.multiprocessing`` queue, which on CPU moves them to
shared memory, so the writer would see the parameters the training loop updates meanwhile.  A
fork takes a copy-on-write snapshot (CPU), and on GPU the tensors are copied to host memory before
the fork.  At most one save is in flight: scheduling another first finalizes the previous one.

The writer is a copy of the trainer (hundreds of MB) and megatron's result-queue manager a spawned
interpreter (~250 MB): a trainer killed with SIGKILL left both running as orphans.
:func:`tie_children_to_this_process` makes every ``multiprocessing`` child of the trainer (the
writer, the per-bucket writers it forks in turn, data-loader workers) and that manager die with
their parent, through Linux's parent-death signal (:mod:`megatron_soda.compat.parent_death`):
an after-fork hook for forked children, the manager's initializer for the spawned one.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers
import multiprocessing.util
from collections.abc import Callable

from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest

from megatron_soda.compat.parent_death import die_with_multiprocessing_parent


class _Key:
    """A weak-referenceable owner for the after-fork registration (kept alive by the module)."""


_AFTER_FORK_KEY = _Key()
_tied = False


def tie_children_to_this_process() -> None:
    """From now on every forked ``multiprocessing`` child of this process (and of those children)
    gets SIGKILL when its parent dies; megatron's checkpoint result-queue manager is started now
    (:func:`start_write_results_queue`) so that it does too.  Idempotent."""
    global _tied
    if not _tied:
        multiprocessing.util.register_after_fork(_AFTER_FORK_KEY, die_with_multiprocessing_parent)
        _tied = True
    start_write_results_queue()


def start_write_results_queue() -> None:
    """Start the queue through which megatron-core 0.16.1's file writer reports, as
    ``filesystem_async._get_write_results_queue`` would at the first save (a ``spawn`` context
    ``Manager().Queue()``), but with :func:`die_with_multiprocessing_parent` as the manager's initializer.
    Megatron's function returns this queue from then on (it keeps it in a module global)."""
    if filesystem_async._results_queue is not None:
        return
    manager = multiprocessing.managers.SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=die_with_multiprocessing_parent)
    filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager alive


class AsyncSaves:
    """The checkpoint save in flight, if any (every method must be called on all ranks)."""

    def __init__(self) -> None:
        tie_children_to_this_process()  # no writer outlives the trainer
        self._queue = AsyncCallsQueue(persistent=False)
        self.in_flight: int | None = None  # the iteration being written

    def schedule(self, request: AsyncRequest, commit: Callable[[], None], iteration: int) -> None:
        """Start writing ``request``'s shards in the background; ``commit`` runs (on all ranks)
        after megatron's own finalization, when every rank's write is done."""
        self.wait()
        request.add_finalize_fn(commit)
        self._queue.schedule_async_request(request)
        self.in_flight = iteration

    def poll(self) -> None:
        """Commit the save in flight if every rank has finished writing; returns at once otherwise
        (one all-reduce while a save is in flight, nothing when none is)."""
        if self.in_flight is not None:
            self._finalize(blocking=False)

    def wait(self) -> None:
        """Wait for the save in flight, then commit it."""
        if self.in_flight is not None:
            self._finalize(blocking=True)

    def _finalize(self, blocking: bool) -> None:
        try:
            self._queue.maybe_finalize_async_calls(blocking=blocking)
        finally:  # a failed write raises on all ranks (megatron wraps it): that save is over too
            if self._queue.get_num_unfinalized_calls() == 0:
                self.in_flight = None
