"""Opt-in compatibility layer that runs megatron-core on CPU (gloo), for tests and debugging.

megatron-core hard-codes CUDA in many places (``device="cuda"``, ``torch.cuda.current_device()``,
``Tensor.cuda()``, ``param.grad.type() == "torch.cuda.FloatTensor"``, the CUDA RNG tracker,
``torch.cuda.synchronize()`` in checkpointing).  This layer makes those calls land on the CPU:

* a :class:`~torch.overrides.TorchFunctionMode` that maps ``cuda``/``cuda:N``/integer devices to
  ``cpu``, makes ``Tensor.cuda()`` return the tensor itself, makes ``Tensor.type()`` report
  ``torch.cuda.*`` names (and accept them), and turns ``pin_memory`` off;
* stubs for ``torch.cuda.current_device/set_device/synchronize/empty_cache`` and a few
  stream/event helpers, plus ``torch.cuda.manual_seed/get_rng_state/set_rng_state`` mapped to
  the CPU default generator;
* :class:`CpuRNGStatesTracker`, a stand-in for megatron's ``CudaRNGStatesTracker`` (same
  interface; forks the CPU generator), installed through megatron's own
  ``initialize_rng_tracker`` hook so that ``model_parallel_cuda_manual_seed``, dropout forks and
  activation recomputation work.

It is activated only by ``--device cpu`` (see :func:`enable`) and refuses to activate when CUDA
is available, so it can never be active in a GPU run.  Everything is reversible: :func:`disable`
(or leaving :func:`cpu_compat`) restores every patched attribute and pops the function mode.

Scope: the function mode is thread-local (it applies to the thread that called :func:`enable`
and to autograd's backward, which inherits it); the attribute stubs are process-wide.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from megatron_soda.versions import UnsupportedVersionError, require

__all__ = [
    "CpuCompatError",
    "CpuRNGStatesTracker",
    "cpu_compat",
    "disable",
    "enable",
    "is_enabled",
]


class CpuCompatError(RuntimeError):
    """The CPU compatibility layer cannot be used here."""


_CPU = torch.device("cpu")


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True  # an integer device index means a CUDA device in torch
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _map_device(device: Any) -> Any:
    return _CPU if _is_cuda_device(device) else device


def _cuda_type_name(cpu_name: str) -> str:
    # "torch.FloatTensor" -> "torch.cuda.FloatTensor"
    return cpu_name if ".cuda." in cpu_name else cpu_name.replace("torch.", "torch.cuda.", 1)


_IDENTITY_METHODS = {torch.Tensor.cuda, torch.Tensor.pin_memory}
_DEVICE_POSITIONAL = {torch.Tensor.to, torch.Tensor.new_empty}


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch call made under it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs) if kwargs else {}
        if func in _IDENTITY_METHODS:
            return args[0]
        if func is torch.Tensor.type:
            if len(args) == 1 and not kwargs:
                return _cuda_type_name(func(*args))
            args = tuple(a.replace("torch.cuda.", "torch.") if isinstance(a, str) else a for a in args)
            if isinstance(kwargs.get("dtype"), str):
                kwargs["dtype"] = kwargs["dtype"].replace("torch.cuda.", "torch.")
            return func(*args, **kwargs)
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func in _DEVICE_POSITIONAL and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """CPU stand-in for megatron's ``CudaRNGStatesTracker`` (same public interface).

    Named states are snapshots of the CPU default generator; :meth:`fork` swaps one in for the
    duration of the block and stores its advanced state on exit, exactly as the CUDA tracker does
    with the CUDA generator.
    """

    def __init__(self, use_cudagraphable_rng: bool = False, is_inference_rng_tracker: bool = False):
        self.use_cudagraphable_rng = False
        self.is_inference_rng_tracker = is_inference_rng_tracker
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        orig = torch.get_rng_state()
        torch.default_generator.manual_seed(int(seed))
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if self.is_inference_rng_tracker:
            yield
            return
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


class _NullStream:
    """Enough of ``torch.cuda.Stream`` for code paths that only order work on a stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _NullEvent:
        return event if event is not None else _NullEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _NullEvent:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


def _noop_stub(name: str) -> Callable[..., None]:
    """A distinct no-op per stubbed name (torch.compile's rule table rejects one function object
    registered under two torch names)."""

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    noop.__name__ = noop.__qualname__ = name
    return noop


def _cpu_manual_seed(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


def _cpu_get_rng_state(device: Any = None) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = None) -> None:
    torch.set_rng_state(new_state)


def _megatron_rng_patches() -> list[tuple[Any, str, Any]]:
    from megatron.core.tensor_parallel import random as mrandom

    def initialize_rng_tracker(
        use_te_rng_tracker: bool = False,
        inference_rng_tracker: bool = False,
        use_cudagraphable_rng: bool = False,
        force_reset: bool = False,
    ) -> None:
        if mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED and not force_reset:
            return
        mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker(
            is_inference_rng_tracker=inference_rng_tracker
        )
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    def get_cuda_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
        return torch.get_rng_state()

    def set_cuda_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False):
        torch.set_rng_state(new_state)

    return [
        (mrandom, "initialize_rng_tracker", initialize_rng_tracker),
        (mrandom, "_get_cuda_rng_state", get_cuda_rng_state),
        (mrandom, "_set_cuda_rng_state", set_cuda_rng_state),
        # A CUDA tracker created before enable() must not survive into the CPU run.
        (mrandom, "_CUDA_RNG_STATE_TRACKER", None),
        (mrandom, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", False),
    ]


def _backward_patch() -> tuple[Any, str, Any]:
    """``Tensor.backward``/``autograd.backward`` reach the engine from inside the mode's own
    handler, where the mode is switched off, so backward code (megatron's custom Functions
    allocate with ``device=torch.cuda.current_device()``) would run without it.  Re-enter the
    mode around the engine call."""
    original = torch.autograd._engine_run_backward

    def engine_run_backward(*args: Any, **kwargs: Any) -> Any:
        with _CudaToCpuMode():
            return original(*args, **kwargs)

    return (torch.autograd, "_engine_run_backward", engine_run_backward)


def _patches() -> list[tuple[Any, str, Any]]:
    cuda = torch.cuda
    stubs: dict[str, Callable[..., Any] | type] = {
        "current_device": lambda: 0,
        "set_device": _noop_stub("set_device"),
        "synchronize": _noop_stub("synchronize"),
        "empty_cache": _noop_stub("empty_cache"),
        "manual_seed": _cpu_manual_seed,
        "get_rng_state": _cpu_get_rng_state,
        "set_rng_state": _cpu_set_rng_state,
        "current_stream": lambda device=None: _NullStream(),
        "default_stream": lambda device=None: _NullStream(),
        "Stream": _NullStream,
        "Event": _NullEvent,
        "stream": lambda s=None: contextlib.nullcontext(),
    }
    return [(cuda, name, fn) for name, fn in stubs.items()] + [_backward_patch()] + _megatron_rng_patches()


class _State:
    def __init__(self) -> None:
        self.mode: _CudaToCpuMode | None = None
        self.saved: list[tuple[Any, str, Any]] = []
        self.thread: int | None = None


_STATE = _State()
_MISSING = object()


def is_enabled() -> bool:
    """Whether the CPU compatibility layer is active in this process."""
    return _STATE.mode is not None


def enable() -> bool:
    """Activate the layer.  Returns False (and does nothing) if it is already active.

    Raises :class:`CpuCompatError` when CUDA is available: the layer would hide real GPU devices
    behind the CPU, so a GPU run must never use it (hide the GPUs with ``CUDA_VISIBLE_DEVICES=``
    to debug on CPU on a GPU machine).
    """
    if is_enabled():
        return False
    for package in ("torch", "megatron-core"):
        try:
            require(package, "the CPU compatibility layer (--device cpu)")
        except UnsupportedVersionError as e:
            raise CpuCompatError(str(e)) from None
    if torch.cuda.is_available():
        raise CpuCompatError(
            "--device cpu: the CPU compatibility layer refuses to run while CUDA is available "
            "(it would redirect CUDA calls to the CPU). Use --device cuda, or hide the GPUs with "
            "CUDA_VISIBLE_DEVICES= to debug on CPU."
        )
    saved = []
    for obj, name, value in _patches():
        saved.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)
    mode = _CudaToCpuMode()
    mode.__enter__()
    _STATE.mode, _STATE.saved, _STATE.thread = mode, saved, threading.get_ident()
    return True


def disable() -> None:
    """Undo :func:`enable`: pop the function mode and restore every patched attribute."""
    if not is_enabled():
        return
    if threading.get_ident() != _STATE.thread:
        raise CpuCompatError("disable() must be called from the thread that called enable()")
    assert _STATE.mode is not None
    _STATE.mode.__exit__(None, None, None)
    for obj, name, old in reversed(_STATE.saved):
        if old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)
    _STATE.mode, _STATE.saved, _STATE.thread = None, [], None


@contextlib.contextmanager
def cpu_compat() -> Iterator[None]:
    """Context manager form: active inside the block, fully undone after it."""
    entered = enable()
    try:
        yield
    finally:
        if entered:
            disable()
