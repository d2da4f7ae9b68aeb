"""SFT shards for the DeepSpeed / plain-torch fine-tuner, read without megatron-core.

The shards are the megatron trainer's (``PREFIX.bin/.idx`` + ``PREFIX.loss_start.npy``,
:mod:`megatron_soda.format.sft`), read with the project's own index reader
(:func:`megatron_soda.format.shards.read_index`) and validated by
:func:`~megatron_soda.format.shards.validate_shard`, so a machine with only torch, transformers and
DeepSpeed can train on them.

A *window* is ``seq_length + 1`` tokens cut from the documents, given as segments ``(document,
begin, end)`` (``end`` exclusive): inputs are its first ``seq_length`` tokens, labels the last.
Two orders of windows:

* :func:`sequential_windows` (the default): epoch ``e`` visits every document once in the order
  ``numpy.random.default_rng([seed, e]).permutation``; the documents are concatenated and window
  ``i`` is stream tokens ``[i * seq_length, (i + 1) * seq_length]`` (consecutive windows share
  one token, as megatron's samples do).  No sample shuffle and no validation split.
* :func:`megatron_windows`: megatron's GPTDataset order, from its ``document_index`` /
  ``sample_index`` / ``shuffle_index`` arrays (what ``GPTDataset`` caches as ``.npy``):
  sample ``i`` runs from ``sample_index[shuffle[i]]`` to ``sample_index[shuffle[i] + 1]``
  inclusive (megatron-core 0.16.1 ``gpt_dataset.py`` ``_query_document_sample_shuffle_indices``).
  The parity test feeds both trainers the same windows this way.

Which targets are trained is the megatron trainer's rule (``training/sft_data.py``
``window_response_mask``): the token at offset ``o`` of document ``d`` is a trained target iff
``o >= loss_start[d]``, so each document's response through its ``<eos>`` is trained, and a
target crossing into the next document (``<eos>`` -> ``<bos>``) never is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from megatron_soda.format.layout import TokenLayout
from megatron_soda.format.sft import read_loss_starts
from megatron_soda.format.shards import ShardError, read_index, validate_shard

Segment = tuple[int, int, int]  # (global document id, begin offset, end offset exclusive)


@dataclass
class _Shard:
    prefix: str
    tokens: np.ndarray  # memory-mapped .bin, the index's dtype
    pointers: np.ndarray  # element offset of each document in ``tokens``
    lengths: np.ndarray  # int64 per document
    loss_starts: np.ndarray  # int64 per document


class SftShards:
    """One or more SFT shards as one list of documents (global ids in the order given)."""

    def __init__(
        self, prefixes: Sequence[str], layout: TokenLayout | None = None, check: bool = True
    ) -> None:
        if not prefixes:
            raise ShardError("no SFT shard given")
        self.shards: list[_Shard] = []
        for prefix in prefixes:
            if check:  # ids in the vocabulary, BOS/EOS bounding every document, sidecar valid
                # (as the trainer's --data-check full: past 4 GiB, evenly spread blocks are scanned)
                validate_shard(
                    prefix,
                    layout,
                    check_boundaries=layout is not None,
                    allow_empty=False,
                    max_scan_gib=4.0,
                )
            index = read_index(prefix + ".idx")
            docs = np.asarray(index.document_indices, dtype=np.int64)
            if len(docs) - 1 != len(index.lengths):
                raise ShardError(
                    f"{prefix}.idx: an SFT shard holds one sequence per document "
                    f"({len(docs) - 1} documents, {len(index.lengths)} sequences)"
                )
            itemsize = index.dtype.itemsize
            tokens = np.memmap(prefix + ".bin", dtype=index.dtype, mode="r")
            self.shards.append(
                _Shard(
                    prefix,
                    tokens,
                    np.asarray(index.pointers, dtype=np.int64) // itemsize,
                    np.asarray(index.lengths, dtype=np.int64),
                    read_loss_starts(prefix),
                )
            )
        self.first = np.cumsum([0] + [len(s.lengths) for s in self.shards])
        self.lengths = np.concatenate([s.lengths for s in self.shards])
        self.loss_starts = np.concatenate([s.loss_starts for s in self.shards])

    def __len__(self) -> int:
        return len(self.lengths)

    def document(self, doc: int, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Tokens ``[begin, end)`` of global document ``doc`` (int64 copy)."""
        k = int(np.searchsorted(self.first, doc, side="right") - 1)
        shard, local = self.shards[k], doc - int(self.first[k])
        length = int(shard.lengths[local])
        end = length if end is None else end
        if not 0 <= begin <= end <= length:
            raise IndexError(f"document {doc}: span [{begin}, {end}) outside 0..{length}")
        start = int(shard.pointers[local])
        return np.asarray(shard.tokens[start + begin : start + end], dtype=np.int64)

    def window(
        self, segments: Sequence[Segment], seq_length: int, pad_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, trained)``: int64 ``[seq_length + 1]`` and bool ``[seq_length + 1]`` (whether
        each token is a trained target).  A short window is padded with ``pad_id``, never trained."""
        tokens = np.full(seq_length + 1, pad_id, dtype=np.int64)
        trained = np.zeros(seq_length + 1, dtype=bool)
        at = 0
        for doc, begin, end in segments:
            n = min(end - begin, seq_length + 1 - at)
            if n <= 0:
                break
            tokens[at : at + n] = self.document(doc, begin, begin + n)
            trained[at : at + n] = np.arange(begin, begin + n) >= self.loss_starts[doc]
            at += n
        return tokens, trained


def sequential_windows(lengths: np.ndarray, seq_length: int, seed: int) -> Iterator[list[Segment]]:
    """The default order (module docstring): seeded document permutation per epoch, packed into
    overlapping windows of ``seq_length + 1`` tokens, forever."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0 or (lengths <= 0).any():
        raise ValueError("every document needs at least one token")
    need = seq_length + 1

    def stream() -> Iterator[tuple[int, int]]:
        epoch = 0
        while True:
            for doc in np.random.default_rng([seed, epoch]).permutation(len(lengths)):
                yield int(doc), int(lengths[doc])
            epoch += 1

    docs = stream()
    doc, length = next(docs)
    offset = 0  # where the next window starts in ``doc``
    while True:
        segments, have = [], 0
        d, o, n = doc, offset, length
        while True:
            take = min(n - o, need - have)
            segments.append((d, o, o + take))
            have += take
            if have == need:
                # the last token is also the first of the next window
                doc, offset, length = d, o + take - 1, n
                break
            d, n = next(docs)
            o = 0
        yield segments


def megatron_windows(
    document_index: np.ndarray,
    sample_index: np.ndarray,
    shuffle_index: np.ndarray,
    lengths: np.ndarray,
) -> Iterator[list[Segment]]:
    """megatron's GPTDataset samples, in its order (module docstring), as segments."""
    for idx in range(len(shuffle_index)):
        i = int(shuffle_index[idx])
        beg, beg_offset = (int(v) for v in sample_index[i])
        end, end_offset = (int(v) for v in sample_index[i + 1])
        if beg == end:
            yield [(int(document_index[beg]), beg_offset, end_offset + 1)]
            continue
        segments = [(int(document_index[beg]), beg_offset, int(lengths[document_index[beg]]))]
        segments += [
            (int(document_index[k]), 0, int(lengths[document_index[k]]))
            for k in range(beg + 1, end)
        ]
        segments.append((int(document_index[end]), 0, end_offset + 1))
        yield segments


@dataclass
class MicroBatch:
    tokens: np.ndarray  # int64 [b, seq_length]: inputs
    labels: np.ndarray  # int64 [b, seq_length]
    loss_mask: np.ndarray  # float32 [b, seq_length]: 1 where the label is trained


def micro_batch(
    shards: SftShards, windows: Sequence[Sequence[Segment]], seq_length: int, pad_id: int
) -> MicroBatch:
    rows = [shards.window(w, seq_length, pad_id) for w in windows]
    tokens = np.stack([t for t, _ in rows])
    trained = np.stack([m for _, m in rows])
    return MicroBatch(
        tokens[:, :-1].copy(), tokens[:, 1:].copy(), trained[:, 1:].astype(np.float32)
    )


def document_spans(tokens: np.ndarray, eod: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each document in one row of inputs: a document ends with (and includes)
    an ``eod``, as megatron's ``training/data.py`` ``document_ids`` has it."""
    ends = (np.flatnonzero(np.asarray(tokens) == eod) + 1).tolist()
    n = len(tokens)
    bounds = [0] + [e for e in ends if e < n] + [n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
