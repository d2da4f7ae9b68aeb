"""Megatron indexed shards (``.bin``/``.idx``): atomic writing and merging.

Written through megatron-core's ``IndexedDatasetBuilder`` (int32: the unified vocabulary is
larger than 65,536), one sequence per document, so ``GPTDataset`` reads them unchanged.
Every output goes to a temporary name first and is renamed only when complete (``.idx``
last), so a killed run never leaves a pair that looks finished.  Reading and validation are
:mod:`megatron_soda.format.shards`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

with warnings.catch_warnings():  # megatron.core warns about absent TE/apex on import
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

TMP_SUFFIX = ".tmp-inprogress"  # what a run writes before renaming it into place


class ShardWriter:
    """Writes one ``prefix.bin``/``prefix.idx`` pair; nothing is visible until :meth:`finalize`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self._bin_tmp = prefix + ".bin" + TMP_SUFFIX
        self._idx_tmp = prefix + ".idx" + TMP_SUFFIX
        self._builder = IndexedDatasetBuilder(self._bin_tmp, dtype=np.int32)
        self.documents = 0
        self.tokens = 0

    def add(self, doc: np.ndarray) -> None:
        doc = np.asarray(doc, dtype=np.int32)
        self._builder.add_document(doc, [doc.size])
        self.documents += 1
        self.tokens += doc.size

    def add_prefix(self, prefix: str) -> None:
        """Append a whole finished shard (used by merge)."""
        self._builder.add_index(prefix)

    def finalize(self) -> None:
        self._builder.finalize(self._idx_tmp)
        os.replace(self._bin_tmp, self.prefix + ".bin")
        os.replace(self._idx_tmp, self.prefix + ".idx")

    def abort(self) -> None:
        self._builder.data_file.close()
        for p in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(p):
                os.remove(p)
