"""Where the codec stage's jobs run: worker processes (or this process) and the codec they use.

Two arrangements (``EncodeConfig.batching``, flag ``--codec-batching``):

* ``pieces`` (the default on CPU): each job is decoded, resampled and encoded in one streaming
  pass by whichever worker takes it (:func:`encode_parts`); the codec runs one piece per pass on
  CPU (bit-identical whatever the grouping) and pieces in input order on a GPU.
* ``duration`` (the default on a GPU): the workers only decode and resample
  (:func:`decode_parts`: per utterance its 24 kHz waveform, as ``audio.io.decode_segments``
  gives it); the main process owns the one codec (on the GPU) and encodes each chunk's
  waveforms at once, in duration-sorted batches (:func:`encode_decoded`,
  ``audio/batched_encode.py``).  The batches depend only on the chunk's content, never on the
  order decodes arrive in (padding can change bits).  The workers never build a codec, so eight
  decoders cost eight small processes, not eight copies of Mimi.

Both fill the same per-utterance outcome slots (``(seconds, codes)`` or a :class:`Failure`
with the same scopes), so re-joining parts, assembling chunks and the error report are shared
(:mod:`megatron_soda.data.encode_jobs`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

import megatron_soda
from megatron_soda.audio.io import TARGET_SAMPLE_RATE as SAMPLE_RATE
from megatron_soda.audio.io import AudioError, Segment, decode_segments
from megatron_soda.compat.parent_death import init_dying_with_parent
from megatron_soda.data.encode_jobs import Failure, Outcome
from megatron_soda.data.records import Recording, unexpected

if TYPE_CHECKING:
    from megatron_soda.data.encode_stage import EncodeConfig

logger = logging.getLogger(__name__)
BATCHINGS = ("pieces", "duration")
PRELOAD_MODULE = "megatron_soda.data.codec_preload"  # what the workers' fork server imports
Decoded = np.ndarray | Failure  # what a decode job gives per utterance

_CODEC = None
_CODEC_CONFIG: EncodeConfig | None = None
# this process's work: parts decoded / encoded, waveforms encoded (tests, :func:`process_state`)
COUNTS: Counter = Counter()


def resolve_batching(batching: str | None, device: str) -> str:
    """``--codec-batching``: as given, else ``duration`` on a GPU and ``pieces`` on CPU (one
    piece per pass there: batching buys no speed on CPU and is not bit-identical in general)."""
    if batching is None:
        return "pieces" if device == "cpu" else "duration"
    if batching not in BATCHINGS:
        raise ValueError(f"codec batching must be one of {BATCHINGS}, got {batching!r}")
    return batching


def resolve_workers(workers: int, device: str, batching: str | None = None) -> int:
    """``--workers``: as given, or (<= 0) one per CPU core, except 1 on a GPU encoding pieces in
    its workers (with ``duration`` batching the workers are CPU decoders: one per core)."""
    if workers > 0:
        return workers
    if device != "cpu" and resolve_batching(batching, device) == "pieces":
        return 1
    return max(1, _cpu_count())


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


def _init_process(device: str, threads: int | None, env: dict[str, str] | None = None) -> None:
    """A worker's (or the in-process run's) torch settings (a worker forked by the fork server
    has torch and the codec's modules imported already, :mod:`codec_preload`)."""
    _adopt_environment(env)
    import torch

    from megatron_soda.compat.allocator import tune_cpu_allocator

    if threads:
        torch.set_num_threads(threads)
    if device == "cpu":
        tune_cpu_allocator()


def _init_decoder(env: dict[str, str] | None = None) -> None:
    """A decode-only worker needs no torch settings (it never runs the codec)."""
    _adopt_environment(env)


def _adopt_environment(env: dict[str, str] | None) -> None:
    """The environment of the process that made the pool, as a spawned worker would inherit it
    (a fork server's children inherit the server's, from when it started).  Settings a library
    read when the server imported it (``HF_HOME`` in huggingface_hub's constants, OpenMP's
    thread variables in torch) keep the server's values."""
    if env is not None and env != os.environ:
        os.environ.clear()
        os.environ.update(env)


def _pool_context() -> mp.context.BaseContext:
    """Workers forked by a fork server that imported torch and transformers' Mimi once
    (:mod:`codec_preload`, about 3.5 s and 0.3 GB shared copy-on-write), instead of each worker
    importing them again (``spawn``); started now, in the background, so that the server imports
    while this process loads the tokenizer and reads the inputs.  ``spawn`` where there is no
    fork server (not POSIX) or it cannot be started here.  A fork server started earlier by this
    process for another pool (without the preload) still serves: its workers import on demand."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD_MODULE])
    try:
        with _importable_here():
            forkserver.ensure_running()
    except (OSError, ChildProcessError) as e:  # e.g. a fork() child of a process that ran one
        logger.warning("codec workers: no fork server (%s); spawning them", e)
        return mp.get_context("spawn")
    return ctx


@contextlib.contextmanager
def _importable_here() -> Iterator[None]:
    """``PYTHONPATH`` led by the directory this ``megatron_soda`` comes from, while the fork
    server starts: CPython 3.11's server does not apply the ``sys.path`` it is given
    (multiprocessing/forkserver.py: ``main`` takes ``sys_path`` and ignores it), so without it
    the preload could import another installed copy, or none (then silently skipped)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(megatron_soda.__file__)))
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root, saved] if saved else [root])
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def describe_exits(processes: dict) -> str:
    """``pid N: exit code X`` per worker process that has ended (a broken pool's message: -9 is
    SIGKILL (out of memory, or its parent gone), 1 an exception while starting, 0 a failed
    initializer)."""
    ended = [(pid, p.exitcode) for pid, p in sorted(processes.items()) if p.exitcode is not None]
    return ", ".join(f"pid {pid}: exit code {code}" for pid, code in ended) or "none ended"


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


def ensure_codec(cfg: EncodeConfig) -> None:
    """This process's codec is the one of ``cfg`` (built now if not)."""
    if cfg != _CODEC_CONFIG:
        _build_codec(cfg)


def _init_worker(cfg: EncodeConfig, threads: int | None) -> None:
    """Torch settings and the codec of ``cfg``, now (tests, benchmarks)."""
    _init_process(cfg.device, threads)
    _build_codec(cfg)


def process_state(hold: float = 0.0) -> dict:
    """This process's id, whether it holds a codec, and its work counts (tests: ``hold`` seconds
    first, so that probes sent at once to a pool reach distinct workers)."""
    if hold:
        import time

        time.sleep(hold)
    return {"pid": os.getpid(), "codec": _CODEC is not None, **COUNTS}


def _walk_recording(rec: Recording, decode: Callable) -> list:
    """Per utterance what ``decode`` (``encode_segments`` bound to an encoder, or
    ``decode_segments``) gives for it, or the :class:`Failure` rejecting it; one pass per source.
    A failure of the whole source has scope "source"."""
    outs: list = [None] * len(rec.utterances)
    by_source: dict[str, list[int]] = {}
    for i, u in enumerate(rec.utterances):
        by_source.setdefault(u.audio.source_key(), []).append(i)
    for idxs in by_source.values():
        ref = rec.utterances[idxs[0]].audio
        whole = len(idxs) == 1 and ref.start is None and ref.end is None
        try:
            got = decode(
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


def _guarded(run: Callable[[list[Recording]], list[list]], parts: list[Recording]) -> list[list]:
    """``run(parts)``; an exception nobody foresaw costs only the part it happened in: the job
    is redone one part at a time, and the failing part's utterances are rejected (scope
    "recording") with the exception's type and message (never a traceback that ends the run)."""
    try:
        return run(parts)
    except Exception as e:
        if len(parts) == 1:
            rec = parts[0]
            return [[Failure(unexpected(e, rec.source, rec.id), "recording")] * len(rec.utterances)]
        return [_guarded(run, [rec])[0] for rec in parts]


def encode_parts(cfg: EncodeConfig | None, parts: list[Recording]) -> list[list[Outcome]]:
    """A ``pieces`` job: per recording (or part of one,
    :func:`~megatron_soda.data.encode_jobs.part_recording`) per utterance ``(seconds, codes)``
    or the :class:`Failure` rejecting its audio.  ``cfg``: the codec to use (built at this
    process's first job); None: the one already built."""
    if cfg is not None:
        ensure_codec(cfg)
    return _guarded(_encode_recordings, parts)


def _encode_recordings(recordings: list[Recording]) -> list[list[Outcome]]:
    from megatron_soda.audio.streaming import PieceEncoder, encode_segments

    encoder = PieceEncoder(_CODEC)  # one per job: a GPU batches pieces across its sources
    all_streams = [_walk_recording(rec, partial(encode_segments, encoder)) for rec in recordings]
    encoder.flush()
    COUNTS["parts_encoded"] += len(recordings)
    return [
        [s if isinstance(s, Failure) else (s.samples / SAMPLE_RATE, s.codes()) for s in streams]
        for streams in all_streams
    ]


def decode_parts(parts: list[Recording]) -> list[list[Decoded]]:
    """A ``duration`` job (no codec): per part per utterance its 24 kHz mono float32 waveform
    or the :class:`Failure` rejecting it (the same failures and scopes as :func:`encode_parts`)."""
    out = _guarded(lambda recs: [_walk_recording(r, decode_segments) for r in recs], parts)
    COUNTS["parts_decoded"] += len(parts)
    return out


def encode_decoded(
    cfg: EncodeConfig, recordings: list[Recording], decoded: list[list[Decoded]]
) -> list[list[Outcome]]:
    """The main side of ``duration`` batching: one chunk's decoded waveforms (per recording,
    per utterance) -> ``(seconds, codes)`` per waveform, failures kept, with this process's
    codec (built for ``cfg`` at the first chunk).  All waveforms of the chunk are encoded
    together, batched by duration (``audio.batched_encode.encode_batched``: the order depends
    only on the chunk's content).  An unforeseen exception is retried one recording at a time;
    a recording that still fails is rejected (scope "recording"), as a failing job part is."""
    ensure_codec(cfg)
    try:
        return _encode_waves(cfg, decoded)
    except Exception:  # one recording at a time (the codes of the others may differ in bits)
        return [_encode_recording(cfg, rec, outs) for rec, outs in zip(recordings, decoded)]


def _encode_recording(cfg: EncodeConfig, rec: Recording, outs: list[Decoded]) -> list[Outcome]:
    try:
        return _encode_waves(cfg, [outs])[0]
    except Exception as e:
        return [Failure(unexpected(e, rec.source, rec.id), "recording")] * len(outs)


def _encode_waves(cfg: EncodeConfig, decoded: list[list[Decoded]]) -> list[list[Outcome]]:
    from megatron_soda.audio.batched_encode import encode_batched

    waves = [w for outs in decoded for w in outs if not isinstance(w, Failure) and w.size]
    seconds = cfg.duration_batch_seconds()
    codes = iter(encode_batched(_CODEC, waves, seconds, dtype=cfg.precision) if waves else [])
    COUNTS["waves_encoded"] += len(waves)
    none = np.zeros((_CODEC.num_codebooks, 0), np.int16)  # an empty waveform, as CodesStream gives
    return [
        [
            w if isinstance(w, Failure) else (w.size / SAMPLE_RATE, next(codes) if w.size else none)
            for w in outs
        ]
        for outs in decoded
    ]


def encode_job(recordings: list[Recording]) -> dict:
    """Whole recordings with the codec already built (:func:`_init_worker`): per recording,
    per utterance ``(seconds, codes)`` or None where its audio was rejected (the reason is in
    ``errors``)."""
    from megatron_soda.data.encode_jobs import rejoin

    joined = [rejoin(rec, outs) for rec, outs in zip(recordings, encode_parts(None, recordings))]
    return {
        "encoded": [enc for enc, _ in joined],
        "errors": [e for _, errs in joined for e in errs],
    }


class CodecWorkers:
    """Where jobs run: ``workers`` worker processes (more than one; forked by the fork server of
    :func:`_pool_context` as submitted jobs find none idle: a one-job run starts one), or this
    process.

    Made before the run knows its work (``preprocess.py`` makes it first thing), so that the
    workers' fork server imports torch and the codec meanwhile; ``close`` ends the processes (or
    frees the in-process codec and restores torch's thread count).  With ``duration`` batching
    the processes only decode (:func:`decode_parts`) and this process encodes
    (:func:`encode_decoded`)."""

    def __init__(
        self, workers: int, threads_per_worker: int | None, device: str, batching: str | None = None
    ) -> None:
        """The flags as given: ``--workers`` (<= 0: :func:`resolve_workers`),
        ``--threads-per-worker``, ``--device``, ``--codec-batching``."""
        self.batching = resolve_batching(batching, device)
        self.workers = workers = resolve_workers(workers, device, self.batching)
        threads = resolve_threads(threads_per_worker, device)
        decoding = self.batching == "duration"
        self.pool: ProcessPoolExecutor | None = None
        self.processes: dict = {}
        self._saved_threads: int | None = None
        if workers > 1:
            env = dict(os.environ)
            init = (_init_decoder, env) if decoding else (_init_process, device, threads, env)
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=_pool_context(),
                initializer=init_dying_with_parent,  # no orphan workers after a kill -9
                initargs=init,
            )
            self.processes = self.pool._processes  # kept past shutdown: exit codes of a broken pool
        if self.pool is None or decoding:  # the codec runs in this process
            import torch

            self._saved_threads = torch.get_num_threads()
            _init_process(device, threads)

    def submit(self, cfg: EncodeConfig, jobs: list[list[Recording]]) -> list[Future | list[list]]:
        """Jobs: futures (worker processes) or, in this process, their results."""
        run = decode_parts if self.batching == "duration" else partial(encode_parts, cfg)
        if self.pool is None:
            return [run(parts) for parts in jobs]
        return [self.pool.submit(run, parts) for parts in jobs]

    def close(self, wait_for_workers: bool = True) -> None:
        global _CODEC, _CODEC_CONFIG
        if self.pool is not None:
            self.pool.shutdown(wait=wait_for_workers, cancel_futures=True)
            self.pool = None
        if self._saved_threads is not None:  # in-process codec: freed before the token stage
            import torch

            _CODEC = _CODEC_CONFIG = None
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
