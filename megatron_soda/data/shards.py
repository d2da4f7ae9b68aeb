"""Megatron indexed shards (``.bin``/``.idx``): atomic writing and merging.

Written through megatron-core's ``IndexedDatasetBuilder`` (int32: the unified vocabulary is
larger than 65,536), one sequence per document, so ``GPTDataset`` reads them unchanged.
Every output goes to a temporary name first and is renamed only when complete and flushed to
disk (``.idx`` last), so a killed run (or a power loss) never leaves a pair that looks finished.
Between :meth:`ShardWriter.close` and :meth:`ShardWriter.publish` the caller writes the stats
that describe the closed files (what ``close`` returns: sizes and the ``.idx`` checksum, which the
trainer compares), so no crash leaves new shards beside old stats.  Reading and validation are
:mod:`megatron_soda.format.shards`.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

from megatron_soda.atomic_files import fsync_path
from megatron_soda.format.sft import LOSS_START_SUFFIX, read_loss_starts, save_loss_starts

TMP_SUFFIX = ".tmp-inprogress"  # what a run writes before renaming it into place


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def indexed_dataset_builder() -> type:
    """megatron-core's ``IndexedDatasetBuilder``, imported when a shard is first written: the
    import costs about 2 s, which the codec stage and its worker processes (which import the
    command line's module again) do not need to pay."""
    with warnings.catch_warnings():  # megatron.core warns about absent TE/apex on import
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    return IndexedDatasetBuilder


class ShardWriter:
    """Writes one ``prefix.bin``/``prefix.idx`` pair; nothing is visible until :meth:`publish`."""

    def __init__(self, prefix: str, *, sft: bool = False) -> None:
        """``sft``: every document comes with its loss start, written to the sidecar
        ``PREFIX.loss_start.npy`` (:mod:`megatron_soda.format.sft`) with the pair."""
        self.prefix = prefix
        self._loss_starts: list[int] | None = [] if sft else None
        self._npy_tmp = prefix + LOSS_START_SUFFIX + TMP_SUFFIX
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self._bin_tmp = prefix + ".bin" + TMP_SUFFIX
        self._idx_tmp = prefix + ".idx" + TMP_SUFFIX
        self._builder = indexed_dataset_builder()(self._bin_tmp, dtype=np.int32)
        self.documents = 0
        self.tokens = 0
        self._identity: dict | None = None

    def add(self, doc: np.ndarray, loss_start: int | None = None) -> None:
        if (loss_start is None) != (self._loss_starts is None):
            raise ValueError("an SFT shard writer needs a loss start per document, others none")
        doc = np.asarray(doc, dtype=np.int32)
        if self._loss_starts is not None:
            if not 1 <= int(loss_start) < doc.size:
                raise ValueError(f"loss start {loss_start} outside 1..{doc.size - 1}")
            self._loss_starts.append(int(loss_start))
        self._builder.add_document(doc, [doc.size])
        self.documents += 1
        self.tokens += doc.size

    def add_prefix(self, prefix: str) -> None:
        """Append a whole finished shard (used by merge), with its loss starts when SFT."""
        if self._loss_starts is not None:
            self._loss_starts.extend(read_loss_starts(prefix).tolist())
        self._builder.add_index(prefix)

    def close(self) -> dict:
        """Finish the temporaries (write the index) and flush both to disk; returns what
        identifies them, as ``PREFIX.stats.json`` records it under ``files``
        (:data:`megatron_soda.format.shard_verify.IDENTITY_KEY`): ``{".bin": {"bytes": N},
        ".idx": {"bytes": N, "sha256": HEX}}``.  Nothing is visible until :meth:`publish`."""
        if self._identity is None:
            self._builder.finalize(self._idx_tmp)
            for p in (self._bin_tmp, self._idx_tmp):
                fsync_path(p)
            idx_sha = _sha256(self._idx_tmp)
            self._identity = {
                ".bin": {"bytes": os.path.getsize(self._bin_tmp)},
                ".idx": {"bytes": os.path.getsize(self._idx_tmp), "sha256": idx_sha},
            }
            if self._loss_starts is not None:
                save_loss_starts(self._npy_tmp, self._loss_starts)
                self._identity[LOSS_START_SUFFIX] = {"bytes": os.path.getsize(self._npy_tmp),
                                                     "sha256": _sha256(self._npy_tmp)}
        return self._identity

    def publish(self) -> None:
        """Rename the closed pair into place (``.bin``, then ``.idx``) and flush the directory."""
        self.close()
        os.replace(self._bin_tmp, self.prefix + ".bin")
        if self._loss_starts is not None:
            os.replace(self._npy_tmp, self.prefix + LOSS_START_SUFFIX)
        os.replace(self._idx_tmp, self.prefix + ".idx")
        fsync_path(os.path.dirname(os.path.abspath(self.prefix)))

    def finalize(self) -> None:
        """:meth:`close` and :meth:`publish` at once (no stats written between)."""
        self.publish()

    def abort(self) -> None:
        self._builder.data_file.close()
        for p in (self._bin_tmp, self._idx_tmp, self._npy_tmp):
            if os.path.exists(p):
                os.remove(p)
