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

from megatron_soda.data.readers import input_format
from megatron_soda.data.records import InputError

T = TypeVar("T")

class InputSpecError(ValueError):
    """An --input that names nothing usable."""


def expand_inputs(inputs: list[str], fmt: str) -> list[str]:
    """Files, directories (their matching files, sorted) and globs -> absolute file paths."""
    extensions = input_format(fmt).extensions
    out: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(root, f)
                for root, _, files in os.walk(spec)
                for f in files
                if f.endswith(extensions)
            )
            if not found:
                raise InputSpecError(
                    f"{spec}: directory holds no {'/'.join(extensions)} files for --input-format {fmt}"
                )
        elif os.path.isfile(spec):
            found = [spec]
        else:
            found = sorted(glob.glob(spec))
            if not found:
                raise InputSpecError(f"{spec}: no such file, directory or glob match")
        out.extend(os.path.abspath(p) for p in found)
    return list(dict.fromkeys(out))  # first occurrence of each, in order


@dataclass(frozen=True)
class WorkUnit:
    path: str
    fmt: str
    stride: int = 1  # take recordings whose position p satisfies p % stride == offset
    offset: int = 0

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
        return {
            "input": self.path,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "format": self.fmt,
            "stride": self.stride,
            "offset": self.offset,
        }

    @property
    def name(self) -> str:
        h = hashlib.sha1(
            f"{self.path}|{self.fmt}|{self.stride}|{self.offset}".encode()
        ).hexdigest()[:10]
        base = os.path.basename(self.path).replace(".", "_")
        return f"{base}-{h}"


def plan_units(
    files: list[str], fmt: str, num_shards: int = 1, shard_index: int = 0
) -> list[WorkUnit]:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputSpecError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    if num_shards == 1:
        return [WorkUnit(p, fmt) for p in files]
    if len(files) >= num_shards:
        return [WorkUnit(p, fmt) for p in files[shard_index::num_shards]]
    return [WorkUnit(p, fmt, num_shards, shard_index) for p in files]
