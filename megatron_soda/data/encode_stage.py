"""Stage 1 of preprocessing: audio -> Mimi codes, cached on disk per work unit.

The main process reads the inputs and cuts them into chunks of whole recordings (a fixed
utterance count, so chunk boundaries never depend on timing or worker count).  Each chunk is
split into jobs of whole recordings (``job_utterances``, again a fixed count); worker
processes decode, resample and encode jobs, and the main process assembles each chunk from
its jobs, in order, and writes it atomically.  Jobs of all units share one pipeline, so small
inputs and the tail of each input file keep every worker busy.  A chunk already on disk is
skipped, so a killed run restarted with the same arguments resumes where it stopped.

Determinism: on CPU the codec encodes one piece per forward pass and each worker uses one
intra-op thread (unless ``threads_per_worker`` says otherwise), so a clip's codes depend on
nothing but the clip: the same bytes whatever ``--workers``.  Parallelism is by processes
(``--workers``; 0 = one per CPU core), which on CPU is also the fastest arrangement
(docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from megatron_soda.audio.codec import SAMPLE_RATE, codec_fingerprint, parse_codec_spec
from megatron_soda.audio.io import AudioError, Segment
from megatron_soda.audio.streaming import PieceEncoder, encode_segments
from megatron_soda.compat.parent_death import init_dying_with_parent
from megatron_soda.data.codes_cache import (
    Chunk,
    EncodedRecording,
    EncodedUtterance,
    UnitCache,
)
from megatron_soda.data.progress import StageProgress, read_position
from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError, Recording, unexpected
from megatron_soda.data.units import WorkUnit
from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

logger = logging.getLogger(__name__)
CPU_JOB_UTTERANCES = 1  # i.e. one recording per job


@dataclass(frozen=True)
class EncodeConfig:
    codec: str  # a spec for audio.codec.parse_codec_spec; no default (see data.preprocess.CODEC_REQUIRED)
    cache_codebooks: int = DEFAULT_NUM_CODEBOOKS
    device: str = "cpu"
    workers: int = 1  # codec worker processes; <= 0: one per CPU core (1 on a GPU)
    threads_per_worker: int | None = None  # None: 1 on CPU (deterministic), torch's default on GPU
    chunk_utterances: int = 128
    chunk_seconds: float = 60.0
    batch_seconds: float | None = None  # None: one piece per pass on CPU, 240 s on GPU
    job_utterances: int | None = None  # None: one recording per job on CPU, a chunk on GPU
    precision: str = "fp32"  # "bf16": opt-in, faster on CPU, codes differ for some frames

    def resolved_workers(self) -> int:
        if self.workers > 0:
            return self.workers
        return 1 if self.device != "cpu" else max(1, _cpu_count())

    def resolved_threads(self) -> int | None:
        if self.threads_per_worker:
            return self.threads_per_worker
        return 1 if self.device == "cpu" else None

    def resolved_job_utterances(self) -> int:
        if self.job_utterances:
            return self.job_utterances
        return CPU_JOB_UTTERANCES if self.device == "cpu" else self.chunk_utterances


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def unit_caches(codes_dir: str, units: list[WorkUnit], cfg: EncodeConfig) -> list[UnitCache]:
    """Each unit's codes cache, keyed by the unit and the codec (fingerprinted once: for a
    pretrained codec that reads its weight files)."""
    codec = {
        "codec": str(parse_codec_spec(cfg.codec)),
        "codec_fingerprint": codec_fingerprint(cfg.codec, cfg.chunk_seconds, cfg.precision),
        "cache_codebooks": cfg.cache_codebooks,
        "chunk_utterances": cfg.chunk_utterances,
    }
    return [
        UnitCache(os.path.join(codes_dir, u.name), {**u.describe(), **codec}) for u in units
    ]


def chunk_stream(
    unit: WorkUnit, chunk_utterances: int
) -> Iterator[tuple[list[Recording], list[InputError]]]:
    """Recordings of a unit in fixed-size chunks, with the read errors met along the way.

    With a record-level slice, read errors (bad lines) are reported by slice 0 only."""
    recs: list[Recording] = []
    errors: list[InputError] = []
    n_utts = 0
    for item in unit.select(read_source(unit.path, unit.fmt, source_root=unit.source_root)):
        if isinstance(item, InputError):
            errors.append(item)
            continue
        recs.append(item)
        n_utts += len(item.utterances)
        if n_utts >= chunk_utterances:
            yield recs, errors
            recs, errors, n_utts = [], [], 0
    if recs or errors:
        yield recs, errors


def split_jobs(recordings: list[Recording], job_utterances: int) -> list[list[Recording]]:
    """Whole recordings in groups of at least ``job_utterances`` utterances (the last may be
    smaller); depends on nothing but the chunk's content."""
    jobs: list[list[Recording]] = []
    cur: list[Recording] = []
    n = 0
    for rec in recordings:
        cur.append(rec)
        n += len(rec.utterances)
        if n >= job_utterances:
            jobs.append(cur)
            cur, n = [], 0
    if cur:
        jobs.append(cur)
    return jobs


# ------------------------------------------------------------------- worker side
_CODEC = None


def _init_worker(cfg: EncodeConfig, threads: int | None) -> None:
    global _CODEC
    import torch

    from megatron_soda.audio.codec import MimiCodec
    from megatron_soda.compat.allocator import tune_cpu_allocator

    if threads:
        torch.set_num_threads(threads)
    if cfg.device == "cpu":
        tune_cpu_allocator()
    _CODEC = MimiCodec(
        cfg.codec,
        num_codebooks=cfg.cache_codebooks,
        device=cfg.device,
        chunk_seconds=cfg.chunk_seconds,
        batch_seconds=cfg.batch_seconds,
        precision=cfg.precision,
    )


def _decode_recording(rec: Recording, errors: list[InputError], encoder: PieceEncoder) -> list:
    """Code streams of a recording's utterances (None where decoding failed, with an error
    logged), decoded and encoded in one streaming pass per source: a long recording costs a
    codec piece of memory, not its waveform (audio/streaming.py)."""
    waves: list = [None] * len(rec.utterances)
    by_source: dict[str, list[int]] = {}
    for i, u in enumerate(rec.utterances):
        by_source.setdefault(u.audio.source_key(), []).append(i)
    for idxs in by_source.values():
        ref = rec.utterances[idxs[0]].audio
        whole = len(idxs) == 1 and ref.start is None and ref.end is None
        try:
            outs = encode_segments(
                encoder,
                ref.path if ref.path is not None else ref.data,
                [Segment(rec.utterances[i].audio.start, rec.utterances[i].audio.end) for i in idxs],
                name=ref.name or ref.path,
                expected_duration=ref.expected_duration if whole else None,
            )
        except AudioError as e:
            outs = [e] * len(idxs)
        except Exception as e:  # unforeseen: costs this source's utterances only
            where = ref.name or ref.path or rec.id
            outs = [AudioError(f"{where}: {unexpected(e, rec.source, where)}")] * len(idxs)
        for i, out in zip(idxs, outs):
            if isinstance(out, AudioError):
                errors.append(InputError(rec.source, rec.utterances[i].id, str(out), stage="audio"))
            else:
                waves[i] = out
    return waves


def encode_job(recordings: list[Recording]) -> dict:
    """Decode + encode whole recordings: per recording, per utterance ``(seconds, codes)``
    or None where its audio was rejected (the reason is in ``errors``).

    An exception nobody foresaw costs only the recording it happened in: the job is redone
    one recording at a time, and the failing recording's utterances are reported under their
    ids with the exception's type and message (never a traceback that ends the run)."""
    try:
        return _encode_recordings(recordings)
    except Exception as e:
        if len(recordings) == 1:
            rec = recordings[0]
            reason = unexpected(e, rec.source, rec.id)
            errors = [InputError(rec.source, u.id, reason, stage="audio") for u in rec.utterances]
            return {"encoded": [[None] * len(rec.utterances)], "errors": errors}
        parts = [encode_job([rec]) for rec in recordings]
        return {k: [x for p in parts for x in p[k]] for k in ("encoded", "errors")}


def _encode_recordings(recordings: list[Recording]) -> dict:
    errors: list[InputError] = []
    encoder = PieceEncoder(_CODEC)  # one per job: a GPU batches pieces across its sources
    all_streams = [_decode_recording(rec, errors, encoder) for rec in recordings]
    encoder.flush()
    encoded = [
        [None if s is None else (s.samples / SAMPLE_RATE, s.codes()) for s in streams]
        for streams in all_streams
    ]
    return {"encoded": encoded, "errors": errors}


def assemble_chunk(
    recordings: list[Recording], read_errors: list[InputError], results: list[dict]
) -> tuple[Chunk, dict]:
    """The chunk file's content from its jobs' results (in job order); plus progress counts."""
    errors = list(read_errors) + [e for r in results for e in r["errors"]]
    encoded = [per_rec for r in results for per_rec in r["encoded"]]
    chunk = Chunk(errors=errors, attempted=len(errors) - sum(e.stage == "audio" for e in errors))
    seconds = 0.0
    for rec, utts in zip(recordings, encoded):
        chunk.attempted += len(rec.utterances)
        er = EncodedRecording(rec.id, rec.source)
        for u, item in zip(rec.utterances, utts):
            if item is not None:
                er.utterances.append(EncodedUtterance(u.id, u.text, item[0], item[1]))
                seconds += item[0]
        if er.utterances:
            chunk.recordings.append(er)
    counts = {
        "utterances": sum(len(r.utterances) for r in recordings),
        "seconds": seconds,
        "errors": len(errors),
    }
    return chunk, counts


# --------------------------------------------------------------------- main side
class _Progress:
    """Input bytes read (the bar's total: the units' file sizes; see data/progress.py), with
    utterances, audio hours, speed and errors beside them."""

    def __init__(self, units: list[WorkUnit]) -> None:
        self.utts = self.errors = self.chunks = self.skipped = 0
        self.seconds = 0.0
        self.sizes = [os.path.getsize(u.path) for u in units]
        self.units_done = self.reading_index = 0
        self.current: WorkUnit | None = None
        self.bar = StageProgress("encode", sum(self.sizes), "B", self._extra, logger)

    def _extra(self) -> str:
        elapsed = max(time.time() - self.bar.start, 1e-9)
        return (f"{self.utts} utt, {self.seconds / 3600:.2f} h audio ({self.seconds / elapsed:.1f}x realtime), "
                f"{self.errors} errors")

    def _refresh(self) -> None:
        """Units before the one being read count whole (their reading is over; their last
        chunks may still be encoding), the one being read by its file position."""
        k = self.reading_index
        done = sum(self.sizes[: max(k, self.units_done)])
        if self.current is not None and k >= self.units_done:
            done += min(read_position(self.current.path), self.sizes[k])
        self.bar.set(done)

    def reading(self, unit: WorkUnit) -> None:
        self.reading_index += 0 if self.current is None else 1
        self.current = unit
        self._refresh()

    def unit_complete(self) -> None:
        self.units_done += 1
        self._refresh()

    def update(self, res: dict) -> None:
        self.utts += res["utterances"]
        self.seconds += res["seconds"]
        self.errors += res["errors"]
        self.chunks += 1
        self._refresh()

    def close(self) -> None:
        self.bar.close()
        elapsed = time.time() - self.bar.start
        logger.info(
            "encode done: %d new chunks (%d already cached), %d utterances, %.3f h audio in %.1fs (%.1fx realtime)",
            self.chunks,
            self.skipped,
            self.utts,
            self.seconds / 3600,
            elapsed,
            self.seconds / max(elapsed, 1e-9),
        )


@dataclass
class _Pending:
    """A chunk whose jobs are running, or (``jobs is None``) a unit to mark complete."""

    cache: UnitCache
    index: int
    recordings: list[Recording] | None = None
    read_errors: list[InputError] | None = None
    jobs: list[Future | dict] | None = None


def encode_units(units: list[WorkUnit], codes_dir: str, cfg: EncodeConfig) -> list[UnitCache]:
    """Run (or resume) the codec stage for every unit; returns their complete caches."""
    caches = unit_caches(codes_dir, units, cfg)
    todo = [(u, c) for u, c in zip(units, caches) if not c.verify_complete()]  # damaged: again
    if not todo:
        logger.info("encode: all %d units already cached in %s", len(units), codes_dir)
        return caches
    progress = _Progress([u for u, _ in todo])
    workers, threads = cfg.resolved_workers(), cfg.resolved_threads()
    job_utts = cfg.resolved_job_utterances()
    pool = None
    saved_threads = None
    if workers > 1:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=init_dying_with_parent,  # no orphan workers after a kill -9
            initargs=(_init_worker, cfg, threads),
        )
    else:
        import torch

        saved_threads = torch.get_num_threads()
        _init_worker(cfg, threads)
    pending: deque[_Pending] = deque()
    running = 0

    def finish_oldest() -> None:
        nonlocal running
        p = pending.popleft()
        if p.jobs is None:
            p.cache.mark_complete(p.index)
            progress.unit_complete()
            return
        results = [j.result() if isinstance(j, Future) else j for j in p.jobs]
        running -= len(p.jobs)
        chunk, counts = assemble_chunk(p.recordings or [], p.read_errors or [], results)
        p.cache.write_chunk(p.index, chunk, cfg.cache_codebooks)
        progress.update(counts)

    try:
        for unit, cache in todo:
            cache.open_for_writing()
            progress.reading(unit)
            n = 0
            for n, (recs, errs) in enumerate(chunk_stream(unit, cfg.chunk_utterances), 1):
                if cache.reuse_chunk(n - 1):  # on disk and intact
                    progress.skipped += 1
                    continue
                parts = split_jobs(recs, job_utts)
                jobs: list[Future | dict] = [
                    pool.submit(encode_job, part) if pool is not None else encode_job(part)
                    for part in parts
                ]
                pending.append(_Pending(cache, n - 1, recs, errs, jobs))
                running += len(jobs)
                # in-process jobs are done already: write the chunk now (resume granularity)
                while pending and (pool is None or running > 2 * workers):
                    finish_oldest()
            pending.append(_Pending(cache, n))  # complete once its chunks are written
            while pending and pool is None:
                finish_oldest()
        while pending:
            finish_oldest()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        else:  # in-process: free the codec before the token stage, restore torch's threads
            global _CODEC
            _CODEC = None
            if saved_threads is not None:
                import torch

                torch.set_num_threads(saved_threads)
        progress.close()
    return caches
