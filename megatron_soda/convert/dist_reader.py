"""Read the global tensors of a ``dist_checkpointing`` (``torch_dist``) checkpoint in one
process: no process group, no GPU, no megatron, whatever TP/PP/DP layout wrote it.

Format (megatron-core 0.16 on torch.distributed.checkpoint, DCP):

* ``metadata.json``: ``{"sharded_backend": "torch_dist", ...}``;
* ``.metadata``: DCP's pickled ``Metadata``: for every key the *global* shape and dtype and the
  list of saved chunks (offset + size in the global tensor), and for every chunk the file
  (``__R_I.distcp``), byte offset and length where it was written;
* ``__R_I.distcp``: the chunks, each one ``torch.save``'d tensor.

Megatron saves each per-layer parameter as one global tensor with the layer index prepended
(``decoder.layers.mlp.linear_fc1.weight`` is ``[num_layers, 2*ffn, hidden]``), cut into chunks
per layer and tensor-parallel rank; the tensor-parallel split is already undone in the global
view (``linear_fc1``'s gate/up halves of each rank land in the global ``[gate; up]``).

Safety: ``.metadata`` is read with :class:`megatron_soda.safe_loading.DcpMetadataUnpickler`, which
only builds DCP's metadata classes and torch sizes/dtypes (anything else is refused), and every chunk is read with
``torch.load(weights_only=True)``.  ``common.pt`` and the pickled ``_extra_state``/RNG objects
are never opened.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import dataclass

import torch

from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.safetensors_io import tensor_nbytes
from megatron_soda.safe_loading import load_dcp_metadata
from megatron_soda.versions import UnsupportedVersionError


class _FileWindow(io.RawIOBase):
    """Bytes ``[offset, offset + length)`` of an open file as a seekable file of their own."""

    def __init__(self, f, offset: int, length: int) -> None:
        super().__init__()
        self._f, self._offset, self._length, self._pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._length + pos
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        self._f.seek(self._offset + self._pos)
        got = self._f.readinto(memoryview(buffer).cast("B")[:n])
        self._pos += got
        return got


@dataclass(frozen=True)
class _Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    path: str
    byte_offset: int
    length: int


def _check_tiling(md_path: str, key: str, shape: tuple[int, ...], chunks: list[_Chunk]) -> None:
    """The chunks of ``key`` lie inside its global shape and do not overlap (megatron writes each
    element once; overlapping chunks would make the coverage count of :meth:`read` lie)."""
    boxes = []
    for c in chunks:
        if len(c.offsets) != len(shape) or any(o < 0 or n < 0 or o + n > d for o, n, d in zip(c.offsets, c.sizes, shape)):
            raise ConversionError(f"{md_path}: chunk {c.offsets} x {c.sizes} of {key} lies outside its shape {shape}")
        boxes.append(c)
    boxes.sort(key=lambda c: c.offsets)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if b.offsets[0] >= a.offsets[0] + a.sizes[0]:
                break
            if all(max(x, y) < min(x + n, y + m) for x, n, y, m in zip(a.offsets, a.sizes, b.offsets, b.sizes)):
                raise ConversionError(f"{md_path}: chunks {a.offsets} and {b.offsets} of {key} overlap")


class DistCheckpointReader:
    """Global tensors of one ``iter_N`` directory, read chunk by chunk."""

    def __init__(self, path: str) -> None:
        self.path = path
        meta_json = os.path.join(path, "metadata.json")
        if not os.path.isfile(meta_json):
            raise ConversionError(f"{path}: not a dist_checkpointing checkpoint (no metadata.json)")
        with open(meta_json) as f:
            backend = json.load(f).get("sharded_backend")
        if backend != "torch_dist":
            raise ConversionError(
                f"{meta_json}: sharded backend {backend!r}; only 'torch_dist' is supported"
            )
        md_path = os.path.join(path, ".metadata")
        try:
            with open(md_path, "rb") as f:
                md = load_dcp_metadata(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, UnsupportedVersionError) as e:
            raise ConversionError(f"{md_path}: unreadable checkpoint metadata ({e})") from e
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._chunks: dict[str, list[_Chunk]] = {}
        storage = {
            (idx.fqn, tuple(idx.offset or ())): info for idx, info in md.storage_data.items()
        }
        for index, info in storage.items():  # DCP writes flat file names (__R_I.distcp)
            rel = str(info.relative_path)
            if os.path.isabs(rel) or os.sep in rel or rel in ("", ".", ".."):
                raise ConversionError(f"{md_path}: chunk file {rel!r} of {index[0]} is not a file of the checkpoint")
        for key, tmd in md.state_dict_metadata.items():
            if not hasattr(tmd, "chunks"):  # BytesStorageMetadata: pickled objects, never read here
                continue
            chunks = []
            for c in tmd.chunks:
                info = storage.get((key, tuple(c.offsets)))
                if info is None:
                    raise ConversionError(
                        f"{md_path}: no storage for chunk {tuple(c.offsets)} of {key}"
                    )
                if getattr(info, "transform_descriptors", None):
                    raise ConversionError(
                        f"{md_path}: {key} is stored with transforms "
                        f"{info.transform_descriptors} (compressed?), not supported"
                    )
                chunks.append(
                    _Chunk(
                        tuple(c.offsets),
                        tuple(c.sizes),
                        info.relative_path,
                        info.offset,
                        info.length,
                    )
                )
            self._shapes[key] = tuple(tmd.size)
            self._dtypes[key] = tmd.properties.dtype
            self._chunks[key] = chunks
            _check_tiling(md_path, key, self._shapes[key], chunks)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def keys(self) -> list[str]:
        return sorted(self._shapes)

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[key]

    def nbytes(self, key: str) -> int:
        return tensor_nbytes(self._shapes[key], self._dtypes[key])

    def read(self, key: str, index: int | None = None) -> torch.Tensor:
        """The global tensor ``key``, or its slice ``[index]`` along the first (layer) axis."""
        if key not in self._shapes:
            raise ConversionError(f"{self.path}: checkpoint has no tensor {key}")
        shape = self._shapes[key]
        if index is None:
            start, size = (0,) * len(shape), shape
        else:
            if not 0 <= index < shape[0]:
                raise ConversionError(
                    f"{self.path}: {key} has {shape[0]} layers, layer {index} requested"
                )
            start, size = (index,) + (0,) * (len(shape) - 1), (1,) + shape[1:]
        exact = [c for c in self._chunks[key] if c.offsets == start and c.sizes == size]
        if exact:  # one saved chunk is the request (e.g. a layer saved without tensor parallelism)
            data = self._load_chunk(key, exact[0])
            return data[0] if index is not None else data
        out = torch.empty(size, dtype=self._dtypes[key])
        covered = 0
        for c in self._chunks[key]:
            lo = [max(a, b) for a, b in zip(start, c.offsets)]
            hi = [min(a + n, b + m) for a, n, b, m in zip(start, size, c.offsets, c.sizes)]
            if any(h <= lo_ for lo_, h in zip(lo, hi)):
                continue
            data = self._load_chunk(key, c)
            src = data[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, c.offsets))]
            out[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, start))] = src
            covered += src.numel()
        if covered != out.numel():
            raise ConversionError(
                f"{self.path}: the saved chunks of {key} cover {covered} of {out.numel()} "
                "elements (incomplete checkpoint)"
            )
        return out[0] if index is not None else out

    def _load_chunk(self, key: str, c: _Chunk) -> torch.Tensor:
        ident = (key, c.offsets)
        if self._cache is not None and self._cache[0] == ident:
            return self._cache[1]
        path = os.path.join(self.path, c.path)
        self._cache = None
        try:
            if os.path.getsize(path) < c.byte_offset + c.length:
                raise ConversionError(f"{path}: truncated ({key} chunk at byte {c.byte_offset})")
            with open(path, "rb") as f:  # read in place: no intermediate copy of the bytes
                data = torch.load(
                    _FileWindow(f, c.byte_offset, c.length), map_location="cpu", weights_only=True
                )
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            raise ConversionError(f"{path}: cannot read {key} chunk {c.offsets} ({e})") from e
        if not isinstance(data, torch.Tensor):
            raise ConversionError(f"{path}: {key} chunk {c.offsets} holds a {type(data).__name__}, not a tensor")
        if data.dtype != self._dtypes[key]:
            raise ConversionError(
                f"{path}: {key} chunk is {data.dtype}, metadata says {self._dtypes[key]}")
        if tuple(data.shape) != c.sizes:
            raise ConversionError(
                f"{path}: {key} chunk has shape {tuple(data.shape)}, metadata says {c.sizes}"
            )
        # a chunk bigger than the request (e.g. all layers in one chunk) is kept for the next read
        self._cache = (ident, data)
        return data
