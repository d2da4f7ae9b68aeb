"""The versions of torch, megatron-core and transformers megatron_soda supports: stated here once,
read by ``setup.py`` (its install requirements) and checked at run time by the code that depends
on their internals (:func:`require`), so that an upgrade outside the range fails with a message
naming the range instead of breaking obscurely.  The exact versions CI tests are in
``constraints/ci.txt``; docs/install.md says why each bound is what it is.

This module imports nothing from megatron_soda (``setup.py`` executes it on its own).
"""

from __future__ import annotations

import functools
from importlib import metadata

SUPPORTED = {
    # megatron-core 0.16's own floor (its Requires-Dist: torch>=2.6.0).  No upper bound: none is
    # known to break.  NGC's builds (2.10.0a0+b4e4ee81d3 in 25.12) are pre-releases: pip keeps an
    # installed pre-release that satisfies >=2.6 (checked with pip 23.2 and 26.3, docs/install.md).
    # The CPU layer (compat/cpu.py) and the DCP metadata reader (safe_loading.py) rely on torch
    # internals of this range.
    "torch": ">=2.6",
    # compat/cpu.py, checkpointing/state.py and training/optimizer.py patch or work around 0.16's
    # internals (distributed-optimizer reload, CPU shims): a new minor release needs checking first.
    "megatron-core": ">=0.16,<0.17",
    # 5.0: Qwen3Config(rope_parameters=...) (testing/qwen3_text.py, convert/hf_rope.py); MimiModel
    # (4.45) and Qwen3 (4.51) are older.  audio/codec.py reads Mimi's codebook internals: <6.
    "transformers": ">=5.0,<6",
}


class UnsupportedVersionError(RuntimeError):
    """An installed package is outside the range megatron_soda supports."""


def requirement(package: str) -> str:
    """``package`` with its supported range, as pip spells it (``"torch>=2.6"``)."""
    return package + SUPPORTED[package]


def require(package: str, user: str) -> None:
    """Raise :class:`UnsupportedVersionError` if the installed ``package`` is outside its
    supported range; ``user`` names what depends on it (for the message)."""
    problem = _problem(package)
    if problem:
        raise UnsupportedVersionError(f"{user} {problem}")


@functools.cache
def _problem(package: str) -> str | None:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    try:
        found = metadata.version(package)
    except metadata.PackageNotFoundError:
        return f"needs {requirement(package)}, which is not installed"
    # as pip decides (docs/install.md): local labels (+cpu, +cu130) do not count, and an NGC
    # pre-release is in range when it is past the bound (2.10.0a0 >= 2.6; 2.6.0a0 is not)
    if not SpecifierSet(SUPPORTED[package], prereleases=True).contains(Version(Version(found).public)):
        return (f"was written for {requirement(package)}; found {package} {found}. Install a supported "
                "version (constraints/ci.txt lists the ones CI tests; docs/install.md)")
    return None
