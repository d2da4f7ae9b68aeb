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

Start-up: :class:`CodecWorkers` starts the workers' fork server when it is made (the server
imports torch and transformers' Mimi once, while the main process, which imports neither, loads
the tokenizer and reads the inputs: ``preprocess.py`` makes it first); workers are forked from
it as jobs wait for them, with those modules imported.  Each worker builds its codec once, at
its first job (the jobs carry the :class:`EncodeConfig`).

Determinism: on CPU the codec encodes one piece per forward pass and each worker uses one
intra-op thread (unless ``threads_per_worker`` says otherwise), so a clip's codes depend on
nothing but the clip: the same bytes whatever ``--workers`` and ``job_utterances``.
Parallelism is by processes (``--workers``; 0 = one per CPU core), which on CPU is also the
fastest arrangement (docs/benchmarks.md).

On a GPU (``--codec-batching duration``, its default there) the workers only decode and
resample; this process encodes each chunk's waveforms on the GPU in duration-sorted batches
(:mod:`megatron_soda.data.codec_workers`) while the workers decode the chunks after it.  The
codes cache records the mode (``codec_batching``), so a resumed run in the other mode starts
the unit again instead of mixing codes.  The final log line gives this process's time encoding
and waiting for decodes: waiting most of the run means decoding is the bottleneck.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

from megatron_soda.audio.codec_spec import codec_fingerprint, parse_codec_spec
from megatron_soda.data import codec_workers
from megatron_soda.data.codec_workers import (
    CodecWorkers,
    encode_decoded,
    resolve_batching,
    resolve_threads,
    resolve_workers,
)
from megatron_soda.data.codes_cache import UnitCache
from megatron_soda.data.encode_jobs import CPU_JOB_UTTERANCES, ChunkJobs, part_recording, plan_jobs
from megatron_soda.data.progress import StageProgress, read_position
from megatron_soda.data.readers import read_source
from megatron_soda.data.records import InputError, Recording
from megatron_soda.data.units import WorkUnit
from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

logger = logging.getLogger(__name__)


# Without --job-utterances a chunk is cut into at least this many jobs per worker.
JOBS_PER_WORKER = 2

@dataclass(frozen=True)
class EncodeConfig:
    codec: str  # a spec for audio.codec.parse_codec_spec; no default (see data.preprocess.CODEC_REQUIRED)
    cache_codebooks: int = DEFAULT_NUM_CODEBOOKS
    device: str = "cpu"
    workers: int = 1  # worker processes; <= 0: one per CPU core (1 on a GPU with pieces batching)
    threads_per_worker: int | None = None  # None: 1 on CPU (deterministic), torch's default on GPU
    chunk_utterances: int = 128
    chunk_seconds: float = 60.0
    batch_seconds: float | None = None  # None: one piece per pass on CPU (pieces), 240 s otherwise
    job_utterances: int | None = (
        None  # at most per job; None: CPU_JOB_UTTERANCES, a chunk on GPU pieces
    )
    precision: str = "fp32"  # "bf16": opt-in, faster on CPU, codes differ for some frames
    batching: str | None = None  # "pieces" | "duration" (codec_workers); None: by device

    def resolved_batching(self) -> str:
        return resolve_batching(self.batching, self.device)

    def duration_batch_seconds(self) -> float:
        """Padded audio per forward pass with duration batching."""
        from megatron_soda.audio.codec import GPU_BATCH_SECONDS  # the codec's own default (torch)

        return GPU_BATCH_SECONDS if self.batch_seconds is None else self.batch_seconds

    def resolved_workers(self) -> int:
        return resolve_workers(self.workers, self.device, self.batching)

    def resolved_threads(self) -> int | None:
        return resolve_threads(self.threads_per_worker, self.device)

    def resolved_job_utterances(self) -> int:
        if self.job_utterances:
            return self.job_utterances
        if self.device == "cpu" or self.resolved_batching() == "duration":  # decode jobs: small
            return CPU_JOB_UTTERANCES
        return self.chunk_utterances


def unit_caches(codes_dir: str, units: list[WorkUnit], cfg: EncodeConfig) -> list[UnitCache]:
    """Each unit's codes cache, keyed by the unit and the codec (fingerprinted once: for a
    pretrained codec that reads its weight files)."""
    codec = {
        "codec": str(parse_codec_spec(cfg.codec)),
        "codec_fingerprint": codec_fingerprint(cfg.codec, cfg.chunk_seconds, cfg.precision),
        "cache_codebooks": cfg.cache_codebooks,
        "chunk_utterances": cfg.chunk_utterances,
    }
    if cfg.resolved_batching() == "duration":  # batch shapes can change a few frames' codes
        codec["codec_batching"] = f"duration/{cfg.duration_batch_seconds():g}s"
    return [UnitCache(os.path.join(codes_dir, u.name), {**u.describe(), **codec}) for u in units]


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
        self.times: dict[str, float] = {}  # this process: "encode" (duration batching), "wait"

    def _extra(self) -> str:
        elapsed = max(time.time() - self.bar.start, 1e-9)
        return (
            f"{self.utts} utt, {self.seconds / 3600:.2f} h audio ({self.seconds / elapsed:.1f}x realtime), "
            f"{self.errors} errors"
        )

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

    def timed(self, what: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.times[what] = self.times.get(what, 0.0) + time.perf_counter() - t0

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
        if self.times:  # extra: benchmarks/bench_codec.py reads it
            logger.info(
                "encode: this process spent %s of %.1fs wall",
                ", ".join(f"{v:.1f}s {k}" for k, v in sorted(self.times.items())),
                elapsed,
                extra={"stage_times": {**self.times, "wall": elapsed, "audio": self.seconds}},
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
        workers = CodecWorkers(cfg.workers, cfg.threads_per_worker, cfg.device, cfg.batching)
    if workers.batching != cfg.resolved_batching():
        raise ValueError(
            f"workers started for {workers.batching} batching, the stage asks for "
            f"{cfg.resolved_batching()}"
        )
    try:
        _encode(todo, cfg, workers)
    finally:
        if own:
            workers.close()
    return caches


def _job_size(cfg: EncodeConfig, job_utts: int, chunk_utts: int, workers: int) -> int:
    """Utterances per job in a chunk of ``chunk_utts``: the configured size, but without
    ``--job-utterances`` at least ``JOBS_PER_WORKER`` jobs per worker, so a small input (a few
    minutes of speech) is not left to fewer jobs than workers.  The plan never changes the
    output (data/encode_jobs.py)."""
    if cfg.job_utterances:
        return job_utts
    return max(1, min(job_utts, -(-chunk_utts // (JOBS_PER_WORKER * workers))))


def _encode(
    todo: list[tuple[WorkUnit, UnitCache]], cfg: EncodeConfig, workers: CodecWorkers
) -> None:
    progress = _Progress([u for u, _ in todo])
    job_utts = cfg.resolved_job_utterances()
    # jobs queued or running at most (enough to keep every worker busy), and finished chunks
    # waiting behind an unfinished older one (their codes are held in memory) at most
    max_running, max_pending = 2 * workers.workers, 4 * workers.workers + 8
    encode = None
    if workers.batching == "duration":  # decoded waveforms are held: the running jobs' chunks + 1
        spanned = -(-max_running * min(job_utts, cfg.chunk_utterances) // cfg.chunk_utterances)
        max_pending = 1 + max(2, spanned)

        def encode(recs, decoded):
            progress.timed("codec build", codec_workers.ensure_codec, cfg)  # at the first chunk
            return progress.timed("encode", encode_decoded, cfg, recs, decoded)

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
            waiting = running if len(running) > limit else pending[0].work.running()
            progress.timed("wait", wait, waiting, None, FIRST_COMPLETED)

    try:
        for unit, cache in todo:
            cache.open_for_writing()
            progress.reading(unit)
            n = 0
            for n, (recs, errs) in enumerate(chunk_stream(unit, cfg.chunk_utterances), 1):
                if cache.reuse_chunk(n - 1):  # on disk and intact
                    progress.skipped += 1
                    continue
                sizes = [len(r.utterances) for r in recs]
                plan = plan_jobs(sizes, _job_size(cfg, job_utts, sum(sizes), workers.workers))
                jobs = workers.submit(
                    cfg, [[part_recording(recs[p.recording], p) for p in job] for job in plan]
                )
                pending.append(_Pending(cache, n - 1, ChunkJobs(recs, errs, plan, jobs, encode)))
                settle(max_running)  # in-process: jobs are done, the chunk written now
            pending.append(_Pending(cache, n))  # complete once its chunks are written
            settle(max_running)
        settle(0)
    finally:
        progress.close()
