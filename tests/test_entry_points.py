"""The command-line entry points: every ``tools/`` script (and ``pretrain_soda.py``,
``finetune_soda.py``) runs from any directory without touching ``sys.path``, each is a shim of
one ``main`` in the package, and that ``main`` is also installed as a console script (setup.py
``entry_points``)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SCRIPTS = sorted(
    os.path.relpath(os.path.join(d, n), REPO)
    for d, _, names in os.walk(os.path.join(REPO, "tools"))
    for n in names
    if n.endswith(".py")
) + ["pretrain_soda.py", "finetune_soda.py"]
CONSOLE_SCRIPTS = {
    ep.name: ep
    for ep in importlib.metadata.distribution("megatron_soda").entry_points
    if ep.group == "console_scripts"
}


def _help(cmd: list[str], cwd: str) -> str:
    """``CMD --help`` from ``cwd`` with no PYTHONPATH; its output (exit 0 and a usage line asserted)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [*cmd, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{cmd} --help exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("usage: "), proc.stdout[:500]
    return proc.stdout


def _script_main(rel: str):
    """The ``main`` a script runs: the one its ``from M import main`` names (at the top, or under
    ``if __name__ == "__main__":`` where the script must stay light to import), read without
    running the script."""
    tree = ast.parse(open(os.path.join(REPO, rel), encoding="utf-8").read())
    [(module, name)] = [(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                        for a in n.names if (a.asname or a.name) == "main"]
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("script", ["pretrain_soda.py", "finetune_soda.py"])
def test_trainer_scripts_import_light_in_spawned_children(script):
    """A ``spawn`` child of the trainer (megatron's checkpoint-results manager, started by every
    rank) imports the script again as ``__mp_main__``: that must not import the training stack
    (torch and megatron-core: about 3 s of each rank's start-up, measured)."""
    code = (
        "import runpy, sys\n"
        f"runpy.run_path({os.path.join(REPO, script)!r}, run_name='__mp_main__')\n"
        "print(sorted(m for m in ('torch', 'megatron.core', 'megatron_soda.training') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("rel", SCRIPTS)
def test_tool_script_runs_from_any_directory(rel, tmp_path):
    _help([sys.executable, os.path.join(REPO, rel)], str(tmp_path))


@pytest.mark.parametrize("name", sorted(CONSOLE_SCRIPTS))
def test_console_script_runs(name, tmp_path):
    _help([os.path.join(BIN, name)], str(tmp_path))


def test_every_tool_is_a_console_script():
    """Each script is a shim of a package ``main``, installed under a ``soda-*`` name; nothing
    installed lacks its script."""
    targets = {(ep.module, ep.attr): name for name, ep in CONSOLE_SCRIPTS.items()}
    covered = set()
    for rel in SCRIPTS:
        main = _script_main(rel)
        assert main.__module__.startswith("megatron_soda."), f"{rel}: its main lives in the script"
        key = (main.__module__, main.__name__)
        assert key in targets, f"{rel}: {key} is not a console script in setup.py"
        covered.add(targets[key])
    assert covered == set(CONSOLE_SCRIPTS)


def test_no_script_edits_sys_path():
    """The package is installed (editable in development): scripts import it as installed, and
    benchmark scripts find their sibling modules through the script's own directory."""
    offenders = []
    for top in ("tools", "benchmarks"):
        for d, _, names in os.walk(os.path.join(REPO, top)):
            for n in names:
                path = os.path.join(d, n)
                if n.endswith(".py") and "sys.path" in open(path, encoding="utf-8").read():
                    offenders.append(os.path.relpath(path, REPO))
    for top_script in ("pretrain_soda.py", "finetune_soda.py"):
        if "sys.path" in open(os.path.join(REPO, top_script), encoding="utf-8").read():
            offenders.append(top_script)
    assert not offenders, f"sys.path manipulation in {offenders}"
