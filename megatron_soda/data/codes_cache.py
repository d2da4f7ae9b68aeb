"""On-disk cache of the codec stage: codes + transcripts, one directory per work unit.

The codec pass is the expensive part of preprocessing, so its output is kept and every
later step (re-tokenising, fewer codebooks, another interleave order, another split) reads
only this cache.  A unit directory holds::

    unit.json               what was encoded: input file (size, mtime), codec (and its
                            fingerprint), codebooks kept: the cache's own record, which decides
                            whether a later run may use it
    chunk-000000.npz ...    recordings in input order, written atomically one by one, each
                            flushed to disk (fsync) before it is renamed into place
    done.json               written last: the number of chunks and each one's size and sha256;
                            the unit is complete

A run that finds a unit's chunks on disk checks them before using them (a chunk damaged after
its rename: a power loss before the data reached the disk, a truncated copy): against the size
and checksum ``done.json`` records, or, for a unit still in progress, by a full parse.  A damaged
chunk is logged (which, and why) and encoded again; only it.

A chunk file stores ``codes`` (int16 ``[codebooks, frames]``, all utterances concatenated),
``frames`` (per utterance) and ``meta`` (UTF-8 JSON: recordings, utterance ids, texts and
durations, and the input errors met while producing the chunk).  Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from megatron_soda.atomic_files import fsync_path, write_json_atomic
from megatron_soda.data.records import InputError

logger = logging.getLogger(__name__)
CACHE_VERSION = 1


class ChunkError(ValueError):
    """A chunk file that is not a complete, consistent codes cache chunk (the message names it)."""


@dataclass
class EncodedUtterance:
    id: str
    text: str
    seconds: float
    codes: np.ndarray  # int16 [codebooks, frames]


@dataclass
class EncodedRecording:
    id: str
    source: str
    utterances: list[EncodedUtterance] = field(default_factory=list)


@dataclass
class Chunk:
    recordings: list[EncodedRecording] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    attempted: int = 0  # utterances (or items) tried, for the error rate


def write_chunk(path: str, chunk: Chunk, num_codebooks: int) -> dict:
    """Write a chunk durably and atomically (temp file, fsync, rename, fsync of the directory);
    returns its record for ``done.json``: ``{"bytes": size, "sha256": hex digest}``."""
    codes, frames, recs = [], [], []
    for rec in chunk.recordings:
        utts = []
        for u in rec.utterances:
            if u.codes.shape[0] < num_codebooks:
                raise ValueError(f"{u.id}: {u.codes.shape[0]} codebooks < {num_codebooks}")
            codes.append(u.codes[:num_codebooks].astype(np.int16))
            frames.append(u.codes.shape[1])
            utts.append({"id": u.id, "text": u.text, "seconds": round(float(u.seconds), 6)})
        recs.append({"id": rec.id, "source": rec.source, "utterances": utts})
    meta = {
        "version": CACHE_VERSION,
        "recordings": recs,
        "errors": [e.to_dict() for e in chunk.errors],
        "attempted": chunk.attempted,
    }
    all_codes = np.concatenate(codes, axis=1) if codes else np.zeros((num_codebooks, 0), np.int16)
    buf = io.BytesIO()  # serialised in memory (a chunk is a few MB) to checksum what is written
    np.savez(
        buf,
        codes=all_codes,
        frames=np.asarray(frames, dtype=np.int64),
        meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
    )
    data = buf.getbuffer()
    tmp = path + ".tmp.npz"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))
    return _record(data)


def _record(data: bytes | memoryview) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_chunk(path: str, data: bytes | None = None) -> Chunk:
    """The chunk at ``path`` (read from ``data`` when given: its bytes); anything but a complete,
    consistent chunk (truncated, damaged, foreign) is a :class:`ChunkError` naming ``path``.
    Nothing is unpickled."""
    try:
        with np.load(path if data is None else io.BytesIO(data), allow_pickle=False) as z:
            codes, frames = z["codes"], z["frames"]  # reading a member whole checks its zip CRC
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        return _chunk(codes, frames, meta)
    except ChunkError as e:
        raise ChunkError(f"{path}: {e}") from None
    except Exception as e:  # a truncated or foreign file fails in zipfile, numpy or json
        raise ChunkError(f"{path}: not a readable codes cache chunk ({type(e).__name__}: {e})") from None


def _chunk(codes: np.ndarray, frames: np.ndarray, meta: object) -> Chunk:
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ChunkError(f"codes cache version {version}, expected {CACHE_VERSION}")
    n_utts = sum(len(rec["utterances"]) for rec in meta["recordings"])
    if codes.dtype != np.int16 or codes.ndim != 2 or frames.ndim != 1 or len(frames) != n_utts or (frames < 0).any():
        raise ChunkError(
            f"inconsistent arrays: codes {codes.dtype} {codes.shape}, frames {frames.shape}, "
            f"{n_utts} utterances"
        )
    if int(frames.sum()) != codes.shape[1]:
        raise ChunkError(f"utterance frames sum to {int(frames.sum())}, codes hold {codes.shape[1]}")
    bounds = np.concatenate([[0], np.cumsum(frames)])
    chunk = Chunk(
        errors=[InputError(**e) for e in meta["errors"]], attempted=int(meta.get("attempted", 0))
    )
    k = 0
    for rec in meta["recordings"]:
        er = EncodedRecording(rec["id"], rec["source"])
        for u in rec["utterances"]:
            er.utterances.append(
                EncodedUtterance(
                    u["id"], u["text"], u["seconds"], codes[:, bounds[k] : bounds[k + 1]]
                )
            )
            k += 1
        chunk.recordings.append(er)
    return chunk


class UnitCache:
    """The cache directory of one work unit (an input file, or a slice of one)."""

    def __init__(self, directory: str, description: dict) -> None:
        self.dir = directory
        self.description = description
        self._records: dict[int, dict] = {}  # chunks checked or written by this run: done.json's

    @property
    def cached_codebooks(self) -> int:
        """Codebooks the cache holds, as its ``unit.json`` records (before that is written: the
        description's)."""
        return int((self.stored_description() or self.description)["cache_codebooks"])

    def mismatch(self) -> str | None:
        """Why the cache on disk cannot serve this description (None: it can): made from another
        input or with another codec (fingerprint) or settings, or holding fewer codebooks than
        the description asks for (more serve any fewer)."""
        stored = self.stored_description()
        path = os.path.join(self.dir, "unit.json")
        if not stored:
            return f"{path}: {'missing' if stored is None else 'damaged'}"
        have, want = dict(stored), dict(self.description)
        held, needed = int(have.pop("cache_codebooks", 0)), int(want.pop("cache_codebooks"))
        differ = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        if differ:
            k = differ[0]
            return f"{path}: made with {k} {have.get(k)!r}, this run has {want.get(k)!r}"
        if held < needed:
            return f"{path}: holds {held} codebooks, {needed} needed"
        return None

    def chunk_path(self, k: int) -> str:
        return os.path.join(self.dir, f"chunk-{k:06d}.npz")

    def has_chunk(self, k: int) -> bool:
        return os.path.isfile(self.chunk_path(k))

    def write_chunk(self, k: int, chunk: Chunk, num_codebooks: int) -> None:
        """Write chunk ``k`` durably (:func:`write_chunk`), its record kept for ``done.json``."""
        self._records[k] = write_chunk(self.chunk_path(k), chunk, num_codebooks)

    def reuse_chunk(self, k: int) -> bool:
        """Whether chunk ``k`` is on disk and intact (:meth:`check_chunk`), so a resumed run
        skips it.  A damaged one is logged, removed, and False: it is encoded again."""
        if k in self._records:
            return self.has_chunk(k)
        if not self.has_chunk(k):
            return False
        why = self.check_chunk(k)
        if why is None:
            return True
        logger.warning("codes cache: %s; encoding it again", why)
        os.remove(self.chunk_path(k))
        return False

    def check_chunk(self, k: int, want: dict | None = None) -> str | None:
        """Why chunk ``k`` cannot be used (None: it can): its bytes differ from ``want`` (its
        record in ``done.json``: size, sha256), or, with no record, it does not parse whole.
        An intact chunk's record is kept for ``done.json``."""
        path = self.chunk_path(k)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return f"{path}: unreadable ({e.strerror or e})"
        have = _record(data)
        if want is not None and want.get("bytes") != have["bytes"]:
            return (f"{path}: {have['bytes']} bytes, {want.get('bytes')} were written (truncated or "
                    "damaged after it was written)")
        if want is not None and want.get("sha256") != have["sha256"]:
            return f"{path}: its sha256 differs from the one recorded when it was written (damaged)"
        if want is None:
            try:
                read_chunk(path, data)
            except ChunkError as e:
                return str(e)
        self._records[k] = have
        return None

    def damaged_chunks(self) -> list[tuple[int, str]]:
        """Of a complete unit (``done.json``), each damaged or missing chunk and why it cannot be
        used (empty: all are intact): every chunk is read and checked against its recorded size
        and sha256 (a full parse where ``done.json`` predates those records)."""
        records = self._stored_records()
        found = ((k, self.check_chunk(k, records[k] if records else None)) for k in range(self.num_chunks()))
        return [(k, why) for k, why in found if why is not None]

    def verify_complete(self) -> bool:
        """Complete (:meth:`is_complete`) with every chunk intact.  A unit with damaged chunks is
        logged (which, and why) and made incomplete (its ``done.json`` and those chunks removed),
        so that encoding it again redoes those chunks only."""
        if not self.is_complete():
            return False
        damaged = self.damaged_chunks()
        if not damaged:
            return True
        os.remove(self._done_path())
        for k, why in damaged:
            logger.warning("codes cache: %s; encoding it again", why)
            if self.has_chunk(k):
                os.remove(self.chunk_path(k))
        return False

    def _done_path(self) -> str:
        return os.path.join(self.dir, "done.json")

    def is_complete(self) -> bool:
        """Every chunk is written (``done.json``) and the cache serves this description."""
        return self._done() is not None and self.mismatch() is None

    def stored_description(self) -> dict | None:
        path = os.path.join(self.dir, "unit.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
        except ValueError:
            stored = None
        return stored if isinstance(stored, dict) else {}  # {}: damaged, matches nothing

    def open_for_writing(self) -> None:
        """Create the directory, or reset it when it was made for different inputs/settings."""
        stored = self.stored_description()
        if stored is not None and stored != self.description:
            for name in os.listdir(self.dir):
                os.remove(os.path.join(self.dir, name))
            self._records.clear()
        os.makedirs(self.dir, exist_ok=True)
        write_json_atomic(
            os.path.join(self.dir, "unit.json"), self.description, durable=True, indent=1, sort_keys=True
        )

    def mark_complete(self, num_chunks: int) -> None:
        """Write ``done.json`` (durably): the chunk count and, for the checks of later runs,
        each chunk's record (every chunk was written or checked by this run)."""
        done: dict = {"num_chunks": num_chunks}
        if all(k in self._records for k in range(num_chunks)):
            done["chunks"] = [self._records[k] for k in range(num_chunks)]
        write_json_atomic(self._done_path(), done, durable=True, indent=1, sort_keys=True)
        fsync_path(self.dir)

    def _done(self) -> dict | None:
        """``done.json``; None when missing or damaged (the unit is then encoded again, its
        intact chunks reused)."""
        try:
            with open(self._done_path(), encoding="utf-8") as f:
                done = json.load(f)
        except (OSError, ValueError):
            return None
        ok = isinstance(done, dict) and isinstance(done.get("num_chunks"), int) and done["num_chunks"] >= 0
        return done if ok else None

    def num_chunks(self) -> int:
        done = self._done()
        if done is None:
            raise ChunkError(f"{self._done_path()}: missing or damaged")
        return int(done["num_chunks"])

    def _stored_records(self) -> list[dict] | None:
        """The chunk records ``done.json`` holds (None: written before it held them)."""
        records = (self._done() or {}).get("chunks")
        if not isinstance(records, list) or len(records) != self.num_chunks():
            return None
        return records if all(isinstance(r, dict) for r in records) else None

    def chunks(self) -> Iterator[Chunk]:
        for k in range(self.num_chunks()):
            yield read_chunk(self.chunk_path(k))
