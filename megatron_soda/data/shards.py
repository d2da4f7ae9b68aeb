"""Megatron indexed shards (``.bin``/``.idx``): atomic writing, merging and validation.

Written through megatron-core's ``IndexedDatasetBuilder`` (int32: the unified vocabulary is
larger than 65,536), one sequence per document, so ``GPTDataset`` reads them unchanged.
Every output goes to a temporary name first and is renamed only when complete (``.idx``
last), so a killed run never leaves a pair that looks finished.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from megatron_soda import atomic_files

with warnings.catch_warnings():  # megatron.core warns about absent TE/apex on import
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequences, documents
_TMP = ".tmp-inprogress"


class ShardError(ValueError):
    """A shard pair that is missing, truncated or inconsistent."""


def write_json_atomic(path: str, obj: object) -> None:
    """A report (``P.stats.json``): readable, keys sorted, non-ASCII text kept."""
    atomic_files.write_json_atomic(
        path, obj, tmp_suffix=_TMP, end="\n", indent=2, ensure_ascii=False, sort_keys=True
    )


def write_jsonl_atomic(path: str, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    atomic_files.write_text_atomic(path, text, tmp_suffix=_TMP)


class ShardWriter:
    """Writes one ``prefix.bin``/``prefix.idx`` pair; nothing is visible until :meth:`finalize`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self._bin_tmp = prefix + ".bin" + _TMP
        self._idx_tmp = prefix + ".idx" + _TMP
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


def read_index(idx_path: str) -> tuple[np.dtype, np.ndarray, np.ndarray, int]:
    """Token dtype, sequence lengths, byte pointers and document count of a Megatron ``.idx``,
    after checking its header and that the file is as long as the header promises."""
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(_IDX_HEADER_BYTES)
    if len(head) < _IDX_HEADER_BYTES or head[:9] != _IDX_MAGIC:
        raise ShardError(f"{idx_path}: not a Megatron index file (bad or truncated header)")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1 or code not in {d.value for d in DType}:
        raise ShardError(f"{idx_path}: unsupported index version {version} / dtype code {code}")
    need = _IDX_HEADER_BYTES + n_seq * (4 + 8) + n_doc * 8
    if size < need:
        raise ShardError(
            f"{idx_path}: truncated index ({size} bytes, header promises {need} for {n_seq} sequences)"
        )
    lengths = np.fromfile(idx_path, dtype=np.int32, count=n_seq, offset=_IDX_HEADER_BYTES)
    pointers = np.fromfile(
        idx_path, dtype=np.int64, count=n_seq, offset=_IDX_HEADER_BYTES + 4 * n_seq
    )
    return np.dtype(DType.dtype_from_code(code)), lengths, pointers, n_doc


@dataclass
class ShardSummary:
    prefix: str
    documents: int
    sequences: int
    tokens: int
    min_id: int
    max_id: int


def validate_shard(
    prefix: str,
    vocab_size: int | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    check_ids: bool = True,
) -> ShardSummary:
    """Check a ``.idx``/``.bin`` pair thoroughly; raise :class:`ShardError` naming the file."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    for p in (idx, bin_):
        if not os.path.isfile(p):
            raise ShardError(f"{p}: missing (expected the pair {prefix}.idx/.bin)")
    _, lengths, _, n_doc = read_index(idx)
    if len(lengths) == 0:  # a legitimately empty shard (e.g. a split side that got no recording)
        if os.path.getsize(bin_) != 0:
            raise ShardError(f"{bin_}: {os.path.getsize(bin_)} bytes, but the index describes none")
        return ShardSummary(prefix, max(0, n_doc - 1), 0, 0, 0, 0)
    try:
        ds = IndexedDataset(prefix, mmap=True)
    except Exception as e:
        raise ShardError(f"{prefix}: cannot open as IndexedDataset ({e})") from e
    itemsize = np.dtype(ds.index.dtype).itemsize
    lengths = ds.index.sequence_lengths
    total = int(lengths.sum()) if len(lengths) else 0
    if os.path.getsize(bin_) != total * itemsize:
        raise ShardError(
            f"{bin_}: {os.path.getsize(bin_)} bytes, the index describes {total * itemsize} "
            "(truncated or from another run)"
        )
    doc_idx = ds.index.document_indices
    if (
        len(doc_idx) == 0
        or doc_idx[0] != 0
        or (np.diff(doc_idx) < 0).any()
        or doc_idx[-1] != len(lengths)
    ):
        raise ShardError(f"{idx}: inconsistent document index")
    lo = hi = 0
    if check_ids and total:
        data = np.memmap(bin_, dtype=ds.index.dtype, mode="r")
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            raise ShardError(
                f"{bin_}: token ids span [{lo}, {hi}], outside the vocabulary [0, {vocab_size})"
            )
        if bos_id is not None or eos_id is not None:
            starts = ds.index.sequence_pointers // itemsize
            ends = starts + lengths - 1
            if bos_id is not None and len(starts) and (data[starts] != bos_id).any():
                raise ShardError(f"{bin_}: a document does not start with BOS {bos_id}")
            if eos_id is not None and len(ends) and (data[ends] != eos_id).any():
                raise ShardError(f"{bin_}: a document does not end with EOS {eos_id}")
    return ShardSummary(prefix, len(doc_idx) - 1, len(lengths), total, lo, hi)


def read_document(prefix: str, index: int) -> np.ndarray:
    ds = IndexedDataset(prefix, mmap=True)
    return np.array(ds[index], dtype=np.int64)  # a copy: the view dies with the mmap
