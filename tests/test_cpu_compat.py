"""The opt-in CPU compatibility layer (megatron_soda.compat)."""

from __future__ import annotations

import pytest
import torch

from megatron_soda import compat
from megatron_soda.compat import CpuCompatError, CpuRNGStatesTracker, cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer refuses to run where CUDA exists")


@pytest.fixture(autouse=True)
def _always_disabled_after():
    yield
    compat.disable()
    assert not compat.is_enabled()


def test_cuda_devices_map_to_cpu_inside_and_fail_again_outside():
    with cpu_compat():
        for device in ("cuda", "cuda:0", 0, torch.device("cuda", 0), torch.cuda.current_device()):
            assert torch.zeros(2, device=device).device.type == "cpu"
        x = torch.ones(3)
        assert x.cuda() is x
        assert x.to("cuda").device.type == "cpu"
        assert x.to("cuda", torch.float64).dtype == torch.float64
        assert x.to(torch.float16).dtype == torch.float16  # non-device positional args untouched
        assert torch.empty(2, pin_memory=True).device.type == "cpu"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")


def test_type_reports_and_accepts_cuda_names():
    with cpu_compat():
        assert torch.ones(2).type() == "torch.cuda.FloatTensor"
        assert torch.ones(2, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        converted = torch.ones(2).type("torch.cuda.HalfTensor")
        assert converted.dtype == torch.float16 and converted.device.type == "cpu"
    assert torch.ones(2).type() == "torch.FloatTensor"


def test_cuda_stubs_are_installed_and_restored():
    originals = (torch.cuda.current_device, torch.cuda.synchronize, torch.cuda.empty_cache)
    with cpu_compat():
        assert torch.cuda.current_device() == 0
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        with torch.cuda.stream(torch.cuda.Stream()):
            torch.cuda.current_stream().wait_stream(torch.cuda.Stream())
    assert (torch.cuda.current_device, torch.cuda.synchronize, torch.cuda.empty_cache) == originals


def test_backward_runs_under_the_layer():
    """megatron's custom Functions allocate with device=torch.cuda.current_device() in backward."""

    class AllocatesOnCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * torch.full_like(grad, 2.0).to(torch.empty(1, device=torch.cuda.current_device()).device)

    x = torch.ones(3, requires_grad=True)
    with cpu_compat():
        AllocatesOnCuda.apply(x).sum().backward()
        y = torch.ones(3, requires_grad=True)
        (g,) = torch.autograd.grad(AllocatesOnCuda.apply(y).sum(), y)
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    assert torch.equal(g, torch.full((3,), 2.0))


def test_refuses_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CpuCompatError, match="CUDA is available"):
        compat.enable()
    assert not compat.is_enabled()


def test_enable_is_idempotent_and_context_keeps_outer_activation():
    assert compat.enable() is True
    assert compat.enable() is False
    with cpu_compat():
        pass
    assert compat.is_enabled()  # the inner block did not switch off what it did not switch on
    compat.disable()
    assert not compat.is_enabled()


def test_rng_tracker_forks_a_separate_stream():
    tracker = CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)  # the default stream is untouched
    with tracker.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b)  # the forked stream advanced
    g = torch.Generator().manual_seed(123)
    assert torch.equal(a, torch.rand(4, generator=g))
    assert torch.equal(b, torch.rand(4, generator=g))
    with pytest.raises(Exception, match="already exists"):
        tracker.add("other", 123)
    states = tracker.get_states()
    fresh = CpuRNGStatesTracker()
    fresh.set_states(states)
    with fresh.fork():
        c = torch.rand(4)
    assert torch.equal(c, torch.rand(4, generator=g))


def test_megatron_seeding_and_checkpointed_recompute_work_on_cpu():
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel import random as mrandom

    with cpu_compat():
        tensor_parallel.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0)
        tracker = tensor_parallel.get_cuda_rng_tracker()
        assert isinstance(tracker, CpuRNGStatesTracker)
        with tracker.fork():
            torch.rand(1)

        # megatron's activation checkpointing saves/restores "cuda" RNG state around recompute
        def dropout_layer(x):
            with tracker.fork():
                return torch.nn.functional.dropout(x, 0.5, training=True)

        x = torch.ones(64, requires_grad=True)
        y = tensor_parallel.checkpoint(dropout_layer, False, x)
        y.sum().backward()
        assert torch.equal(x.grad != 0, y.detach() != 0)  # recompute replayed the same mask
    assert mrandom._CUDA_RNG_STATE_TRACKER is None or not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker)
