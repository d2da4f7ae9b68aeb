"""Stage 2 of preprocessing: cached codes + transcripts (or web text) -> documents -> shards.

Cheap and fully vectorised (audio ids are arithmetic on the code arrays, transcripts are
batch-encoded by the Rust tokenizer, token counts are arithmetic, not scans), so it is
simply re-run: changing the tokenizer, the
number of codebooks (up to those cached), the interleave order or the split never touches
the codec.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megatron_soda.data.codes_cache import Chunk, UnitCache, read_chunk
from megatron_soda.data.progress import StageProgress, read_position
from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError, TextDocument, unexpected
from megatron_soda.data.shards import ShardWriter
from megatron_soda.data.split import is_heldout
from megatron_soda.data.units import WorkUnit
from megatron_soda.format import (
    KIND_NAMES,
    interleaved_document,
    interleaved_kind_counts,
    text_document,
    variants,
)
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.tokenizer.hf_export import PUA_BASE, text_audio_char_collisions

logger = logging.getLogger(__name__)
TEXT_BATCH = 1024


@dataclass
class SplitStats:
    documents: int = 0
    documents_by_variant: dict[str, int] = field(default_factory=dict)
    recordings: int = 0
    utterances: int = 0
    audio_seconds: float = 0.0
    tokens: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KIND_NAMES})
    max_document_tokens: int = 0

    def add_document(self, variant: str, counts: dict[str, int], length: int) -> None:
        self.documents += 1
        self.documents_by_variant[variant] = self.documents_by_variant.get(variant, 0) + 1
        for k, v in counts.items():
            self.tokens[k] += v
        self.max_document_tokens = max(self.max_document_tokens, length)

    def merge(self, other: SplitStats) -> None:
        self.documents += other.documents
        for k, v in other.documents_by_variant.items():
            self.documents_by_variant[k] = self.documents_by_variant.get(k, 0) + v
        self.recordings += other.recordings
        self.utterances += other.utterances
        self.audio_seconds += other.audio_seconds
        for k, v in other.tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + v
        self.max_document_tokens = max(self.max_document_tokens, other.max_document_tokens)

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "documents_by_variant": dict(sorted(self.documents_by_variant.items())),
            "recordings": self.recordings,
            "utterances": self.utterances,
            "audio_hours": round(self.audio_seconds / 3600, 6),
            "tokens": dict(self.tokens),
            "total_tokens": sum(self.tokens.values()),
            "max_document_tokens": self.max_document_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SplitStats:
        return cls(
            documents=d["documents"],
            documents_by_variant=dict(d["documents_by_variant"]),
            recordings=d["recordings"],
            utterances=d["utterances"],
            audio_seconds=d["audio_hours"] * 3600,
            tokens=dict(d["tokens"]),
            max_document_tokens=d["max_document_tokens"],
        )


class OutputSet:
    """The shards of one run: ``{prefix}`` or ``{prefix}_train`` + ``{prefix}_valid``."""

    def __init__(self, prefix: str, split: float, sft: bool = False) -> None:
        self.split = split
        names = ("train", "valid") if split > 0 else ("all",)
        self.prefixes = {n: (prefix if n == "all" else f"{prefix}_{n}") for n in names}
        self.writers = {n: ShardWriter(p, sft=sft) for n, p in self.prefixes.items()}
        self.stats = {n: SplitStats() for n in names}
        self.errors: list[InputError] = []
        self.attempted = 0
        self.text_collisions = 0

    def side(self, record_id: str) -> str:
        if self.split <= 0:
            return "all"
        return "valid" if is_heldout(record_id, self.split) else "train"

    def close(self) -> dict[str, dict]:
        """Finish and flush every shard (not yet visible); each side's identity for its stats."""
        return {n: w.close() for n, w in self.writers.items()}

    def publish(self) -> None:
        """Rename the closed shards into place: after their stats are written."""
        for w in self.writers.values():
            w.publish()

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def _collisions(texts: list[str], num_audio_tokens: int) -> int:
    """Transcript characters in the audio character range (almost always none: one C-speed
    ``max`` per chunk decides)."""
    joined = "".join(texts)
    if not joined or ord(max(joined)) < PUA_BASE:
        return 0
    return sum(text_audio_char_collisions(t, num_audio_tokens) for t in texts)


def encode_each(tokenizer: SodaTokenizer, texts: list[str]) -> list[np.ndarray | Exception]:
    """Each text's token ids (int32), batch-encoded; where the batch fails, each text alone,
    so a text the tokenizer cannot take is that text's exception, not the chunk's."""
    try:
        return [np.asarray(t, np.int32) for t in tokenizer.encode_texts(texts)]
    except Exception:
        out: list[np.ndarray | Exception] = []
        for t in texts:
            try:
                out.append(np.asarray(tokenizer.encode_texts([t])[0], np.int32))
            except Exception as e:
                out.append(e)
        return out


def _add_recording(out: OutputSet, lay, kinds, rec, t_ids: list) -> None:
    """One recording's documents (one per variant).  An utterance whose transcript the
    tokenizer failed on is left out, with its error; an exception while building the documents
    is an error for each utterance, and nothing of the recording is written."""
    keep = []
    for u, ids in zip(rec.utterances, t_ids):
        if isinstance(ids, Exception):
            reason = unexpected(ids, rec.source, u.id)
            out.errors.append(InputError(rec.source, u.id, reason, stage="tokenize"))
        else:
            keep.append((u, ids))
    if not keep:
        return
    try:
        texts, codes = [ids for _, ids in keep], [u.codes for u, _ in keep]
        side = out.side(rec.id)
        docs = [
            (v, interleaved_document(lay, texts, codes, v), interleaved_kind_counts(lay, texts, codes, v))
            for v in kinds
        ]
    except Exception as e:  # unforeseen: costs this recording only
        reason = unexpected(e, rec.source, rec.id)
        out.errors.extend(InputError(rec.source, u.id, reason, stage="tokenize") for u, _ in keep)
        return
    st = out.stats[side]
    st.recordings += 1
    st.utterances += len(keep)
    st.audio_seconds += sum(u.seconds for u, _ in keep)
    for variant, doc, counts in docs:
        out.writers[side].add(doc)
        st.add_document(variant, counts, doc.size)


def _prepared_chunks(
    caches: list[UnitCache], tokenizer: SodaTokenizer
) -> Iterator[tuple[Chunk, list[str], list[np.ndarray | Exception]]]:
    """Each cached chunk with its transcripts' token ids (int32, once per span, so both
    variants copy without converting).  The next chunk is read and its transcripts tokenised
    in a thread (the Rust tokenizer and numpy release the GIL) while the caller builds and
    writes the current one's documents."""

    def prepare(cache: UnitCache, k: int) -> tuple[Chunk, list[str], list[np.ndarray | Exception]]:
        chunk = read_chunk(cache.chunk_path(k))
        texts = [u.text for r in chunk.recordings for u in r.utterances]
        return chunk, texts, encode_each(tokenizer, texts)

    jobs = ((c, k) for c in caches for k in range(c.num_chunks()))
    with ThreadPoolExecutor(1) as pool:
        ahead: Future | None = None
        for cache, k in jobs:
            nxt = pool.submit(prepare, cache, k)
            if ahead is not None:
                yield ahead.result()
            ahead = nxt
        if ahead is not None:
            yield ahead.result()


def tokenize_cached(
    caches: Iterable[UnitCache],
    tokenizer: SodaTokenizer,
    out: OutputSet,
    add_recording: Callable[[Any, list[np.ndarray | Exception]], None],
) -> None:
    """The chunk loop of stage 2, in input order: each chunk's reader/codec errors, attempted
    count and text collisions go to ``out``; each recording goes to ``add_recording(rec,
    text_ids)`` (its utterances' token ids, or the tokenizer's exception), which writes it."""
    lay = tokenizer.layout
    caches = list(caches)
    for cache in caches:
        if cache.cached_codebooks < lay.num_codebooks:
            raise ValueError(
                f"{cache.dir}: the codes cache holds {cache.cached_codebooks} codebooks, "
                f"{lay.num_codebooks} requested; re-run the encode stage with --cache-codebooks "
                f">= {lay.num_codebooks} (or a new --codes-dir)"
            )
    total = sum(c.num_chunks() for c in caches)
    progress = StageProgress(
        "tokenize",
        total,
        "chunks",
        lambda: f"{sum(st.documents for st in out.stats.values())} documents",
        logger,
    )
    for chunk, texts, chunk_text_ids in _prepared_chunks(caches, tokenizer):
        progress.advance(1)
        out.errors.extend(chunk.errors)
        out.attempted += chunk.attempted
        out.text_collisions += _collisions(texts, lay.num_audio_tokens)
        text_ids = iter(chunk_text_ids)
        for rec in chunk.recordings:
            add_recording(rec, [next(text_ids) for _ in rec.utterances])
    progress.close()


def tokenize_cached_units(
    caches: Iterable[UnitCache], tokenizer: SodaTokenizer, interleave: str, out: OutputSet
) -> None:
    """Documents from cached codes: one per recording per variant."""
    lay, kinds = tokenizer.layout, variants(interleave)
    tokenize_cached(caches, tokenizer, out,
                    lambda rec, t_ids: _add_recording(out, lay, kinds, rec, t_ids))


def tokenize_text_units(
    units: Iterable[WorkUnit],
    tokenizer: SodaTokenizer,
    out: OutputSet,
    json_keys: tuple[str, ...] = ("text",),
) -> None:
    """``<bos> text <eos>`` documents from text JSONL inputs."""
    lay = tokenizer.layout

    def flush(batch: list[TextDocument]) -> None:
        for doc_rec, ids in zip(batch, encode_each(tokenizer, [d.text for d in batch])):
            try:  # one document's surprise is that document's error
                if isinstance(ids, Exception):
                    raise ids
                side = out.side(doc_rec.id)
                doc = text_document(lay, ids)
                counts = lay.count_kinds(doc)
            except Exception as e:
                reason = unexpected(e, doc_rec.source, doc_rec.id)
                out.errors.append(InputError(doc_rec.source, doc_rec.id, reason, stage="tokenize"))
                continue
            out.writers[side].add(doc)
            out.stats[side].add_document("text", counts, doc.size)

    units = list(units)
    sizes = [os.path.getsize(u.path) for u in units]
    progress = StageProgress(
        "tokenize", sum(sizes), "B", lambda: f"{out.attempted} documents read", logger
    )
    for k, unit in enumerate(units):
        batch: list[TextDocument] = []
        for item in unit.select(read_source(unit.path, "text", json_keys)):
            if isinstance(item, InputError):
                out.errors.append(item)
                out.attempted += 1
                continue
            out.attempted += 1
            batch.append(item)
            if len(batch) >= TEXT_BATCH:
                flush(batch)
                batch = []
                progress.set(sum(sizes[:k]) + min(read_position(unit.path), sizes[k]))
        if batch:
            flush(batch)
        progress.set(sum(sizes[: k + 1]))
    progress.close()
