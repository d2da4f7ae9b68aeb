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
"""

from __future__ import annotations

from collections.abc import Callable

from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest


class AsyncSaves:
    """The checkpoint save in flight, if any (every method must be called on all ranks)."""

    def __init__(self) -> None:
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
