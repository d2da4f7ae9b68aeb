"""Data flows one way through the packages: a module imports only from its own package or from a
layer below it (DEVELOPERS.md has the map).  Adding a package means placing it in LAYERS."""

from __future__ import annotations

import ast
import os

import megatron_soda

# Bottom to top.  Packages on one row do not import each other.
LAYERS: list[set[str]] = [
    {"versions"},  # the supported torch/megatron-core/transformers ranges (setup.py reads it alone)
    {"atomic_files", "compat", "output_lock", "safe_loading", "startup"},
    {"format"},
    {"tokenizer"},
    {"audio"},
    {"data", "tasks"},  # preprocessing: audio + text -> shards; tasks: benchmark items as token sequences
    {"models", "optim"},  # optim: plain-torch optimizers (no run configuration, no megatron)
    {"config"},  # the run configuration (architecture presets come from models)
    {"scaling"},  # FLOP accounting and the scaling-law toolkit
    {"checkpointing"},
    {"training"},
    {"convert"},
    {"steer"},  # steering vectors: extract from text, hook decoder-layer outputs (generate/eval import it)
    {"finetune"},  # fine-tuning outside megatron: DeepSpeed / plain torch on the HF Qwen3 model
    {"generate"},  # token ids -> text and audio (KV-cache decoding, grammar, stop rules)
    {"eval"},  # SODA's benchmarks: backends, runners, scorers, CLI
    {"testing"},  # fixtures for tests, quickstart and benchmarks: nothing in the product uses them
]
ROOT = os.path.dirname(megatron_soda.__file__)


def _layer(package: str) -> int:
    for i, row in enumerate(LAYERS):
        if package in row:
            return i
    raise AssertionError(f"megatron_soda.{package} is not placed in tests/test_layering.py LAYERS")


def _imports(path: str) -> list[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return [m.split(".")[1] for m in out if m.startswith("megatron_soda.")]


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT).split(os.sep)
            package = rel[0] if len(rel) > 1 else rel[0][:-3]
            if package == "__init__.py"[:-3]:
                continue
            for target in _imports(path):
                if target != package and _layer(target) >= _layer(package):
                    wrong.append(f"{os.path.relpath(path, ROOT)} imports megatron_soda.{target}")
    assert not wrong, "\n".join(wrong)


def test_every_package_is_placed():
    packages = {n[:-3] if n.endswith(".py") else n for n in os.listdir(ROOT)
                if not n.startswith("_") and (n.endswith(".py") or os.path.isdir(os.path.join(ROOT, n)))
                and n != "__pycache__"}
    for package in packages:
        _layer(package)
