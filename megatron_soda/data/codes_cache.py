"""On-disk cache of the codec stage: codes + transcripts, one directory per work unit.

The codec pass is the expensive part of preprocessing, so its output is kept and every
later step (re-tokenising, fewer codebooks, another interleave order, another split) reads
only this cache.  A unit directory holds::

    unit.json               what was encoded: input file (size, mtime), codec (and its
                            fingerprint), codebooks kept: the cache's own record, which decides
                            whether a later run may use it
    chunk-000000.npz ...    recordings in input order, written atomically one by one
    done.json               written last: number of chunks; the unit is complete

A chunk file stores ``codes`` (int16 ``[codebooks, frames]``, all utterances concatenated),
``frames`` (per utterance) and ``meta`` (UTF-8 JSON: recordings, utterance ids, texts and
durations, and the input errors met while producing the chunk).  Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.data.records import InputError

CACHE_VERSION = 1


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


def write_chunk(path: str, chunk: Chunk, num_codebooks: int) -> None:
    """Atomically write a chunk (temp file + rename)."""
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
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        codes=all_codes,
        frames=np.asarray(frames, dtype=np.int64),
        meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
    )
    os.replace(tmp, path)


def read_chunk(path: str) -> Chunk:
    with np.load(path, allow_pickle=False) as z:
        codes, frames = z["codes"], z["frames"]
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
    if meta.get("version") != CACHE_VERSION:
        raise ValueError(
            f"{path}: codes cache version {meta.get('version')}, expected {CACHE_VERSION}"
        )
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
        if stored is None:
            return f"{path}: missing"
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

    def _done_path(self) -> str:
        return os.path.join(self.dir, "done.json")

    def is_complete(self) -> bool:
        """Every chunk is written (``done.json``) and the cache serves this description."""
        return os.path.isfile(self._done_path()) and self.mismatch() is None

    def stored_description(self) -> dict | None:
        path = os.path.join(self.dir, "unit.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def open_for_writing(self) -> None:
        """Create the directory, or reset it when it was made for different inputs/settings."""
        stored = self.stored_description()
        if stored is not None and stored != self.description:
            for name in os.listdir(self.dir):
                os.remove(os.path.join(self.dir, name))
        os.makedirs(self.dir, exist_ok=True)
        write_json_atomic(
            os.path.join(self.dir, "unit.json"), self.description, indent=1, sort_keys=True
        )

    def mark_complete(self, num_chunks: int) -> None:
        write_json_atomic(self._done_path(), {"num_chunks": num_chunks}, indent=1, sort_keys=True)

    def num_chunks(self) -> int:
        with open(self._done_path()) as f:
            return int(json.load(f)["num_chunks"])

    def chunks(self) -> Iterator[Chunk]:
        for k in range(self.num_chunks()):
            yield read_chunk(self.chunk_path(k))
