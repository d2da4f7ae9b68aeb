"""Stage 1 of preprocessing: audio -> Mimi codes, cached on disk per work unit.

The main process reads the inputs and cuts them into chunks of whole recordings (a fixed
utterance count, so chunk boundaries never depend on timing or worker count); workers decode,
resample and encode a chunk and write it atomically.  A chunk already on disk is skipped, so
a killed run restarted with the same arguments resumes where it stopped.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from megatron_soda.audio.codec import codec_fingerprint, parse_codec_spec
from megatron_soda.audio.io import AudioError, Segment, decode_segments
from megatron_soda.data.codes_cache import (
    Chunk,
    EncodedRecording,
    EncodedUtterance,
    UnitCache,
    write_chunk,
)
from megatron_soda.data.records import InputError, Recording
from megatron_soda.data.sources import read_source
from megatron_soda.data.units import WorkUnit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeConfig:
    codec: str = "random:tiny"
    cache_codebooks: int = 8
    device: str = "cpu"
    workers: int = 1
    threads_per_worker: int | None = None
    chunk_utterances: int = 128
    chunk_seconds: float = 60.0
    batch_seconds: float = 240.0


def unit_cache(codes_dir: str, unit: WorkUnit, cfg: EncodeConfig) -> UnitCache:
    description = {
        **unit.describe(),
        "codec": str(parse_codec_spec(cfg.codec)),
        "codec_fingerprint": codec_fingerprint(cfg.codec, cfg.chunk_seconds),
        "cache_codebooks": cfg.cache_codebooks,
        "chunk_utterances": cfg.chunk_utterances,
    }
    return UnitCache(os.path.join(codes_dir, unit.name), description)


def chunk_stream(
    unit: WorkUnit, chunk_utterances: int
) -> Iterator[tuple[list[Recording], list[InputError]]]:
    """Recordings of a unit in fixed-size chunks, with the read errors met along the way.

    With a record-level slice, read errors (bad lines) are reported by slice 0 only."""
    recs: list[Recording] = []
    errors: list[InputError] = []
    n_utts, position = 0, 0
    for item in read_source(unit.path, unit.fmt):
        if isinstance(item, InputError):
            if unit.offset == 0:
                errors.append(item)
            continue
        position += 1
        if not unit.takes(position - 1):
            continue
        recs.append(item)
        n_utts += len(item.utterances)
        if n_utts >= chunk_utterances:
            yield recs, errors
            recs, errors, n_utts = [], [], 0
    if recs or errors:
        yield recs, errors


# ------------------------------------------------------------------- worker side
_CODEC = None


def _init_worker(cfg: EncodeConfig, threads: int | None) -> None:
    global _CODEC
    import torch

    from megatron_soda.audio.codec import MimiCodec

    if threads:
        torch.set_num_threads(threads)
    _CODEC = MimiCodec(
        cfg.codec,
        num_codebooks=cfg.cache_codebooks,
        device=cfg.device,
        chunk_seconds=cfg.chunk_seconds,
        batch_seconds=cfg.batch_seconds,
    )


def _decode_recording(rec: Recording, errors: list[InputError]) -> list:
    """Waves of a recording's utterances (None where decoding failed, with an error logged)."""
    waves: list = [None] * len(rec.utterances)
    by_source: OrderedDict[str, list[int]] = OrderedDict()
    for i, u in enumerate(rec.utterances):
        by_source.setdefault(u.audio.source_key(), []).append(i)
    for idxs in by_source.values():
        ref = rec.utterances[idxs[0]].audio
        whole = len(idxs) == 1 and ref.start is None and ref.end is None
        try:
            outs = decode_segments(
                ref.path if ref.path is not None else ref.data,
                [Segment(rec.utterances[i].audio.start, rec.utterances[i].audio.end) for i in idxs],
                name=ref.name or ref.path,
                expected_duration=ref.expected_duration if whole else None,
            )
        except AudioError as e:
            outs = [e] * len(idxs)
        for i, out in zip(idxs, outs):
            if isinstance(out, AudioError):
                errors.append(InputError(rec.source, rec.utterances[i].id, str(out), stage="audio"))
            else:
                waves[i] = out
    return waves


def encode_chunk(
    path: str, recordings: list[Recording], errors: list[InputError], num_codebooks: int
) -> dict:
    """Decode + encode one chunk and write it; returns counts for progress reporting."""
    errors = list(errors)
    all_waves = [_decode_recording(rec, errors) for rec in recordings]
    flat = [w for waves in all_waves for w in waves if w is not None]
    codes = iter(_CODEC.encode(flat) if flat else [])
    chunk = Chunk(errors=errors, attempted=len(errors) - sum(e.stage == "audio" for e in errors))
    seconds = 0.0
    for rec, waves in zip(recordings, all_waves):
        chunk.attempted += len(rec.utterances)
        er = EncodedRecording(rec.id, rec.source)
        for u, w in zip(rec.utterances, waves):
            if w is not None:
                er.utterances.append(EncodedUtterance(u.id, u.text, w.size / 24000.0, next(codes)))
                seconds += w.size / 24000.0
        if er.utterances:
            chunk.recordings.append(er)
    write_chunk(path, chunk, num_codebooks)
    return {
        "utterances": sum(len(r.utterances) for r in recordings),
        "seconds": seconds,
        "errors": len(errors),
    }


# --------------------------------------------------------------------- main side
class _Progress:
    def __init__(self, total_units: int) -> None:
        self.start = time.time()
        self.last = 0.0
        self.utts = self.errors = self.chunks = self.skipped = 0
        self.seconds = 0.0
        self.total_units = total_units
        self.units_done = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc="encode", unit=" utt", dynamic_ncols=True)

    def update(self, res: dict) -> None:
        self.utts += res["utterances"]
        self.seconds += res["seconds"]
        self.errors += res["errors"]
        self.chunks += 1
        elapsed = max(time.time() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(res["utterances"])
            self.bar.set_postfix(
                audio_h=f"{self.seconds / 3600:.2f}",
                rt=f"{self.seconds / elapsed:.1f}x",
                err=self.errors,
            )
        elif time.time() - self.last > 30:
            self.last = time.time()
            logger.info(
                "encode: %d chunks, %d utterances, %.2f h audio (%.1fx realtime), %d errors, unit %d/%d",
                self.chunks,
                self.utts,
                self.seconds / 3600,
                self.seconds / elapsed,
                self.errors,
                self.units_done + 1,
                self.total_units,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elapsed = time.time() - self.start
        logger.info(
            "encode done: %d new chunks (%d already cached), %d utterances, %.3f h audio in %.1fs (%.1fx realtime)",
            self.chunks,
            self.skipped,
            self.utts,
            self.seconds / 3600,
            elapsed,
            self.seconds / max(elapsed, 1e-9),
        )


def encode_units(units: list[WorkUnit], codes_dir: str, cfg: EncodeConfig) -> list[UnitCache]:
    """Run (or resume) the codec stage for every unit; returns their complete caches."""
    caches = [unit_cache(codes_dir, u, cfg) for u in units]
    todo = [(u, c) for u, c in zip(units, caches) if not c.is_complete()]
    if not todo:
        logger.info("encode: all %d units already cached in %s", len(units), codes_dir)
        return caches
    progress = _Progress(len(todo))
    workers = max(1, cfg.workers)
    threads = cfg.threads_per_worker or (
        max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    )
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(cfg, threads),
        )
    else:
        _init_worker(cfg, threads)
    inflight: deque[Future] = deque()
    try:
        for unit, cache in todo:
            cache.open_for_writing()
            n = 0
            for n, (recs, errs) in enumerate(chunk_stream(unit, cfg.chunk_utterances), 1):
                if cache.has_chunk(n - 1):
                    progress.skipped += 1
                    continue
                args = (cache.chunk_path(n - 1), recs, errs, cfg.cache_codebooks)
                if pool is None:
                    progress.update(encode_chunk(*args))
                    continue
                inflight.append(pool.submit(encode_chunk, *args))
                while len(inflight) > 2 * workers:
                    progress.update(inflight.popleft().result())
            while inflight:
                progress.update(inflight.popleft().result())
            cache.mark_complete(n)
            progress.units_done += 1
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    return caches
