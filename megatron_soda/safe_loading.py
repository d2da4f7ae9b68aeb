"""Nothing read from a checkpoint, cache or dataset file runs code.

Pickle executes whatever a file tells it to; the files a run reads (checkpoints someone shared,
caches on a shared file system) are untrusted.  Three readers under megatron-core would use the
stock unpickler on them:

* torch DCP's ``FileSystemReader.read_metadata`` calls ``pickle.load`` on ``.metadata``;
* DCP's ``DefaultLoadPlanner.load_bytes`` (megatron's ``ShardedObject`` s, e.g. RNG state) calls
  ``torch.load(weights_only=False)``; megatron's ``common.pt`` reader calls ``torch.load``;
* megatron's dataset index caches (``*_indices/*.npy``) are opened with
  ``numpy.load(allow_pickle=True)`` (in megatron-core 0.16 always with ``mmap_mode="r"``, which
  refuses object arrays by itself; the guard does not rely on that).

:func:`restricted_loading` closes all three for the block it guards: ``.metadata`` goes through
:class:`DcpMetadataUnpickler` (DCP's metadata classes, torch sizes and dtypes, nothing else),
every ``torch.load`` is ``weights_only=True`` (tensors and plain containers) whatever its caller
asked for, and ``numpy.load`` never unpickles.  The trainer runs inside it from start to end
(``training/main.py``); the converter reads ``.metadata`` with the same unpickler.  What protects
each load path is listed in ``docs/security.md``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import torch

from megatron_soda.versions import require

_DCP_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.planner",
    "torch.distributed.checkpoint.filesystem",
)
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
}


class UnsafeContentError(pickle.UnpicklingError):
    """A file asked to be unpickled into something other than data."""


def _name(f: Any) -> str:
    return os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", "an in-memory object"))


class DcpMetadataUnpickler(pickle.Unpickler):
    """Builds torch DCP ``Metadata`` (dataclasses of sizes, dtypes, offsets and file names) and
    refuses every other global, so a crafted ``.metadata`` cannot call anything."""

    def find_class(self, module: str, name: str) -> Any:
        if "." in name:  # protocol 4 resolves dotted names: "filesystem", "os.system" -> os.system
            raise UnsafeContentError(f"refusing to load {module}.{name} from checkpoint metadata")
        if module in _DCP_MODULES:  # only the classes those modules define (_StorageInfo included)
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:
                return found
        elif (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeContentError(f"refusing to load {module}.{name} from checkpoint metadata")


def load_dcp_metadata(f: BinaryIO) -> Any:
    """torch DCP's ``Metadata`` from an open ``.metadata`` file, through :class:`DcpMetadataUnpickler`
    (whose list of DCP classes is torch's of the supported range: checked first)."""
    require("torch", "the checkpoint metadata reader")
    return DcpMetadataUnpickler(f).load()


class _RestrictedPickle:
    """The ``pickle`` module as DCP's filesystem module sees it inside :func:`restricted_loading`:
    everything as usual (``dump`` writes metadata) except ``load``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    @staticmethod
    def load(f: BinaryIO, **_kwargs: Any) -> Any:
        try:
            return load_dcp_metadata(f)
        except pickle.UnpicklingError as e:
            raise UnsafeContentError(f"{_name(f)}: {e}; checkpoint files are never unpickled into code") from e


_lock = threading.RLock()
_depth = 0
_saved: dict[str, Any] = {}


def _weights_only_load(original):
    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)  # weights_only refuses a custom module; none is needed
        try:
            return original(*args, **kwargs)
        except pickle.UnpicklingError as e:  # torch's text advises weights_only=False: not here
            what = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
            where = _name(args[0] if args else kwargs.get("f"))
            raise UnsafeContentError(f"{where}: holds more than tensors and plain data ({what}); "
                                     "refused: files read by a run are never unpickled into code") from e
    return load


def _no_pickle_numpy_load(original):
    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["allow_pickle"] = False
        try:
            return original(*args, **kwargs)
        except ValueError as e:
            if "allow_pickle" not in str(e) and "Python objects" not in str(e):  # (with mmap_mode)
                raise
            where = _name(args[0] if args else kwargs.get("file"))
            raise UnsafeContentError(f"{where}: an array of Python objects (pickled); refused: caches are "
                                     "never unpickled (delete the file and it is rebuilt)") from e
    return load


@contextlib.contextmanager
def restricted_loading() -> Iterator[None]:
    """Within the block, no file is unpickled by the stock unpickler (see the module docstring).
    Re-entrant; process-wide while held (threads included), restored on exit."""
    global _depth
    from torch.distributed.checkpoint import filesystem as dcp_filesystem

    with _lock:
        if _depth == 0:
            _saved.update(torch_load=torch.load, numpy_load=np.load, dcp_pickle=dcp_filesystem.pickle,
                          no_weights_only_env=os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None))
            torch.load = _weights_only_load(_saved["torch_load"])
            np.load = _no_pickle_numpy_load(_saved["numpy_load"])
            dcp_filesystem.pickle = _RestrictedPickle()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.load, np.load = _saved["torch_load"], _saved["numpy_load"]
                dcp_filesystem.pickle = _saved["dcp_pickle"]
                if _saved["no_weights_only_env"] is not None:
                    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = _saved["no_weights_only_env"]
                _saved.clear()
