"""The Slurm path on a real (local, throwaway) Slurm cluster.

``scripts/slurm_local_cluster.sh`` starts munged + slurmctld + two slurmd "nodes" on this machine
(module fixture, stopped at the end even when a test fails).  The tests submit the repository's
sbatch scripts as a user would, for tiny CPU runs on shards made by the real preprocessing tools:

* ``slurm/pretrain_soda.sbatch`` on 2 nodes x 1 process with TP=2: job COMPLETED, exit 0, the log
  in the default ``logs/%x-%j.out``, one metrics record per iteration with finite losses;
* the same script on 2 nodes with DP=2 (distributed optimizer), interrupted twice: an external
  ``scontrol requeue`` once a checkpoint exists, then ``scancel --batch --signal=USR1`` (what
  ``--signal=B:USR1@300`` delivers before the time limit) so that the script's trap stops training
  and requeues the job.  Both stops go through ``--exit-signal-handler``: each attempt saves the
  iteration it stopped at and the next one resumes there (no iteration is trained twice, so the
  metrics hold each iteration once, whatever --save-interval) and the job must finish with 2 restarts;
* ``slurm/scaling_array.sbatch`` over a sweep written by ``python -m megatron_soda.scaling launch``:
  both array tasks COMPLETED with their planned number of steps.

Needs root (slurmd/slurmctld run as root; /etc/hosts gets the node names) and Slurm + munge, which
the script installs with apt-get when missing; skipped otherwise.  About 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_SCRIPT = os.path.join(REPO, "scripts", "slurm_local_cluster.sh")
PRETRAIN_SBATCH = os.path.join(REPO, "slurm", "pretrain_soda.sbatch")
ARRAY_SBATCH = os.path.join(REPO, "slurm", "scaling_array.sbatch")
PY = sys.executable
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
# configuration variables of the sbatch scripts: never inherited from the environment of the test run
SBATCH_VARS = (
    "REPO RUN_NAME RUN_DIR MODEL_SIZE TOKENIZER NUM_CODEBOOKS DATA_PATH SEQ_LENGTH TP PP "
    "DISTRIBUTED_OPTIMIZER MICRO_BATCH_SIZE GLOBAL_BATCH_SIZE TRAIN_ITERS LR SAVE_DIR SAVE_INTERVAL "
    "LOG_INTERVAL EVAL_INTERVAL EVAL_ITERS METRICS_JSONL TENSORBOARD_DIR SEED DEVICE PRECISION "
    "NPROC_PER_NODE EXTRA_ARGS TORCHRUN TRAIN_COMMAND TRAIN_STOP_SIGNAL STOP_GRACE MASTER_ADDR "
    "MASTER_PORT SWEEP COMMANDS CONTAINER_IMAGE CONTAINER_MOUNTS DRY_RUN"
).split()

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the local Slurm cluster needs Linux"),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: the local Slurm cluster runs slurmctld/slurmd as root "
        "and adds its node names to /etc/hosts",
    ),
    pytest.mark.skipif(
        shutil.which("sinfo") is None and shutil.which("apt-get") is None,
        reason="Slurm is not installed and apt-get is not available to install it",
    ),
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None, reason="needs espeak-ng (sample speech data)"
    ),
]


# ------------------------------------------------------------------------------------------------
# cluster


class Cluster:
    def __init__(self, root: str, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def run(
        self,
        *cmd: str,
        check: bool = True,
        cwd: str | None = None,
        env: dict | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(cmd), env=env or self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                + self.daemon_logs()
            )
        return proc

    def submit(
        self,
        script: str,
        *sbatch_args: str,
        cwd: str,
        env: dict[str, str],
        script_args: tuple[str, ...] = (),
    ) -> str:
        out = self.run(
            "sbatch", "--parsable", *sbatch_args, script, *script_args, cwd=cwd, env=env
        ).stdout.strip()
        return out.split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job -o``: one dict per job (array tasks: one per task); [] once forgotten."""
        proc = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        records = []
        for line in proc.stdout.splitlines():
            rec = {}
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep:
                    rec.setdefault(key, value)
            if rec:
                records.append(rec)
        return records

    def job(self, job_id: str) -> dict[str, str]:
        recs = self.jobs(job_id)
        assert len(recs) == 1, f"scontrol show job {job_id}: {recs}"
        return recs[0]

    def wait(self, what: str, predicate, timeout: float, context=lambda: "", interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}\n{context()}\n{self.daemon_logs()}"
        )

    def wait_final(self, job_id: str, timeout: float, context=lambda: "") -> list[dict[str, str]]:
        def done():
            recs = self.jobs(job_id)
            return recs if recs and all(r.get("JobState") in FINAL_STATES for r in recs) else None

        return self.wait(f"job {job_id} to end", done, timeout, context, interval=0.5)

    def daemon_logs(self, lines: int = 25) -> str:
        out = []
        for name in (
            sorted(os.listdir(os.path.join(self.root, "log")))
            if os.path.isdir(os.path.join(self.root, "log"))
            else []
        ):
            with open(os.path.join(self.root, "log", name), errors="replace") as f:
                out.append(f"---- {name} (last {lines} lines)\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(out)


def _free_base_port(count: int) -> int:
    for base in range(16817, 40000, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for the local Slurm cluster")


@pytest.fixture(scope="module")
def cluster():
    base_env = dict(
        os.environ,
        SODA_SLURM_NODES="2",
        SODA_SLURM_CPUS="4",
        SODA_SLURM_PORT=str(_free_base_port(3)),
    )
    proc = subprocess.run(
        ["bash", CLUSTER_SCRIPT, "install"],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.skip(f"Slurm/munge unavailable: {proc.stderr.strip()[-500:]}")
    # directly under /tmp, world-traversable: munged runs as the munge user and must reach its socket dir
    root = tempfile.mkdtemp(prefix="soda-slurm-test-", dir="/tmp")
    os.chmod(root, 0o755)
    try:
        t0 = time.monotonic()
        start = subprocess.run(
            ["bash", CLUSTER_SCRIPT, "start", root],
            env=base_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert start.returncode == 0, f"cluster start failed:\n{start.stdout}\n{start.stderr}"
        print(f"local Slurm cluster up in {time.monotonic() - t0:.1f}s: {root}")
        env = dict(base_env, SLURM_CONF=os.path.join(root, "etc", "slurm.conf"))
        yield Cluster(root, env)
    finally:
        stop = subprocess.run(
            ["bash", CLUSTER_SCRIPT, "stop", root],
            env=base_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if stop.returncode != 0:
            print(f"cluster stop failed:\n{stop.stdout}\n{stop.stderr}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# data: real speech (espeak-ng) -> random-weight Mimi codes -> shards, with a small BPE tokenizer


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_bpe_path):
    """The sample-data and preprocessing tools' own entry points, in this process (one import of
    torch/transformers for both, no worker processes: the bytes do not depend on the worker
    count, tests/test_preprocess.py::test_same_bytes_whatever_the_worker_count)."""
    from megatron_soda.data.cli import preprocess_main
    from megatron_soda.testing.cli import main as make_sample_data

    root = tmp_path_factory.mktemp("slurm_data")
    assert make_sample_data(["--out", str(root / "sample"), "--recordings", "2", "--utterances-per-recording", "3",
                             "--formats", "jsonl,text", "--text-source", "fallback", "--workers", "1"]) == 0  # fmt: skip
    for name, src, fmt in (("speech", "speech.jsonl", "jsonl"), ("text", "text.jsonl", "text")):
        argv = ["--input", str(root / "sample" / src), "--input-format", fmt, "--output-prefix", str(root / "shards" / name),
                "--tokenizer", small_bpe_path, "--num-codebooks", "8", "--codec", "random:tiny", "--log-level", "WARNING",
                "--workers", "1"]  # fmt: skip
        assert preprocess_main(argv) == 0, name
    return {
        "tokenizer": small_bpe_path,
        "speech": str(root / "shards" / "speech"),
        "text": str(root / "shards" / "text"),
    }


def job_env(cluster: Cluster, shards: dict, run_dir: str, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in cluster.env.items()
        if k not in SBATCH_VARS and not k.startswith(("SLURM_", "SBATCH_"))
    }
    env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    env.update(
        REPO=REPO,
        DEVICE="cpu",
        MODEL_SIZE="tiny",
        TOKENIZER=shards["tokenizer"],
        NUM_CODEBOOKS="8",
        DATA_PATH=f"0.95 {shards['speech']} 0.05 {shards['text']}",
        SEQ_LENGTH="256",
        MICRO_BATCH_SIZE="2",
        GLOBAL_BATCH_SIZE="8",
        LR="1e-3",
        SEED="1",
        LOG_INTERVAL="1",
        EVAL_ITERS="0",
        RUN_DIR=run_dir,
        TENSORBOARD_DIR="",
        EXTRA_ARGS="--split 100,0,0",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(overrides)
    return env


def submit_dir(tmp_path) -> str:
    d = tmp_path / "submit"
    (d / "logs").mkdir(parents=True)  # the sbatch scripts' default --output=logs/...
    return str(d)


def read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [r for r in map(json.loads, f) if r.get("split", "train") == "train"]


def tracker(save_dir: str) -> int:
    text = read_text(os.path.join(save_dir, "latest_checkpointed_iteration.txt")).strip()
    return int(text) if text.isdigit() else 0


def attempts(log: str, job_id: str) -> dict[int, str]:
    """Log text per attempt, split at the script's ``job J attempt K`` banner."""
    parts = re.split(rf"^\[soda-sbatch [^\]]*\] job {job_id} attempt (\d+) .*$", log, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def resume_point(attempt_log: str) -> int:
    """The checkpoint iteration an attempt started from, as the sbatch script reports it (0: none)."""
    m = re.search(r"latest checkpoint: iteration (\d+) in ", attempt_log)
    return int(m.group(1)) if m else 0


# ------------------------------------------------------------------------------------------------


def test_pretrain_sbatch_two_nodes_tp2(cluster, shards, tmp_path):
    cwd = submit_dir(tmp_path)
    run_dir = str(tmp_path / "run")
    env = job_env(
        cluster,
        shards,
        run_dir,
        TP="2",
        DISTRIBUTED_OPTIMIZER="0",
        TRAIN_ITERS="6",
        SAVE_INTERVAL="3",
    )
    job = cluster.submit(
        PRETRAIN_SBATCH, "--nodes=2", "--gpus-per-node=0", "--time=10", cwd=cwd, env=env
    )
    log_path = os.path.join(cwd, "logs", f"soda-pretrain-{job}.out")
    [rec] = cluster.wait_final(job, 240, lambda: read_text(log_path)[-6000:])
    log = read_text(log_path)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", f"{rec}\n{log[-6000:]}"
    assert rec["NodeList"] == "soda-n[1-2]" and rec["Restarts"] == "0"
    assert "2 node(s) x 1 process(es)" in log and "training exited with status 0" in log, log[
        -4000:
    ]
    records = metrics(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["iteration"] for r in records] == list(range(1, 7))
    assert all(math.isfinite(r["lm_loss"]) for r in records)
    assert records[-1]["lm_loss"] < records[0]["lm_loss"]
    save = os.path.join(run_dir, "checkpoints")
    assert tracker(save) == 6
    with open(
        os.path.join(save, "iter_0000006", "run_args.json")
    ) as f:  # the layout the job really ran
        run_args = json.load(f)
    assert run_args["tensor_model_parallel_size"] == 2 and run_args["device"] == "cpu", run_args


def test_pretrain_sbatch_requeue_resumes(cluster, shards, tmp_path):
    cwd = submit_dir(tmp_path)
    run_dir = str(tmp_path / "run")
    save = os.path.join(run_dir, "checkpoints")
    # interval 2: each attempt's first checkpoint (what the test waits for) comes two steps after its start
    iters, interval = 14, 2
    env = job_env(
        cluster,
        shards,
        run_dir,
        TRAIN_ITERS=str(iters),
        SAVE_INTERVAL=str(interval),
        DISTRIBUTED_OPTIMIZER="1",
    )
    job = cluster.submit(
        PRETRAIN_SBATCH,
        "--nodes=2",
        "--gpus-per-node=0",
        "--time=10",
        "--job-name=soda-requeue",
        cwd=cwd,
        env=env,
    )
    log_path = os.path.join(cwd, "logs", f"soda-requeue-{job}.out")

    def context() -> str:
        return f"{cluster.jobs(job)}\n{read_text(log_path)[-8000:]}"

    def trained(attempt: int):
        """Attempt ``attempt`` (1-based) is running and has committed a checkpoint of its own."""

        def check():
            rec = cluster.job(job)
            assert rec["JobState"] not in FINAL_STATES, (
                f"job ended early: {rec}\n{read_text(log_path)[-8000:]}"
            )
            if rec["JobState"] != "RUNNING" or rec["Restarts"] != str(attempt - 1):
                return None
            part = attempts(read_text(log_path), job).get(attempt)
            if part is None or (attempt > 1 and "(training resumes there)" not in part):
                return None  # a restart's resume point is logged a few lines after its banner
            latest = tracker(save)
            return latest if latest > resume_point(part) else None

        return check

    # 1. preempted from outside: scontrol requeue once the first checkpoint exists
    ckpt1 = cluster.wait("a first checkpoint", trained(1), 180, context)
    cluster.run("scontrol", "requeue", job)
    # 2. the time-limit warning: SIGUSR1 to the batch shell; its trap stops training and requeues
    ckpt2 = cluster.wait("the restarted job to write a checkpoint", trained(2), 180, context)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    # 3. the third attempt finishes
    [rec] = cluster.wait_final(job, 240, context)
    log = read_text(log_path)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", context()
    assert rec["Restarts"] == "2", context()

    parts = attempts(log, job)
    assert sorted(parts) == [1, 2, 3], log[-8000:]
    assert resume_point(parts[1]) == 0
    starts = [resume_point(parts[2]), resume_point(parts[3])]
    # each restart found the checkpoint we saw (or a later one written before the stop took effect)
    assert ckpt1 <= starts[0] < ckpt2 <= starts[1] < iters, (ckpt1, ckpt2, starts)
    # each attempt stopped on the signal and saved that iteration; the next resumed right there
    stops = [
        int(re.findall(r"stopping after iteration (\d+): SIGTERM received", parts[i])[-1])
        for i in (1, 2)
    ]
    assert stops == starts, (stops, starts, interval)
    assert "caught SIGUSR1" in parts[2] and f"requeueing job {job}" in parts[2], parts[2][-4000:]
    assert "training exited with status 0" in parts[3]

    # metrics: appended by every attempt; each restart continues at (its checkpoint + 1)
    records = metrics(os.path.join(run_dir, "metrics.jsonl"))
    its = [r["iteration"] for r in records]
    assert its == list(range(1, iters + 1)), its  # nothing redone after either stop
    assert all(math.isfinite(r["lm_loss"]) for r in records)
    assert tracker(save) == iters


def test_scaling_array_sbatch(cluster, shards, tmp_path):
    cwd = submit_dir(tmp_path)
    sweep = str(tmp_path / "sweep")
    launch = [PY, "-m", "megatron_soda.scaling", "launch", "--budgets", "1e11", "--rule", "tiny",
              "--vocab-size", str(_vocab_size(shards["speech"])), "--widths", "64", "128", "--target-steps", "8",
              "--seq-length", "128", "--out", sweep, "--launcher", f"{TORCHRUN} --standalone --nproc-per-node=1",
              "--micro-batch-size", "0", "--model-size", "tiny", "--num-codebooks", "8", "--tokenizer",
              "${TOKENIZER}", "--data-path", "${DATA_PATH}", "--gpus-per-node", "0",
              "--extra-args", "--device cpu --split 100,0,0 --eval-iters 0 --log-interval 1"]  # fmt: skip
    proc = subprocess.run(launch, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(sweep, "plan.json")) as f:
        plan = json.load(f)
    with open(os.path.join(sweep, "commands.txt")) as f:
        assert len(f.read().splitlines()) == len(plan) == 2
    env = job_env(cluster, shards, str(tmp_path / "unused"), DATA_PATH=shards["speech"])
    job = cluster.submit(
        ARRAY_SBATCH,
        f"--array=0-{len(plan) - 1}",
        "--gpus-per-node=0",
        "--time=10",
        cwd=cwd,
        env=env,
        script_args=(sweep,),
    )

    def logs() -> str:
        return "\n".join(
            read_text(os.path.join(cwd, "logs", f"soda-scaling-{job}_{i}.out"))[-3000:]
            for i in range(len(plan))
        )

    recs = cluster.wait_final(job, 240, logs)
    assert sorted(int(r["ArrayTaskId"]) for r in recs) == [0, 1], recs
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in recs), (
        f"{recs}\n{logs()}"
    )
    for i, run in enumerate(plan):
        log = read_text(os.path.join(cwd, "logs", f"soda-scaling-{job}_{i}.out"))
        assert f"array task {i}: line {i + 1} of {sweep}/commands.txt (run {run['name']})" in log, (
            log[-3000:]
        )
        records = metrics(os.path.join(sweep, run["name"], "metrics.jsonl"))
        assert [r["iteration"] for r in records] == list(range(1, run["steps"] + 1)), run["name"]
        assert all(math.isfinite(r["lm_loss"]) for r in records)


def _vocab_size(prefix: str) -> int:
    with open(prefix + ".stats.json") as f:
        return json.load(f)["layout"]["vocab_size"]
