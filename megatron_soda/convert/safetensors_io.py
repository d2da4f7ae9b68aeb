"""Safetensors, written as a stream and read lazily.

Writing: every tensor name, shape and dtype is known before any weight is read, so each shard's
header is written first and tensors are appended one at a time as they are produced; memory
holds one tensor, never a shard.  The file format (8-byte little-endian header length, JSON
header with ``data_offsets``, raw little-endian data) is the one ``safetensors`` reads.
Reading parses the same format, validates the header as completely as the ``safetensors``
library does (:func:`parse_header`), and reads each tensor into its own memory (no memory map,
no pickle).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import torch

from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_files import hf_file

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
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
# weights in a pickle-based format: never loaded (unpickling runs code), named in the refusal
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the key {dup!r} appears twice")
    return dict(pairs)


def _nonneg_ints(value: object, count: int | None = None) -> tuple[int, ...] | None:
    """``value`` as a tuple of non-negative ints (of length ``count``), or None."""
    if not isinstance(value, list) or (count is not None and len(value) != count):
        return None
    if not all(type(x) is int and x >= 0 for x in value):
        return None
    return tuple(value)


def parse_header(
    path: str, header: object, data_bytes: int
) -> dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]:
    """The entries ``name -> (dtype, shape, begin, end)`` of a safetensors header, refused unless
    every entry is well formed and the entries tile the ``data_bytes`` of the data section
    exactly (no negative, overlapping or out-of-bounds offsets, no gap, nothing left over): a
    lying header must never turn into weights read from the wrong bytes."""
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: the safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ConversionError(f"{path}: __metadata__ is not a map of strings to strings")
    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict):
            raise ConversionError(f"{path}: header entry {name!r} is not an object")
        dtype = _READ_DTYPES.get(e.get("dtype")) if isinstance(e.get("dtype"), str) else None
        if dtype is None:
            raise ConversionError(
                f"{path}: {name} has dtype {e.get('dtype')!r}, not one of {', '.join(_READ_DTYPES)}"
            )
        shape = _nonneg_ints(e.get("shape"))
        if shape is None:
            raise ConversionError(
                f"{path}: {name} has shape {e.get('shape')!r}, not a list of non-negative integers"
            )
        offsets = _nonneg_ints(e.get("data_offsets"), 2)
        if offsets is None or offsets[0] > offsets[1]:
            raise ConversionError(
                f"{path}: {name} has data_offsets {e.get('data_offsets')!r}, not two non-negative "
                "integers [begin, end] with begin <= end"
            )
        begin, end = offsets
        if end - begin != tensor_nbytes(shape, dtype):
            raise ConversionError(
                f"{path}: {name} ({e['dtype']} {list(shape)}: {tensor_nbytes(shape, dtype)} bytes) "
                f"has data_offsets {begin}..{end} ({end - begin} bytes)"
            )
        entries[name] = (dtype, shape, begin, end)
    position, previous = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if begin < position:
            raise ConversionError(f"{path}: {name} (bytes {begin}..{end}) overlaps {previous}")
        if begin > position:
            raise ConversionError(
                f"{path}: bytes {position}..{begin} of the data section belong to no tensor"
            )
        position, previous = end, name
    if position != data_bytes:
        raise ConversionError(
            f"{path}: the tensors take {position} bytes, the data section has {data_bytes}"
            + (" (truncated file?)" if position > data_bytes else "")
        )
    return entries


class _File:
    """One safetensors file: its header (validated: :func:`parse_header`), and tensors read
    straight into their own memory (no memory map, so reading a tensor costs exactly its size
    and nothing stays resident)."""

    def __init__(self, path: str, real: str | None = None) -> None:
        self.path, self.real = path, real or path  # named in messages, opened
        try:
            with open(self.real, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise ValueError(f"{size} bytes: shorter than the 8-byte header length")
                n = struct.unpack("<Q", f.read(8))[0]
                if not 2 <= n <= min(size - 8, MAX_HEADER_BYTES):
                    raise ValueError(f"header length {n} does not fit the file's {size} bytes")
                text = f.read(n).decode("utf-8")
                header = json.loads(text, object_pairs_hook=_no_duplicates)
        except (OSError, ValueError, struct.error) as e:
            # (UnicodeDecodeError and json.JSONDecodeError are ValueErrors)
            raise ConversionError(f"{path}: not a safetensors file ({e})") from None
        self.data_start = 8 + n
        self.entries = parse_header(path, header, size - self.data_start)

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
        with open(self.real, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(memoryview(raw.numpy())) != raw.numel():
                raise ConversionError(f"{self.path}: truncated at {name}")
        return out


class SafetensorsReader:
    """Tensors of an HF directory (``model.safetensors`` or a sharded index).  Every file is
    resolved through :func:`~megatron_soda.convert.hf_files.hf_file` and every header validated
    up front, so a lying file is refused before any weight is read."""

    def __init__(self, hf_dir: str) -> None:
        self.hf_dir = hf_dir
        self._files: dict[str, _File] = {}
        index = hf_file(hf_dir, INDEX_FILE)
        if index is not None:
            self.weight_map = _read_index(os.path.join(hf_dir, INDEX_FILE), index)
            for file in sorted(set(self.weight_map.values())):
                self._file(file)
        elif hf_file(hf_dir, SINGLE_FILE) is not None:
            self.weight_map = {name: SINGLE_FILE for name in self._file(SINGLE_FILE).entries}
        else:
            pickled = sorted(n for n in os.listdir(hf_dir) if n.endswith(PICKLED_SUFFIXES))
            hint = (
                f" (found {pickled[0]}: pickled weights are not loaded: unpickling can run code; "
                "convert them to safetensors with a tool you trust)"
                if pickled
                else ""
            )
            raise ConversionError(f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def _file(self, file: str) -> _File:
        if file not in self._files:
            path = os.path.join(self.hf_dir, file)
            named_in = None if file == SINGLE_FILE else INDEX_FILE
            real = hf_file(self.hf_dir, file, named_in=named_in)
            if real is None:
                raise ConversionError(f"{path}: missing (named in {INDEX_FILE})")
            self._files[file] = _File(path, real)
        return self._files[file]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> Iterator[str]:
        return iter(self.weight_map)

    def file_of(self, name: str) -> str:
        """The file (name within the directory) holding tensor ``name``, for messages."""
        return self.weight_map[name]

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


def _read_index(path: str, real: str) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index: tensor name -> file name."""
    try:
        with open(real, encoding="utf-8") as f:
            index = json.load(f, object_pairs_hook=_no_duplicates)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a valid index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) for v in weight_map.values()
    ):
        raise ConversionError(f"{path}: no weight_map object of tensor name -> file name")
    return weight_map
