"""Safetensors, written as a stream and read lazily.

Writing: every tensor name, shape and dtype is known before any weight is read, so each shard's
header is written first and tensors are appended one at a time as they are produced; memory
holds one tensor, never a shard.  The file format (8-byte little-endian header length, JSON
header with ``data_offsets``, raw little-endian data) is the one ``safetensors`` reads.
Reading parses the same format and reads each tensor into its own memory (no memory map,
no pickle).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import torch

from megatron_soda.convert.errors import ConversionError

_READ_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in _READ_DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def tensor_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype``."""
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


class SafetensorsWriter:
    """Writes ``specs`` = [(name, shape, dtype), ...] in that order into ``out_dir``, cut into
    shards of at most ``max_shard_bytes`` (a tensor larger than that gets a shard of its own)."""

    def __init__(
        self,
        out_dir: str,
        specs: list[tuple[str, tuple[int, ...], torch.dtype]],
        max_shard_bytes: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.specs = specs
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[int]] = [[]]
        size = 0
        for i, (_, shape, dtype) in enumerate(specs):
            n = tensor_nbytes(shape, dtype)
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(i)
            size += n
        self.shards = shards
        count = len(shards)
        self.files = (
            [SINGLE_FILE]
            if count == 1
            else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
        )
        self._next = 0
        self._shard = -1
        self._f = None
        self.total_bytes = sum(tensor_nbytes(s, d) for _, s, d in specs)

    def _open_shard(self, k: int) -> None:
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for i in self.shards[k]:
            name, shape, dtype = self.specs[i]
            n = tensor_nbytes(shape, dtype)
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (
            -(8 + len(blob)) % 8
        )  # data starts 8-byte aligned, like safetensors' writer
        self._f = open(os.path.join(self.out_dir, self.files[k]), "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)
        self._shard = k

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.specs):
            raise RuntimeError(
                f"unexpected tensor {name}: all {len(self.specs)} tensors already written"
            )
        want, shape, dtype = self.specs[self._next]
        if name != want or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"expected {want} {tuple(shape)}, got {name} {tuple(tensor.shape)}")
        shard = next(k for k, ids in enumerate(self.shards) if self._next in ids)
        if shard != self._shard:
            if self._f is not None:
                self._f.close()
            self._open_shard(shard)
        data = tensor.detach().to(dtype).contiguous().reshape(-1).view(torch.uint8)
        self._f.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._next != len(self.specs):
            raise RuntimeError(f"only {self._next} of {len(self.specs)} tensors were written")
        if len(self.files) > 1:
            weight_map = {
                self.specs[i][0]: self.files[k] for k, ids in enumerate(self.shards) for i in ids
            }
            with open(os.path.join(self.out_dir, INDEX_FILE), "w") as f:
                json.dump(
                    {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                    f,
                    indent=2,
                )


class _File:
    """One safetensors file: its header, and tensors read straight into their own memory (no
    memory map, so reading a tensor costs exactly its size and nothing stays resident)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if n > min(size - 8, 1 << 30):
                    raise ValueError(f"header length {n} exceeds the file")
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise ConversionError(f"{path}: not a safetensors file ({e})") from None
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype = _READ_DTYPES[e["dtype"]]
                begin, end = (int(x) for x in e["data_offsets"])
                shape = tuple(int(x) for x in e["shape"])
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{path}: bad header entry for {name}") from None
            if end - begin != tensor_nbytes(shape, dtype) or self.data_start + end > size:
                raise ConversionError(f"{path}: {name} has inconsistent offsets {begin}..{end}")
            self.entries[name] = (dtype, shape, begin, end)

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name``; with ``out`` (a contiguous tensor of the same dtype), its leading
        ``len(out)`` rows are read straight into ``out``."""
        dtype, shape, begin, end = self.entries[name]
        if out is None:
            out = torch.empty(shape, dtype=dtype)
        elif (
            out.dtype != dtype
            or not out.is_contiguous()
            or tuple(out.shape[1:]) != shape[1:]
            or len(out) > shape[0]
        ):
            raise ConversionError(
                f"{self.path}: cannot read {name} {shape} {dtype} into {tuple(out.shape)} {out.dtype}"
            )
        raw = out.view(-1).view(torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(memoryview(raw.numpy())) != raw.numel():
                raise ConversionError(f"{self.path}: truncated at {name}")
        return out


class SafetensorsReader:
    """Tensors of an HF directory (``model.safetensors`` or a sharded index)."""

    def __init__(self, hf_dir: str) -> None:
        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, INDEX_FILE)
        single = os.path.join(hf_dir, SINGLE_FILE)
        self._files: dict[str, _File] = {}
        if os.path.isfile(index):
            with open(index) as f:
                self.weight_map: dict[str, str] = json.load(f)["weight_map"]
        elif os.path.isfile(single):
            self.weight_map = {name: SINGLE_FILE for name in self._file(SINGLE_FILE).entries}
        else:
            pickled = [
                n
                for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")
                if os.path.isfile(os.path.join(hf_dir, n))
            ]
            hint = (
                (
                    f" (found {pickled[0]}: pickled weights are not loaded; convert them to safetensors "
                    "with a tool you trust)"
                )
                if pickled
                else ""
            )
            raise ConversionError(f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def _file(self, file: str) -> _File:
        if file not in self._files:
            path = os.path.join(self.hf_dir, file)
            if not os.path.isfile(path):
                raise ConversionError(f"{path}: missing (named in {INDEX_FILE})")
            self._files[file] = _File(path)
        return self._files[file]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> Iterator[str]:
        return iter(self.weight_map)

    def _entry(self, name: str) -> _File:
        f = self._file(self.weight_map[name])
        if name not in f.entries:
            raise ConversionError(f"{f.path}: has no tensor {name} (named in {INDEX_FILE})")
        return f

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).entries[name][0]

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name`` (or its leading rows, read into ``out``)."""
        if name not in self.weight_map:
            raise ConversionError(f"{self.hf_dir}: weights have no tensor {name}")
        return self._entry(name).read(name, out)
