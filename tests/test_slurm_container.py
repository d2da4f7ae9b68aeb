"""``CONTAINER_IMAGE`` in the sbatch scripts, without a cluster: the command each script would run
(``DRY_RUN=1`` prints it and stops) under a faked Slurm job environment (``scontrol`` is a stub).

pyxis is not installed here, so what is checked is the command line: with ``CONTAINER_IMAGE`` the
srun carries ``--container-image``/``--container-mounts``/``--container-workdir`` and the
container's ``torchrun``/``python``; without it the command is exactly the one the scripts always
ran.  Running inside a real container is left to a cluster with pyxis (docs/install.md)."""

from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "slurm", "pretrain_soda.sbatch")
ARRAY = os.path.join(REPO, "slurm", "scaling_array.sbatch")
PREPROCESS = os.path.join(REPO, "slurm", "preprocess_array.sbatch")
IMAGE = "/shared/images/soda.sqsh"
CONTAINER_FLAGS = [
    f"--container-image={IMAGE}",
    f"--container-workdir={REPO}",
    f"--container-mounts={REPO}:{REPO},/data:/data",
]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="bash scripts")


@pytest.fixture
def fake_slurm(tmp_path):
    """A PATH with a stub ``scontrol`` (two hosts) and the variables of a running 2-node job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    stub.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "soda-n1\\nsoda-n2\\n"\n')
    stub.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "soda-n[1-2]",
        "SLURM_CPUS_PER_TASK": "4",
    }


def run(script: str, env: dict[str, str], *args: str, cwd: str | None = None) -> str:
    """The script's stdout + stderr with ``DRY_RUN=1`` (exit status 0 asserted)."""
    proc = subprocess.run(
        ["bash", script, *args],
        env={**env, "DRY_RUN": "1"},
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def command(output: str) -> list[str]:
    """The logged command (``command: ...`` line), split on spaces: the scripts log ``${CMD[*]}``,
    unquoted."""
    lines = [line for line in output.splitlines() if "command: " in line]
    assert len(lines) == 1, output
    return lines[0].split("command: ", 1)[1].split()


def pretrain_env(fake_slurm, **extra: str) -> dict[str, str]:
    return {
        **fake_slurm,
        "REPO": REPO,
        "DEVICE": "cpu",
        "TOKENIZER": "/data/soda/tokenizer.json",
        "RUN_DIR": "/tmp/soda-run",
        **extra,
    }


def srun_options(cmd: list[str]) -> list[str]:
    assert cmd[0] == "srun", cmd
    return cmd[: cmd.index("bash")]


def test_pretrain_container_flags_on_srun(fake_slurm):
    plain = command(run(PRETRAIN, pretrain_env(fake_slurm)))
    assert plain[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert not [a for a in plain if a.startswith("--container")]
    host_torchrun = [a for a in plain if a.endswith("/torchrun")]
    assert len(host_torchrun) == 1, plain

    out = run(
        PRETRAIN, pretrain_env(fake_slurm, CONTAINER_IMAGE=IMAGE, CONTAINER_MOUNTS="/data:/data")
    )
    boxed = command(out)
    for flag in CONTAINER_FLAGS:
        assert flag in srun_options(boxed), boxed
    # otherwise the same command, with the container's torchrun instead of the host's
    expected = ["torchrun" if a == host_torchrun[0] else a for a in plain]
    assert [a for a in boxed if not a.startswith("--container-")] == expected


def test_pretrain_without_container_is_unchanged(fake_slurm):
    """An empty CONTAINER_IMAGE is the default: the srun line has no pyxis option at all."""
    out_unset = run(PRETRAIN, pretrain_env(fake_slurm))
    out_empty = run(PRETRAIN, pretrain_env(fake_slurm, CONTAINER_IMAGE="", CONTAINER_MOUNTS=""))
    assert command(out_unset) == command(out_empty)
    assert "container" not in out_unset.lower()


def test_pretrain_container_ignored_outside_slurm(fake_slurm):
    env = {k: v for k, v in pretrain_env(fake_slurm).items() if not k.startswith("SLURM_")}
    plain = command(run(PRETRAIN, env))
    out = run(PRETRAIN, {**env, "CONTAINER_IMAGE": IMAGE})
    assert "ignored outside Slurm" in out
    assert command(out) == plain
    assert plain[0] == "bash"  # no srun outside Slurm


def test_train_command_runs_in_container(fake_slurm):
    line = "torchrun --standalone --nproc-per-node=1 pretrain_soda.py --device cpu"
    plain = run(PRETRAIN, pretrain_env(fake_slurm, TRAIN_COMMAND=line))
    assert command(plain) == line.split()  # logged as given (run as bash -c LINE)

    boxed = command(
        run(PRETRAIN, pretrain_env(fake_slurm, TRAIN_COMMAND=line, CONTAINER_IMAGE=IMAGE))
    )
    assert boxed[:6] == ["srun", "--kill-on-bad-exit=1", "--nodes", "1", "--ntasks", "1"]
    assert f"--container-image={IMAGE}" in srun_options(boxed)
    assert f"--container-mounts={REPO}:{REPO}" in srun_options(boxed)
    assert boxed[len(srun_options(boxed)) :] == ["bash", "-c", *line.split()]


def test_scaling_array_passes_container_through(fake_slurm, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    line = f"torchrun --standalone pretrain_soda.py --save {sweep}/run0/checkpoints"
    (sweep / "commands.txt").write_text(line + "\n")
    env = pretrain_env(fake_slurm, SLURM_ARRAY_TASK_ID="0", CONTAINER_IMAGE=IMAGE)
    out = run(ARRAY, env, str(sweep))
    assert "array task 0: line 1" in out
    cmd = command(out)
    assert f"--container-image={IMAGE}" in srun_options(cmd)
    assert cmd[len(srun_options(cmd)) :] == ["bash", "-c", *line.split()]


def test_preprocess_array_container(fake_slurm, tmp_path):
    env = {
        **fake_slurm,
        "REPO": REPO,
        "INPUT": "/data/in/a.tar",
        "OUTPUT_PREFIX": str(tmp_path / "out" / "p"),
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_COUNT": "8",
    }
    plain = command(run(PREPROCESS, env, cwd=str(tmp_path)))
    assert plain[0] == os.path.join(REPO, ".venv", "bin", "python")
    assert plain[1] == os.path.join(REPO, "tools", "preprocess", "preprocess_data.py")
    assert plain[plain.index("--shard-index") + 1] == "3"
    assert not (tmp_path / "out").exists()  # a dry run creates nothing

    boxed = command(
        run(
            PREPROCESS,
            {**env, "CONTAINER_IMAGE": IMAGE, "CONTAINER_MOUNTS": "/data:/data"},
            cwd=str(tmp_path),
        )
    )
    py = boxed.index("python")
    assert boxed[0] == "srun" and "--ntasks=1" in boxed[:py] and "--cpus-per-task=4" in boxed[:py]
    for flag in CONTAINER_FLAGS:
        assert flag in boxed[:py]
    assert boxed[py + 1 :] == plain[1:]


def test_preprocess_merge_container(fake_slurm, tmp_path):
    env = {**fake_slurm, "REPO": REPO, "OUTPUT_PREFIX": str(tmp_path / "p"), "NUM_SHARDS": "8"}
    merge = os.path.join(REPO, "slurm", "preprocess_merge.sbatch")
    plain = command(run(merge, env, cwd=str(tmp_path)))
    assert plain == [os.path.join(REPO, ".venv", "bin", "python"),
                     os.path.join(REPO, "tools", "preprocess", "merge_shards.py"),
                     "--output-prefix", str(tmp_path / "p"), "--num-shards", "8"]
    boxed = command(run(merge, {**env, "CONTAINER_IMAGE": IMAGE, "CONTAINER_MOUNTS": "/data:/data"},
                        cwd=str(tmp_path)))
    py = boxed.index("python")
    assert boxed[0] == "srun" and "--ntasks=1" in boxed[:py]
    for flag in CONTAINER_FLAGS:
        assert flag in boxed[:py]
    assert boxed[py + 1:] == plain[1:]


def test_pretrain_sbatch_runs_the_finetuning_entry(fake_slurm):
    default = command(run(PRETRAIN, pretrain_env(fake_slurm)))
    assert os.path.join(REPO, "pretrain_soda.py") in default
    sft = command(run(PRETRAIN, pretrain_env(fake_slurm, ENTRY="finetune_soda.py")))
    assert os.path.join(REPO, "finetune_soda.py") in sft and os.path.join(REPO, "pretrain_soda.py") not in sft
    # otherwise the same command
    assert [a.replace("finetune_soda.py", "pretrain_soda.py") for a in sft] == default
    bad = subprocess.run(["bash", PRETRAIN], env={**pretrain_env(fake_slurm, ENTRY="x.py"), "DRY_RUN": "1"},
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "ENTRY=x.py" in bad.stdout + bad.stderr
