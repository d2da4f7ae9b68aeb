"""Stage 1 of preprocessing: audio -> Mimi codes, cached on disk per work unit.

The main process reads the inputs and cuts them into chunks of whole recordings (a fixed
utterance count, so chunk boundaries never depend on timing or worker count).  Each chunk is
planned into jobs of at most ``job_utterances`` utterances (:mod:`megatron_soda.data.encode_jobs`:
small recordings grouped, a larger one cut at utterance boundaries into parts); worker processes
decode, resample and encode jobs as they come free, and the main process re-joins each
recording's parts in order, assembles each chunk and writes it atomically, oldest first.  Jobs
of all units share one pipeline, so one recording holding most of the audio, small inputs and
the tail of each input file all keep every worker busy.  A chunk already on disk is skipped, so
a killed run restarted with the same arguments resumes where it stopped.

Start-up: :class:`CodecWorkers` spawns the first worker when it is made (it imports torch and
the codec while the main process loads the tokenizer and reads the inputs: ``preprocess.py``
makes it first); more are spawned as jobs wait for them.  Each worker builds its codec once, at
its first job (the jobs carry the :class:`EncodeConfig`).

Determinism: on CPU the codec encodes one piece per forward pass and each worker uses one
intra-op thread (unless ``threads_per_worker`` says otherwise), so a clip's codes depend on
nothing but the clip: the same bytes whatever ``--workers`` and ``job_utterances``.
Parallelism is by processes (``--workers``; 0 = one per CPU core), which on CPU is also the
fastest arrangement (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

from megatron_soda.audio.codec import SAMPLE_RATE, codec_fingerprint, parse_codec_spec
from megatron_soda.audio.io import AudioError, Segment
from megatron_soda.audio.streaming import PieceEncoder, encode_segments
from megatron_soda.compat.parent_death import init_dying_with_parent
from megatron_soda.data.codes_cache import UnitCache
from megatron_soda.data.encode_jobs import (
    CPU_JOB_UTTERANCES,
    ChunkJobs,
    Failure,
    Outcome,
    part_recording,
    plan_jobs,
    rejoin,
)
from megatron_soda.data.progress import StageProgress, read_position
from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError, Recording, unexpected
from megatron_soda.data.units import WorkUnit
from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

logger = logging.getLogger(__name__)


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
    job_utterances: int | None = None  # at most per job; None: CPU_JOB_UTTERANCES on CPU, a chunk on GPU
    precision: str = "fp32"  # "bf16": opt-in, faster on CPU, codes differ for some frames

    def resolved_workers(self) -> int:
        return resolve_workers(self.workers, self.device)

    def resolved_threads(self) -> int | None:
        return resolve_threads(self.threads_per_worker, self.device)

    def resolved_job_utterances(self) -> int:
        if self.job_utterances:
            return self.job_utterances
        return CPU_JOB_UTTERANCES if self.device == "cpu" else self.chunk_utterances


def resolve_workers(workers: int, device: str) -> int:
    """``--workers``: as given, or (<= 0) one per CPU core on CPU and 1 on a GPU."""
    if workers > 0:
        return workers
    return 1 if device != "cpu" else max(1, _cpu_count())


def resolve_threads(threads: int | None, device: str) -> int | None:
    """Intra-op threads per worker: as given, else 1 on CPU, torch's default (None) on a GPU."""
    if threads:
        return threads
    return 1 if device == "cpu" else None


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


# ------------------------------------------------------------------- worker side
_CODEC = None
_CODEC_CONFIG: EncodeConfig | None = None


def _init_process(device: str, threads: int | None) -> None:
    """A worker's (or the in-process run's) torch settings; a worker also imports the codec's
    modules here, while the main process is still starting."""
    import torch

    from megatron_soda.compat.allocator import tune_cpu_allocator

    if threads:
        torch.set_num_threads(threads)
    if device == "cpu":
        tune_cpu_allocator()


def _warm_up() -> None:
    """The first worker's first task: it is spawned now, and imports what building the codec
    needs (transformers' Mimi: about 2 s) before any job is planned."""
    try:
        from transformers import MimiModel  # noqa: F401  (audio/codec.py builds it)
    except ImportError:  # reported by the codec's own build
        pass


def _build_codec(cfg: EncodeConfig) -> None:
    """Build this process's codec for ``cfg`` (once: later jobs with the same config reuse it)."""
    global _CODEC, _CODEC_CONFIG
    from megatron_soda.audio.codec import MimiCodec

    _CODEC = None  # the old one freed first
    _CODEC = MimiCodec(
        cfg.codec,
        num_codebooks=cfg.cache_codebooks,
        device=cfg.device,
        chunk_seconds=cfg.chunk_seconds,
        batch_seconds=cfg.batch_seconds,
        precision=cfg.precision,
    )
    _CODEC_CONFIG = cfg


def _init_worker(cfg: EncodeConfig, threads: int | None) -> None:
    """Torch settings and the codec of ``cfg``, now (tests, benchmarks)."""
    _init_process(cfg.device, threads)
    _build_codec(cfg)


def _decode_recording(rec: Recording, encoder: PieceEncoder) -> list:
    """Per utterance a code stream, or the :class:`Failure` rejecting it; decoded and encoded in
    one streaming pass per source: a long recording costs a codec piece of memory, not its
    waveform (audio/streaming.py).  A failure of the whole source has scope "source"."""
    outs: list = [None] * len(rec.utterances)
    by_source: dict[str, list[int]] = {}
    for i, u in enumerate(rec.utterances):
        by_source.setdefault(u.audio.source_key(), []).append(i)
    for idxs in by_source.values():
        ref = rec.utterances[idxs[0]].audio
        whole = len(idxs) == 1 and ref.start is None and ref.end is None
        try:
            got = encode_segments(
                encoder,
                ref.path if ref.path is not None else ref.data,
                [Segment(rec.utterances[i].audio.start, rec.utterances[i].audio.end) for i in idxs],
                name=ref.name or ref.path,
                expected_duration=ref.expected_duration if whole else None,
            )
            got = [Failure(str(g)) if isinstance(g, AudioError) else g for g in got]
        except AudioError as e:
            got = [Failure(str(e), "source")] * len(idxs)
        except Exception as e:  # unforeseen: costs this source's utterances only
            where = ref.name or ref.path or rec.id
            got = [Failure(f"{where}: {unexpected(e, rec.source, where)}", "source")] * len(idxs)
        for i, out in zip(idxs, got):
            outs[i] = out
    return outs


def encode_parts(cfg: EncodeConfig | None, parts: list[Recording]) -> list[list[Outcome]]:
    """A job: per recording (or part of one, :func:`~megatron_soda.data.encode_jobs.part_recording`)
    per utterance ``(seconds, codes)`` or the :class:`Failure` rejecting its audio.  ``cfg``: the
    codec to use (built at this process's first job); None: the one already built.

    An exception nobody foresaw costs only the part it happened in: the job is redone one part
    at a time, and the failing part's utterances are rejected (scope "recording") with the
    exception's type and message (never a traceback that ends the run)."""
    if cfg is not None and cfg != _CODEC_CONFIG:
        _build_codec(cfg)
    try:
        return _encode_recordings(parts)
    except Exception as e:
        if len(parts) == 1:
            rec = parts[0]
            return [[Failure(unexpected(e, rec.source, rec.id), "recording")] * len(rec.utterances)]
        return [encode_parts(None, [rec])[0] for rec in parts]


def _encode_recordings(recordings: list[Recording]) -> list[list[Outcome]]:
    encoder = PieceEncoder(_CODEC)  # one per job: a GPU batches pieces across its sources
    all_streams = [_decode_recording(rec, encoder) for rec in recordings]
    encoder.flush()
    return [
        [s if isinstance(s, Failure) else (s.samples / SAMPLE_RATE, s.codes()) for s in streams]
        for streams in all_streams
    ]


def encode_job(recordings: list[Recording]) -> dict:
    """Whole recordings with the codec already built (:func:`_init_worker`): per recording,
    per utterance ``(seconds, codes)`` or None where its audio was rejected (the reason is in
    ``errors``)."""
    joined = [rejoin(rec, outs) for rec, outs in zip(recordings, encode_parts(None, recordings))]
    return {"encoded": [enc for enc, _ in joined], "errors": [e for _, errs in joined for e in errs]}


class CodecWorkers:
    """Where jobs run: ``workers`` spawned processes (more than one), or this process.

    Made before the run knows its work (``preprocess.py`` makes it first thing), so that the
    first worker starts importing torch and the codec at once; ``close`` ends the processes (or
    frees the in-process codec and restores torch's thread count)."""

    def __init__(self, workers: int, threads_per_worker: int | None, device: str) -> None:
        """The flags as given: ``--workers`` (<= 0: one per CPU core, 1 on a GPU),
        ``--threads-per-worker``, ``--device``."""
        self.workers = workers = resolve_workers(workers, device)
        threads = resolve_threads(threads_per_worker, device)
        self.pool: ProcessPoolExecutor | None = None
        self._saved_threads: int | None = None
        self._warm: Future | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=mp.get_context("spawn"),
                initializer=init_dying_with_parent,  # no orphan workers after a kill -9
                initargs=(_init_process, device, threads),
            )
            self._warm = self.pool.submit(_warm_up)  # spawns the first worker now
        else:
            import torch

            self._saved_threads = torch.get_num_threads()
            _init_process(device, threads)

    def submit(self, cfg: EncodeConfig, jobs: list[list[Recording]]) -> list[Future | list[list[Outcome]]]:
        """Jobs: futures (worker processes) or, in this process, their results.  Workers are
        spawned as submitted jobs find none idle; a first submission of one job waits for the
        first worker to be ready instead (a one-job run starts one process, not two)."""
        if self.pool is None:
            return [encode_parts(cfg, parts) for parts in jobs]
        if self._warm is not None and len(jobs) == 1:
            wait([self._warm])
        self._warm = None
        return [self.pool.submit(encode_parts, cfg, parts) for parts in jobs]

    def close(self, wait_for_workers: bool = True) -> None:
        global _CODEC, _CODEC_CONFIG
        if self.pool is not None:
            self.pool.shutdown(wait=wait_for_workers, cancel_futures=True)
            self.pool = None
        elif self._saved_threads is not None:  # in-process: free the codec before the token stage
            import torch

            _CODEC = _CODEC_CONFIG = None
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None


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
    """A chunk whose jobs are running, or (``work is None``) a unit to mark complete."""

    cache: UnitCache
    index: int
    work: ChunkJobs | None = None


def encode_units(
    units: list[WorkUnit], codes_dir: str, cfg: EncodeConfig, workers: CodecWorkers | None = None
) -> list[UnitCache]:
    """Run (or resume) the codec stage for every unit; returns their complete caches.
    ``workers``: already started (the caller closes them); None: started and closed here."""
    caches = unit_caches(codes_dir, units, cfg)
    todo = [(u, c) for u, c in zip(units, caches) if not c.verify_complete()]  # damaged: again
    if not todo:
        logger.info("encode: all %d units already cached in %s", len(units), codes_dir)
        return caches
    own = workers is None
    if workers is None:
        workers = CodecWorkers(cfg.workers, cfg.threads_per_worker, cfg.device)
    try:
        _encode(todo, cfg, workers)
    finally:
        if own:
            workers.close()
    return caches


def _encode(todo: list[tuple[WorkUnit, UnitCache]], cfg: EncodeConfig, workers: CodecWorkers) -> None:
    progress = _Progress([u for u, _ in todo])
    job_utts = cfg.resolved_job_utterances()
    # jobs queued or running at most (enough to keep every worker busy), and finished chunks
    # waiting behind an unfinished older one (their codes are held in memory) at most
    max_running, max_pending = 2 * workers.workers, 4 * workers.workers + 8
    pending: deque[_Pending] = deque()

    def finish_oldest() -> None:
        p = pending.popleft()
        if p.work is None:
            p.cache.mark_complete(p.index)
            progress.unit_complete()
            return
        chunk, counts = p.work.assemble()
        p.cache.write_chunk(p.index, chunk, cfg.cache_codebooks)
        progress.update(counts)

    def settle(limit: int) -> None:
        """Write finished chunks (oldest first) until at most ``limit`` jobs are unfinished and
        at most ``max_pending`` chunks wait: workers never idle behind a chunk being written."""
        while pending:
            if pending[0].work is None or not pending[0].work.running():
                finish_oldest()
                continue
            running = [f for p in pending if p.work is not None for f in p.work.running()]
            if len(running) <= limit and len(pending) <= max_pending:
                return
            wait(running if len(running) > limit else pending[0].work.running(), return_when=FIRST_COMPLETED)

    try:
        for unit, cache in todo:
            cache.open_for_writing()
            progress.reading(unit)
            n = 0
            for n, (recs, errs) in enumerate(chunk_stream(unit, cfg.chunk_utterances), 1):
                if cache.reuse_chunk(n - 1):  # on disk and intact
                    progress.skipped += 1
                    continue
                plan = plan_jobs([len(r.utterances) for r in recs], job_utts)
                jobs = workers.submit(cfg, [[part_recording(recs[p.recording], p) for p in job] for job in plan])
                pending.append(_Pending(cache, n - 1, ChunkJobs(recs, errs, plan, jobs)))
                settle(max_running)  # in-process: jobs are done, the chunk written now
            pending.append(_Pending(cache, n))  # complete once its chunks are written
            settle(max_running)
        settle(0)
    finally:
        progress.close()
