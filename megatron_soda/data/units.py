"""Input expansion and deterministic work slicing (``--num-shards K --shard-index I``).

Rule: with at least K input files, slice I takes files I, I+K, I+2K, ...; with fewer files,
every slice reads every file and takes its recordings I, I+K, ... (by position in the file).
Either way the slices partition the data, and the same arguments always give the same slice.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from megatron_soda.audio.files import special_file_reason
from megatron_soda.data.readers import cvss, input_format, lhotse_manifests, yodas2
from megatron_soda.data.records import InputError

T = TypeVar("T")


class InputSpecError(ValueError):
    """An --input that names nothing usable."""


def expand_inputs(inputs: list[str], fmt: str, split: str = "train") -> list[str]:
    """Files, directories (their matching files, sorted) and globs -> absolute file paths;
    anything that is no regular file (a FIFO, a device, a socket) is an :class:`InputSpecError`
    naming it, before it is opened.  ``split``: the ``cvss`` split a directory contributes."""
    extensions = input_format(fmt).extensions
    out: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(root, f)
                for root, _, files in os.walk(spec)
                for f in files
                if f.endswith(extensions)
                and (fmt != "cvss" or cvss.is_unit(os.path.join(root, f), split))
            )
            if not found:
                raise InputSpecError(
                    f"{spec}: directory holds no {'/'.join(extensions)} files for --input-format {fmt}"
                )
        elif os.path.exists(spec):
            found = [spec]
        else:
            found = sorted(glob.glob(spec))
            if not found:
                raise InputSpecError(f"{spec}: no such file, directory or glob match")
        for p in found:
            if _skipped(p, fmt):
                continue
            reason = special_file_reason(p)
            if reason and os.path.isdir(p):  # matched by a glob
                raise InputSpecError(f"{p}: a directory matched by {spec}; give it as --input itself")
            if reason:  # a FIFO would hang the run, a device never end: refused unopened
                raise InputSpecError(f"{p}: {reason}")
            out.append(_unit_path(os.path.abspath(p), fmt))
    return list(dict.fromkeys(out))  # first occurrence of each, in order


def _skipped(path: str, fmt: str) -> bool:
    """Files a directory or glob may hold that are no work unit of ``fmt``."""
    return fmt == "lhotse" and lhotse_manifests.is_skipped_manifest(path)


def _unit_path(path: str, fmt: str) -> str:
    """The work unit a named file belongs to: for ``yodas2`` a transcript json names its
    subshard's tar.gz, for ``lhotse`` a supervisions manifest its recordings manifest, so that
    naming both files of a pair gives one unit."""
    if fmt == "yodas2" and not path.endswith(".tar.gz"):
        unit = yodas2.tar_path_for_transcript(path)
    elif fmt == "lhotse" and lhotse_manifests.is_supervisions_manifest(path):
        unit = lhotse_manifests.recordings_path(path)
    else:
        return path
    reason = special_file_reason(unit)
    if reason:
        raise InputSpecError(f"{path}: its {fmt} work unit {unit}: {reason}")
    return unit


def companion_files(path: str, fmt: str) -> list[str]:
    """Files a unit reads besides its own path (a changed one invalidates its codes cache)."""
    if fmt == "yodas2":
        return [yodas2.transcript_path(path)]
    if fmt == "lhotse":
        sup = lhotse_manifests.supervisions_path(path)
        return [sup] if sup else []
    return []


@dataclass(frozen=True)
class WorkUnit:
    path: str
    fmt: str
    stride: int = 1  # take recordings whose position p satisfies p % stride == offset
    offset: int = 0
    source_root: str | None = None  # cvss: --cvss-source-root (part of what the cache describes)

    def takes(self, position: int) -> bool:
        return position % self.stride == self.offset

    def select(self, items: Iterable[T | InputError]) -> Iterator[T | InputError]:
        """This unit's share of a reader's items: the records at its positions, and the read
        errors (bad lines), which only slice 0 reports so that merged slices count them once."""
        position = 0
        for item in items:
            if isinstance(item, InputError):
                if self.offset == 0:
                    yield item
                continue
            if self.takes(position):
                yield item
            position += 1

    def describe(self) -> dict:
        st = os.stat(self.path)
        out = {
            "input": self.path,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "format": self.fmt,
            "stride": self.stride,
            "offset": self.offset,
        }
        companions = []
        extra = []
        if self.source_root is not None:
            out["source_root"] = os.path.abspath(self.source_root)
            tsv = cvss.covost_tsv(self.source_root, os.path.basename(os.path.dirname(self.path)))
            extra = [tsv] if tsv else []
        for p in companion_files(self.path, self.fmt) + extra:
            try:
                cst = os.stat(p)
                companions.append({"path": p, "size": cst.st_size, "mtime_ns": cst.st_mtime_ns})
            except OSError:
                companions.append({"path": p, "missing": True})
        if companions:  # only then: other formats' caches keep their description
            out["companions"] = companions
        return out

    @property
    def name(self) -> str:
        h = hashlib.sha1(
            f"{self.path}|{self.fmt}|{self.stride}|{self.offset}".encode()
        ).hexdigest()[:10]
        base = os.path.basename(self.path).replace(".", "_")
        return f"{base}-{h}"


def plan_units(
    files: list[str], fmt: str, num_shards: int = 1, shard_index: int = 0,
    source_root: str | None = None,
) -> list[WorkUnit]:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputSpecError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    root = source_root if fmt == "cvss" else None
    if num_shards == 1:
        return [WorkUnit(p, fmt, source_root=root) for p in files]
    if len(files) >= num_shards:
        return [WorkUnit(p, fmt, source_root=root) for p in files[shard_index::num_shards]]
    return [WorkUnit(p, fmt, num_shards, shard_index, root) for p in files]
