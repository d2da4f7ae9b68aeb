"""The supported version ranges (megatron_soda/versions.py) are what setup.py declares and what the
code that depends on torch/megatron-core internals checks before it runs."""

from __future__ import annotations

import io
import runpy
from importlib import metadata

import pytest

from megatron_soda import compat, versions
from megatron_soda.safe_loading import load_dcp_metadata


@pytest.fixture
def installed(monkeypatch):
    """Pretend the given packages are installed at the given versions."""
    fake: dict[str, str] = {}
    real = metadata.version
    monkeypatch.setattr(versions.metadata, "version", lambda name: fake.get(name) or real(name))
    versions._problem.cache_clear()
    yield fake
    versions._problem.cache_clear()


def test_setup_declares_the_ranges_stated_in_versions():
    import setuptools

    captured = {}
    orig = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(versions.__file__).replace("megatron_soda/versions.py", "setup.py"))
    finally:
        setuptools.setup = orig
    for name, spec in versions.SUPPORTED.items():
        assert name + spec in captured["install_requires"]


@pytest.mark.parametrize("found", ["2.13.0+cpu", "2.10.0a0+b4e4ee81d3", "2.6.0"])
def test_torch_builds_in_range_are_accepted(installed, found):
    installed["torch"] = found
    versions.require("torch", "x")


def test_a_pre_release_of_the_floor_is_refused_as_pip_refuses_it(installed):
    installed["torch"] = "2.6.0a0+ecf3bae40a.nv25.01"  # NGC 25.01 (docs/install.md)
    with pytest.raises(versions.UnsupportedVersionError, match="found torch 2.6.0a0"):
        versions.require("torch", "x")


def test_cpu_layer_refuses_a_megatron_core_outside_its_range(installed):
    installed["megatron-core"] = "0.17.0"
    with pytest.raises(compat.CpuCompatError, match=r"CPU compatibility layer .*megatron-core>=0.16,<0.17; found "
                                                    r"megatron-core 0.17.0"):
        compat.enable()
    assert not compat.is_enabled()


def test_dcp_metadata_reader_refuses_an_old_torch(installed):
    installed["torch"] = "2.5.1"
    with pytest.raises(versions.UnsupportedVersionError, match=r"metadata reader .*torch>=2.6; found torch 2.5.1"):
        load_dcp_metadata(io.BytesIO(b""))
