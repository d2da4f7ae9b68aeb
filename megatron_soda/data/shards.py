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

with warnings.catch_warnings():  # megatron.core warns about absent TE/apex on import
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_soda.atomic_files import fsync_path

TMP_SUFFIX = ".tmp-inprogress"  # what a run writes before renaming it into place


class ShardWriter:
    """Writes one ``prefix.bin``/``prefix.idx`` pair; nothing is visible until :meth:`publish`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self._bin_tmp = prefix + ".bin" + TMP_SUFFIX
        self._idx_tmp = prefix + ".idx" + TMP_SUFFIX
        self._builder = IndexedDatasetBuilder(self._bin_tmp, dtype=np.int32)
        self.documents = 0
        self.tokens = 0
        self._identity: dict | None = None

    def add(self, doc: np.ndarray) -> None:
        doc = np.asarray(doc, dtype=np.int32)
        self._builder.add_document(doc, [doc.size])
        self.documents += 1
        self.tokens += doc.size

    def add_prefix(self, prefix: str) -> None:
        """Append a whole finished shard (used by merge)."""
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
            h = hashlib.sha256()
            with open(self._idx_tmp, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
            idx_sha = h.hexdigest()
            self._identity = {
                ".bin": {"bytes": os.path.getsize(self._bin_tmp)},
                ".idx": {"bytes": os.path.getsize(self._idx_tmp), "sha256": idx_sha},
            }
        return self._identity

    def publish(self) -> None:
        """Rename the closed pair into place (``.bin``, then ``.idx``) and flush the directory."""
        self.close()
        os.replace(self._bin_tmp, self.prefix + ".bin")
        os.replace(self._idx_tmp, self.prefix + ".idx")
        fsync_path(os.path.dirname(os.path.abspath(self.prefix)))

    def finalize(self) -> None:
        """:meth:`close` and :meth:`publish` at once (no stats written between)."""
        self.publish()

    def abort(self) -> None:
        self._builder.data_file.close()
        for p in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(p):
                os.remove(p)
