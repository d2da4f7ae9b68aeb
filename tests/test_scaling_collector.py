"""Launcher output (run metadata, commands, Slurm array) and the collector's run triage."""

from __future__ import annotations

import csv
import json
import os

import pytest

from megatron_soda.config.fields import flag_of
from megatron_soda.scaling import schema
from megatron_soda.scaling.collector import collect, inspect_run, read_metrics
from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.launcher import TRAINER_FIELDS, LaunchConfig, write_sweep
from megatron_soda.scaling.planner import plan
from megatron_soda.scaling.results import read_results, write_results
from megatron_soda.scaling.rule_loading import load_rule


@pytest.fixture()
def sweep(tmp_path):
    rule = load_rule("tiny").with_overrides({"vocab_size": 2566}, {"widths": [64, 128, 192, 256]})
    p = plan([1e13], rule)
    cfg = LaunchConfig(out_dir=str(tmp_path / "sweep"), launcher="python", data_path="/data/shards",
                       tokenizer="tok.json", num_codebooks=1, eval_samples=64)  # fmt: skip
    write_sweep(p.runs, cfg)
    return tmp_path / "sweep", p.runs


def _write(path, records, tail=""):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(tail)


def _good_log(steps, final_loss=3.0):
    train = [{"split": "train", "iteration": i, "lm_loss": 8.0 - 5.0 * i / steps, "lr": 1e-3, "grad_norm": 1.0,
              "tokens_per_sec": 1e4} for i in range(1, steps + 1)]  # fmt: skip
    return [{"kind": "config", "note": "ignored"}, *train,
            {"iteration": steps, "split": "valid", "valid_lm_loss": final_loss}]  # fmt: skip


def test_launcher_writes_metadata_commands_and_slurm(sweep):
    root, runs = sweep
    run = runs[0]
    meta = json.loads((root / run.name / schema.RUN_META_FILE).read_text())
    assert meta["budget"] == 1e13 and meta["steps"] == run.steps and meta["tokens"] == run.tokens
    assert meta["params_total"] == run.params["total"] and meta["metrics_jsonl"] == "metrics.jsonl"
    script = (root / run.name / schema.LAUNCH_SCRIPT).read_text()
    for field, _ in TRAINER_FIELDS:
        assert f" {flag_of(field)} " in script, field
    assert (
        f"--hidden-size {run.shape.hidden_size} " in script
        and f"--train-iters {run.steps} " in script
    )
    assert "--lr-decay-style WSD" in script and "--num-codebooks 1" in script
    assert f"--eval-interval {run.steps} " in script and "--model-size 135m " in script
    assert run.shape.vocab_size == 2688  # 2566 padded to a multiple of 128 (tiny rule)
    sbatch = (root / "sweep.sbatch").read_text()
    assert f"#SBATCH --array=0-{len(runs) - 1}" in sbatch and "SLURM_ARRAY_TASK_ID" in sbatch
    assert len((root / "commands.txt").read_text().splitlines()) == len(runs)


def test_collector_triage(sweep):
    root, runs = sweep
    assert len(runs) >= 4
    fin, short, nan, blow = runs[:4]
    _write(root / fin.name / "metrics.jsonl", _good_log(fin.steps, 3.25))
    _write(root / short.name / "metrics.jsonl", _good_log(short.steps)[: short.steps // 2])
    bad = _good_log(nan.steps)
    bad[5]["lm_loss"] = float("nan")  # json.dumps writes NaN
    bad[6]["grad_norm"] = None  # null: not available, not a divergence
    _write(root / nan.name / "metrics.jsonl", bad)
    blown = _good_log(blow.steps)
    for rec in blown[-40:]:
        if "lm_loss" in rec:
            rec["lm_loss"] = 9.5
    _write(root / blow.name / "metrics.jsonl", blown)

    rows, statuses = collect([str(root)])
    by_name = {s.name: s for s in statuses}
    assert by_name[fin.name].ok and [r["name"] for r in rows] == [fin.name]
    assert by_name[short.name].status == "unfinished" and "of" in by_name[short.name].reason
    assert by_name[nan.name].status == "diverged" and "nan" in by_name[nan.name].reason
    bad[5]["lm_loss"] = "nan"  # the trainer writes non-finite values as strings
    _write(root / nan.name / "metrics.jsonl", bad)
    assert inspect_run(str(root / nan.name)).status == "diverged"
    bad[5]["lm_loss"] = 7.0
    bad[-1]["valid_lm_loss"] = "inf"
    _write(root / nan.name / "metrics.jsonl", bad)
    assert "held-out loss inf" in inspect_run(str(root / nan.name)).reason
    assert by_name[blow.name].status == "diverged" and "blew up" in by_name[blow.name].reason
    for other in runs[4:]:
        assert (
            by_name[other.name].status == "unfinished"
            and "no metrics" in by_name[other.name].reason
        )
    row = rows[0]
    assert row["loss"] == 3.25 and row["budget"] == 1e13 and row["tokens"] == fin.tokens
    assert row["params"] == fin.params["total"]
    assert row["flops"] == pytest.approx(fin.train_flops_per_token * fin.tokens)

    out = root / "results.csv"
    write_results(rows, str(out))
    res = read_results(str(out))
    assert res.loss.tolist() == [3.25] and res.names == [fin.name]
    with open(out) as f:
        assert list(csv.reader(f))[0][:4] == ["name", "budget", "params", "tokens"]


def test_eval_requirements(sweep):
    root, runs = sweep
    run = runs[0]
    log = _good_log(run.steps)
    _write(root / run.name / "metrics.jsonl", log[:-1])  # no eval record
    assert inspect_run(str(root / run.name)).status == "no_eval"
    early = [*log[:-1], {"iteration": (run.steps + 1) // 2, "kind": "eval", "lm_loss": 3.0}]
    _write(root / run.name / "metrics.jsonl", early)
    st = inspect_run(str(root / run.name))
    assert st.status == "no_eval" and "before the end" in st.reason
    assert inspect_run(str(root / run.name), min_eval_fraction=0.5).ok
    log[-1] = {
        "iteration": run.steps,
        "split": "valid",
        "valid_speech_loss": 2.5,
        "valid_lm_loss": 3.0,
    }
    _write(root / run.name / "metrics.jsonl", log)
    assert inspect_run(str(root / run.name), loss_field="valid_speech_loss").row["loss"] == 2.5
    log[-1]["valid_lm_loss"] = None  # null loss: treated as diverged
    _write(root / run.name / "metrics.jsonl", log)
    assert inspect_run(str(root / run.name)).status == "diverged"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json}\n", r"metrics\.jsonl:3: not valid JSON"),
        ("[1, 2]\n", r"metrics\.jsonl:3: expected a JSON object per line, got list"),
        (
            '{"iteration": "ten", "lm_loss": 2.0}\n',
            r"metrics\.jsonl:3: field 'iteration' must be a number",
        ),
        ('{"lm_loss": 2.0}\n', r"metrics\.jsonl:3: record has no 'iteration' field"),
        (
            '{"iteration": 3, "split": "valid", "acc": 0.5}\n',
            r"metrics\.jsonl:3: eval record has no held-out loss",
        ),
        (
            '{"iteration": 3, "lm_loss": "low"}\n',
            r"metrics\.jsonl:3: field 'lm_loss' must be a number",
        ),
    ],
)
def test_malformed_logs_name_file_and_line(sweep, line, message):
    root, runs = sweep
    path = root / runs[0].name / "metrics.jsonl"
    good = [{"iteration": 1, "lm_loss": 5.0}, {"iteration": 2, "lm_loss": 4.0}]
    _write(path, good, tail=line + json.dumps({"iteration": 4, "lm_loss": 3.0}) + "\n")
    with pytest.raises(ScalingError, match=message):
        collect([str(root)])
    _, statuses = collect([str(root)], on_malformed="skip")
    assert next(s for s in statuses if s.name == runs[0].name).status == "malformed"


def test_partial_last_line_is_ignored(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [{"iteration": 1, "lm_loss": 5.0}], tail='{"iteration": 2, "lm_')
    m = read_metrics(str(path))
    assert len(m.train) == 1 and "partial last line" in m.notes[0]


def test_partial_last_line_note_reaches_the_run_status(sweep):
    root, runs = sweep
    fin = runs[0]
    _write(root / fin.name / "metrics.jsonl", _good_log(fin.steps), tail='{"iteration": 9')
    _, statuses = collect([str(root)])
    by_name = {s.name: s for s in statuses}
    assert by_name[fin.name].ok and "partial last line" in by_name[fin.name].notes[0]
    assert all(not s.notes for s in statuses if s.name != fin.name)


def test_collect_errors(tmp_path):
    with pytest.raises(ScalingError, match="does not exist"):
        collect([str(tmp_path / "nope")])
    with pytest.raises(ScalingError, match="no run_meta.json under"):
        collect([str(tmp_path)])
    run = tmp_path / "r"
    os.makedirs(run)
    (run / schema.RUN_META_FILE).write_text('{"name": "r"}')
    with pytest.raises(ScalingError, match="missing keys"):
        collect([str(tmp_path)])


def test_eval_samples_fix_the_held_out_set_across_batches(tmp_path):
    rule = load_rule("tiny").with_overrides({"vocab_size": 2566}, {"widths": [64, 128, 192, 256]})
    runs = plan([1e13], rule).runs
    assert len({r.batch_size for r in runs}) > 1
    cfg = LaunchConfig(out_dir=str(tmp_path / "sweep"), launcher="python", eval_samples=64)
    write_sweep(runs, cfg)
    for run in runs:
        script = (tmp_path / "sweep" / run.name / schema.LAUNCH_SCRIPT).read_text()
        iters = -(-64 // run.batch_size)
        assert f"--eval-iters {iters}" in script and iters * run.batch_size >= 64
        meta = json.loads((tmp_path / "sweep" / run.name / schema.RUN_META_FILE).read_text())
        assert meta["eval_iters"] == iters
    write_sweep(runs, LaunchConfig(out_dir=str(tmp_path / "plain"), launcher="python"))
    plain = (tmp_path / "plain" / runs[0].name / schema.LAUNCH_SCRIPT).read_text()
    assert "--eval-iters" not in plain


def test_micro_batch_per_data_parallel_rank(tmp_path):
    rule = load_rule("tiny").with_overrides({"vocab_size": 2566}, {"widths": [64, 128, 192, 256]})
    runs = plan([1e13], rule).runs
    cfg = LaunchConfig(out_dir=str(tmp_path / "dp"), launcher="torchrun --nproc-per-node 2",
                       micro_batch_size=0, data_parallel=2)  # fmt: skip
    write_sweep(runs, cfg)
    for run in runs:
        script = (tmp_path / "dp" / run.name / schema.LAUNCH_SCRIPT).read_text()
        assert f"--micro-batch-size {run.batch_size // 2} " in script
    with pytest.raises(ScalingError, match="not divisible by --data-parallel 3"):
        write_sweep(
            runs, LaunchConfig(out_dir=str(tmp_path / "dp3"), micro_batch_size=0, data_parallel=3)
        )


def test_rejected_launch_writes_nothing(tmp_path):
    rule = load_rule("tiny").with_overrides({"vocab_size": 2566}, {"widths": [64, 128, 192, 256]})
    runs = plan([1e13], rule).runs
    bad = [
        (LaunchConfig(out_dir=str(tmp_path / "dp3"), micro_batch_size=0, data_parallel=3),
         "not divisible by --data-parallel 3"),
        (LaunchConfig(out_dir=str(tmp_path / "dp0"), data_parallel=0), "--data-parallel must be >= 1"),
        (LaunchConfig(out_dir=str(tmp_path / "ev0"), eval_samples=0),
         "--eval-samples must be a positive number of sequences"),
        (LaunchConfig(out_dir=str(tmp_path / "evneg"), eval_samples=-4), "--eval-samples must be"),
    ]  # fmt: skip
    for cfg, message in bad:
        with pytest.raises(ScalingError, match=message):
            write_sweep(runs, cfg)
        assert not os.path.exists(cfg.out_dir)
    with pytest.raises(ScalingError, match="duplicate run names"):
        write_sweep([runs[0], runs[0]], LaunchConfig(out_dir=str(tmp_path / "dup")))
    assert not os.path.exists(tmp_path / "dup")
