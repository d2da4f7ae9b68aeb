"""Turn a plan into ready ``pretrain_soda.py`` commands, a Slurm job array, and run metadata.

Layout written by :func:`write_sweep` (``<out>`` = the sweep directory)::

    <out>/plan.json                 the planned runs (same records as ``plan --format json``)
    <out>/commands.txt              one shell command per run
    <out>/run_all.sh                the runs one after another (local / CPU studies)
    <out>/sweep.sbatch              Slurm job array, task i runs line i of the run list
    <out>/<run>/run_meta.json       budget, shape, params, planned steps/tokens (the collector's key)
    <out>/<run>/launch.sh           the command of this run
    <out>/<run>/metrics.jsonl       written by the trainer (--metrics-jsonl)
    <out>/<run>/checkpoints/        written by the trainer (--save)

The trainer options a sweep sets are listed in :data:`TRAINER_FIELDS` (config field names);
their flags are spelled by the trainer's own command builder, so a renamed flag needs no change
here.  ``--omit-flag`` / extra arguments adapt a sweep to another trainer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_soda.atomic_files import write_text_atomic
from megatron_soda.config.cli import flags_for
from megatron_soda.config.fields import flag_of
from megatron_soda.scaling import schema
from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.planner import PlannedRun

# trainer config field (megatron_soda.config) -> key of the value dict built by trainer_values();
# a None value leaves the field out.  The flags are spelled by megatron_soda.config.cli.flags_for.
TRAINER_FIELDS: tuple[tuple[str, str], ...] = (
    ("model_size", "model_size"),  # the trainer's preset; every shape field is overridden below
    ("num_layers", "layers"),
    ("hidden_size", "width"),
    ("num_attention_heads", "heads"),
    ("num_query_groups", "kv_heads"),
    ("kv_channels", "head_dim"),
    ("ffn_hidden_size", "ffn"),
    ("seq_length", "seq_length"),
    ("micro_batch_size", "micro_batch_size"),
    ("global_batch_size", "batch_size"),
    ("train_iters", "steps"),
    ("lr", "lr"),
    ("min_lr", "min_lr"),
    ("lr_decay_style", "lr_schedule"),
    ("lr_warmup_iters", "warmup_iters"),
    ("lr_wsd_decay_style", "wsd_decay_style"),
    ("lr_wsd_decay_iters", "decay_iters"),
    # SODA's sweep trains with Cautious Adam + AdamC decay (marin-community/marin
    # experiments/audio/isoflop_audio_sweep.py @193d3656 L129-143): passed explicitly, so a sweep
    # does not depend on the trainer's default.
    ("optimizer", "optimizer"),
    ("adam_beta1", "beta1"),
    ("adam_beta2", "beta2"),
    ("adam_eps", "eps"),
    ("weight_decay", "weight_decay"),
    ("clip_grad", "grad_clip"),
    ("z_loss_weight", "z_loss"),
    ("eval_interval", "eval_interval"),
    ("save", "save"),
    ("metrics_jsonl", "metrics_jsonl"),
    ("data_path", "data_path"),
    ("tokenizer", "tokenizer"),
    ("num_codebooks", "num_codebooks"),
    ("eval_iters", "eval_iters"),  # set only with LaunchConfig.eval_samples
    # slurm/scaling_array.sbatch stops a run with SIGTERM before the time limit or on preemption:
    # the run saves the iteration it reached and the requeued task redoes no step
    ("exit_signal_handler", "exit_signal_handler"),
)


@dataclass
class LaunchConfig:
    """Where and how the runs are launched (everything that is not in the plan)."""

    out_dir: str
    trainer: str = "pretrain_soda.py"
    launcher: str = "torchrun --standalone --nproc-per-node=gpu"
    data_path: str | None = "${DATA_PATH}"  # "$VAR" values are expanded by the shell at run time
    tokenizer: str | None = "${TOKENIZER}"
    num_codebooks: int | None = None  # None: the plan's (recipe) value
    micro_batch_size: int = 1  # 0: the global batch / data_parallel (no gradient accumulation)
    data_parallel: int = 1  # ranks the launcher starts per run (for micro_batch_size 0 only)
    model_size: str | None = (
        "135m"  # preset for the fields a plan does not set (norm eps, RoPE base)
    )
    eval_interval: int | None = None  # None: the run's step count, so the last step is evaluated
    # Held-out sequences per evaluation, the same for every run: --eval-iters = ceil(this / batch).
    # The trainer evaluates --eval-iters global batches, i.e. a batch-size-dependent subset of
    # the held-out data; runs with different batches would otherwise be scored on different sets.
    eval_samples: int | None = None
    extra_args: tuple[str, ...] = ()
    omit_flags: tuple[str, ...] = ()
    job_name: str = "soda-isoflop"
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int | None = None
    max_concurrent: int | None = None


def trainer_values(run: PlannedRun, cfg: LaunchConfig, run_dir: str) -> dict[str, object]:
    """Every value a TRAINER_FLAGS entry may refer to."""
    values: dict[str, object] = dict(run.to_dict())
    micro = cfg.micro_batch_size or run.batch_size // max(cfg.data_parallel, 1)
    values.update(
        micro_batch_size=min(micro, run.batch_size),
        min_lr=0.0,
        warmup_iters=round(run.recipe.warmup * run.steps),
        decay_iters=round(run.recipe.decay * run.steps),
        wsd_decay_style="linear",
        model_size=cfg.model_size,
        eval_interval=cfg.eval_interval or run.steps,
        save=os.path.join(run_dir, "checkpoints"),
        metrics_jsonl=os.path.join(run_dir, schema.METRICS_FILE),
        exit_signal_handler=True,
        **_launch_values(run, cfg),
    )
    return values


def _launch_values(run: PlannedRun, cfg: LaunchConfig) -> dict[str, object]:
    """What the launch config adds to (or overrides in) the plan record, for both the trainer
    flags and run_meta.json."""
    return {
        "num_codebooks": cfg.num_codebooks or run.recipe.num_codebooks,
        "eval_iters": eval_iters(run, cfg),
        "data_path": cfg.data_path,
        "tokenizer": cfg.tokenizer,
    }


def build_argv(run: PlannedRun, cfg: LaunchConfig, run_dir: str) -> list[str]:
    """The trainer and its arguments for one run (without the launcher prefix)."""
    values = trainer_values(run, cfg, run_dir)
    omit = set(cfg.omit_flags)
    fields = {
        name: [values[key]] if name == "data_path" else values[key]  # one word: may be "$VAR"
        for name, key in TRAINER_FIELDS
        if values.get(key) is not None and flag_of(name) not in omit
    }
    return [cfg.trainer, *flags_for(fields), *cfg.extra_args]


def eval_iters(run: PlannedRun, cfg: LaunchConfig) -> int | None:
    """Global batches per evaluation so that every run sees ``cfg.eval_samples`` sequences
    (rounded up to whole batches; choose a multiple of the batch sizes to make it exact)."""
    return -(-cfg.eval_samples // run.batch_size) if cfg.eval_samples else None


def command_line(run: PlannedRun, cfg: LaunchConfig, run_dir: str) -> str:
    """The shell command: the launcher prefix verbatim (it is shell text, ``$VAR`` allowed),
    then the quoted trainer arguments."""
    args = shell_join(build_argv(run, cfg, run_dir))
    return f"{cfg.launcher.strip()} {args}" if cfg.launcher.strip() else args


# Flags taking a list (Megatron's blend "W1 P1 W2 P2 ..."): a ``$VAR`` value is left unquoted
# so that the shell splits it into words.
LIST_FLAGS = frozenset(
    {"--data-path", "--train-data-path", "--valid-data-path", "--test-data-path"}
)


def shell_join(argv: Sequence[str]) -> str:
    """Quote for bash, but leave ``$VAR``/``${VAR}`` values expandable (double quotes, or no
    quotes after a list-valued flag)."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith("$") and not any(c in a for c in '"`\\'):
            out.append(a if i and argv[i - 1] in LIST_FLAGS else f'"{a}"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def run_metadata(run: PlannedRun, cfg: LaunchConfig, command: str) -> dict:
    """The run_meta.json content: the plan record plus where the trainer writes its metrics."""
    meta = run.to_dict()
    meta.update(
        schema_version=schema.META_SCHEMA_VERSION,
        metrics_jsonl=schema.METRICS_FILE,  # relative to the run directory: sweeps can move
        save="checkpoints",
        **_launch_values(run, cfg),
        command=command,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return meta


def write_sweep(runs: Sequence[PlannedRun], cfg: LaunchConfig) -> dict[str, object]:
    """Write run directories, command list, local runner and Slurm array; return a summary."""
    if not runs:
        raise ScalingError("nothing to launch: the plan has no runs")
    names = [r.name for r in runs]
    if cfg.data_parallel < 1:
        raise ScalingError("--data-parallel must be >= 1")
    if cfg.eval_samples is not None and cfg.eval_samples <= 0:
        raise ScalingError("--eval-samples must be a positive number of sequences")
    if not cfg.micro_batch_size and cfg.data_parallel > 1:
        odd = [r.name for r in runs if r.batch_size % cfg.data_parallel]
        if odd:
            raise ScalingError(f"batch not divisible by --data-parallel {cfg.data_parallel}: "
                               f"{', '.join(odd)} (raise --min-batch)")  # fmt: skip
    if len(set(names)) != len(names):
        raise ScalingError("duplicate run names in the plan")
    out = os.path.abspath(cfg.out_dir)
    os.makedirs(out, exist_ok=True)
    commands, scripts = [], []
    for run in runs:
        run_dir = os.path.join(out, run.name)
        os.makedirs(run_dir, exist_ok=True)
        command = command_line(run, cfg, run_dir)
        write_text_atomic(
            os.path.join(run_dir, schema.RUN_META_FILE),
            json.dumps(run_metadata(run, cfg, command), indent=2),
        )
        script = os.path.join(run_dir, schema.LAUNCH_SCRIPT)
        header = (
            f"#!/usr/bin/env bash\n# {run.name}: budget {run.budget:.3g} FLOPs\nset -euo pipefail\n"
        )
        write_text_atomic(script, header + _env_checks(cfg) + command + "\n")
        os.chmod(script, 0o755)
        commands.append(command)
        scripts.append(script)
    write_text_atomic(os.path.join(out, "plan.json"), json.dumps([r.to_dict() for r in runs], indent=2))
    write_text_atomic(os.path.join(out, "commands.txt"), "\n".join(commands) + "\n")
    run_all = os.path.join(out, "run_all.sh")
    body = "".join(
        f"bash {shlex.quote(s)} > {shlex.quote(os.path.dirname(s))}/train.log 2>&1\n"
        for s in scripts
    )
    write_text_atomic(run_all, "#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    os.chmod(run_all, 0o755)
    sbatch = os.path.join(out, "sweep.sbatch")
    write_text_atomic(sbatch, slurm_array_script(scripts, cfg, out))
    return {"out_dir": out, "runs": len(runs), "commands": os.path.join(out, "commands.txt"),
            "run_all": run_all, "sbatch": sbatch}  # fmt: skip


def slurm_array_script(scripts: Sequence[str], cfg: LaunchConfig, out: str) -> str:
    """A job array: task i runs scripts[i] (submit with ``sbatch sweep.sbatch``)."""
    n = len(scripts)
    array = f"0-{n - 1}" + (f"%{cfg.max_concurrent}" if cfg.max_concurrent else "")
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={cfg.job_name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={cfg.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={cfg.gpus_per_node}",
        f"#SBATCH --output={out}/slurm-%A_%a.out",
    ]
    if cfg.partition:
        lines.append(f"#SBATCH --partition={cfg.partition}")
    if cfg.account:
        lines.append(f"#SBATCH --account={cfg.account}")
    if cfg.time_limit:
        lines.append(f"#SBATCH --time={cfg.time_limit}")
    if cfg.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={cfg.cpus_per_task}")
    lines += [
        "set -euo pipefail",
        "# Export DATA_PATH and TOKENIZER (or edit commands) before sbatch; they reach the tasks.",
        "RUNS=(",
        *(f"  {shlex.quote(s)}" for s in scripts),
        ")",
        'SCRIPT="${RUNS[$SLURM_ARRAY_TASK_ID]}"',
        'echo "task $SLURM_ARRAY_TASK_ID: $SCRIPT"',
        'exec bash "$SCRIPT"',
        "",
    ]
    return "\n".join(lines)


def run_local(run_dirs: Sequence[str], *, skip_finished: bool = True) -> list[tuple[str, int]]:
    """Run the launch scripts one after another here (for CPU-sized studies).

    Runs the collector already counts as finished are skipped, so an interrupted study resumes.
    Returns (run dir, exit code) per run started; stops at the first failure.
    """
    from megatron_soda.scaling.collector import inspect_run

    results = []
    for run_dir in run_dirs:
        if skip_finished and inspect_run(run_dir).ok:
            print(f"skip {run_dir}: already finished", file=sys.stderr)
            continue
        log = os.path.join(run_dir, "train.log")
        print(f"run {run_dir} (log: {log})", file=sys.stderr)
        with open(log, "w", encoding="utf-8") as f:
            rc = subprocess.call(
                ["bash", os.path.join(run_dir, schema.LAUNCH_SCRIPT)],
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        results.append((run_dir, rc))
        if rc != 0:
            break
    return results


def _env_checks(cfg: LaunchConfig) -> str:
    """Fail with a clear message when a ``$VAR`` placeholder (data path, tokenizer) is unset."""
    lines = []
    for opt, value in (("--data-path", cfg.data_path), ("--tokenizer", cfg.tokenizer)):
        m = re.fullmatch(r"\$\{?(\w+)\}?", value or "")
        if m:
            lines.append(
                f': "${{{m.group(1)}:?export {m.group(1)} or pass {opt} to the scaling launch command}}"\n'
            )
    return "".join(lines)
