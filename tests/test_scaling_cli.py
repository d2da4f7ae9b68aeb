"""``python -m megatron_soda.scaling``: the interface contract, error exits, plots, end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_soda.scaling.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_TRAINER = """
import argparse, json, math
p = argparse.ArgumentParser()
for f in ("--hidden-size", "--num-layers", "--ffn-hidden-size", "--global-batch-size", "--train-iters",
          "--seq-length"):
    p.add_argument(f, type=int)
p.add_argument("--metrics-jsonl")
a, _ = p.parse_known_args()
n = 12 * a.num_layers * a.hidden_size ** 2 + 2 * 2566 * a.hidden_size
d = a.train_iters * a.global_batch_size * a.seq_length
final = 1.7 + 400 / n ** 0.34 + 400 / d ** 0.28
with open(a.metrics_jsonl, "w") as f:
    for i in range(1, a.train_iters + 1, 50):
        f.write(json.dumps({"iteration": i, "lm_loss": final + 3 / i, "lr": 1e-3, "grad_norm": 1.0}) + "\\n")
    f.write(json.dumps({"iteration": a.train_iters, "lm_loss": final, "grad_norm": 1.0}) + "\\n")
    f.write(json.dumps({"iteration": a.train_iters, "split": "valid", "valid_lm_loss": final}) + "\\n")
"""


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write_csv(path, rows, columns=("budget", "params", "tokens", "loss")) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return str(path)


def synthetic_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for c in (1e18, 3e18, 1e19, 3e19, 1e20):
        n_opt = 1.34 * (c / 6) ** 0.4516
        for f in np.geomspace(0.2, 5, 7):
            n = n_opt * f
            d = c / (6 * n)
            loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * math.exp(rng.normal(0, 0.003))
            rows.append({"budget": c, "params": n, "tokens": d, "loss": loss})
    return rows


def test_plan_json_contract_via_python_m():
    cmd = [sys.executable, "-m", "megatron_soda.scaling", "plan", "--budgets", "3e18", "1e19", "--rule", "soda",
           "--format", "json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    runs = json.loads(proc.stdout)
    keys = {
        "budget",
        "width",
        "layers",
        "heads",
        "ffn",
        "params",
        "batch_size",
        "seq_length",
        "steps",
        "tokens",
        "lr",
    }
    assert runs and all(keys <= set(r) for r in runs)
    anchor = next(r for r in runs if r["budget"] == 3e18 and r["width"] == 768)
    assert (anchor["layers"], anchor["heads"], anchor["ffn"]) == (8, 6, 3072)
    assert (anchor["batch_size"], anchor["seq_length"], anchor["steps"]) == (8, 4096, 64326)
    assert anchor["params"] == 297_685_760 and anchor["tokens"] == 2_107_834_368
    assert {r["budget"] for r in runs} == {3e18, 1e19}


def test_plan_table_and_tiny_options(capsys):
    rc, out, _ = run_cli(capsys, "plan", "--budgets", "1e13", "--rule", "tiny", "--vocab-size", "16900", "--pad-vocab-to", "1",
                         "--seq-length", "256", "--widths", "64", "128", "--format", "csv")  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(out.splitlines()))
    assert (
        rows
        and {r["vocab_size"] for r in rows} == {"16900"}
        and {r["seq_length"] for r in rows} == {"256"}
    )
    rc, out, _ = run_cli(capsys, "plan", "--budgets", "3e18", "--num-codebooks", "1")
    assert rc == 0 and "params_soda" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "--budgets", "1e12"], "no feasible run for rule 'soda' at budget(s) 1e+12"),
        (["plan", "--budgets", "3e18", "--rule", "nosuch"], "unknown rule 'nosuch'"),
        (
            ["plan", "--budgets", "3e18", "--rule", "missing.yaml"],
            "rule file missing.yaml does not exist",
        ),
        (["fit", "--results", "nowhere.csv"], "results file nowhere.csv does not exist"),
        (["predict", "--results", "x.csv"], "predict needs --budgets and/or --holdout-largest"),
    ],
)
def test_input_errors_exit_nonzero_with_one_line(capsys, argv, message):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "rows, columns, message",
    [
        ([], ("budget", "params", "tokens", "loss"), "the results table is empty"),
        ([{"budget": 1e18, "params": 1e8, "tokens": 1e9}], ("budget", "params", "tokens"), "missing column(s) loss"),
        ([{"budget": 1e18, "params": 1e8, "tokens": 1e9, "loss": "nan"}], ("budget", "params", "tokens", "loss"),
         "results.csv:2: column 'loss' is not finite"),
        ([{"budget": 1e18, "params": 1e8, "tokens": 1e9, "loss": "inf"}], ("budget", "params", "tokens", "loss"),
         "is not finite"),
        ([{"budget": 1e18, "params": "big", "tokens": 1e9, "loss": 3}], ("budget", "params", "tokens", "loss"),
         "column 'params' is not a number"),
    ],
)  # fmt: skip
def test_bad_results_tables(capsys, tmp_path, rows, columns, message):
    path = write_csv(tmp_path / "results.csv", rows, columns)
    rc, out, err = run_cli(capsys, "fit", "--results", path)
    assert (
        rc == 2
        and out == ""
        and err.startswith("error: ")
        and message in err
        and err.count("\n") == 1
    )


def test_fit_writes_json_and_plots(capsys, tmp_path):
    path = write_csv(tmp_path / "results.csv", synthetic_rows())
    rc, out, err = run_cli(
        capsys, "fit", "--results", path, "--n-boot", "100", "--parametric-starts", "8"
    )
    assert rc == 0, err
    res = json.loads(out)
    assert res["alpha_n"] == pytest.approx(0.4516, abs=0.03) and res["beta_d"] == pytest.approx(
        0.5484, abs=0.03
    )
    assert len(res["alpha_n_ci"]) == 2 and len(res["beta_d_ci"]) == 2
    assert len(res["optima"]) == 5 and res["paper"] == {"alpha_n": 0.367, "beta_d": 0.579}
    for stem in ("isoflop", "frontiers", "predicted_vs_achieved"):
        for ext in ("png", "svg"):
            p = tmp_path / f"{stem}.{ext}"
            assert p.stat().st_size > 1000 and str(p) in res["plots"]
    assert (tmp_path / "isoflop.png").read_bytes()[:4] == b"\x89PNG"

    plots = tmp_path / "plots"
    rc, out, _ = run_cli(capsys, "predict", "--results", path, "--budgets", "1e21", "--holdout-largest",
                         "--n-boot", "50", "--no-parametric", "--plot-dir", str(plots))  # fmt: skip
    pred = json.loads(out)
    assert rc == 0 and pred["holdout"]["budget"] == 1e20
    assert (
        pred["predictions"][0]["params_opt"] > 0 and (plots / "predicted_vs_achieved.svg").exists()
    )


def test_end_to_end_launch_execute_collect_fit(capsys, tmp_path):
    trainer = tmp_path / "fake_pretrain_soda.py"
    trainer.write_text(FAKE_TRAINER)
    sweep = tmp_path / "sweep"
    rc, out, err = run_cli(capsys, "launch", "--budgets", "3e12", "1e13", "--rule", "tiny", "--vocab-size", "2566",
                           "--widths", "64", "128", "192", "--out", str(sweep), "--launcher", sys.executable,
                           "--trainer", str(trainer), "--micro-batch-size", "0", "--data-path", "shards/x",
                           "--tokenizer", "tok.json", "--execute")  # fmt: skip
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "collect", str(sweep))
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["finished"] == 6 and summary["skipped"] == []
    rc, out, err = run_cli(capsys, "fit", "--results", summary["results"], "--n-boot", "50", "--no-parametric",
                           "--plot-dir", str(tmp_path / "plots"))  # fmt: skip
    assert rc == 0, err
    assert math.isfinite(json.loads(out)["alpha_n"])
    # a second --execute skips the finished runs
    rc, _, err = run_cli(capsys, "launch", "--budgets", "3e12", "--rule", "tiny", "--vocab-size", "2566",
                         "--widths", "64", "128", "192", "--out", str(sweep), "--launcher", sys.executable,
                         "--trainer", str(trainer), "--data-path", "d", "--tokenizer", "t", "--execute")  # fmt: skip
    assert rc == 0 and err.count("already finished") == 3


def test_blend_from_the_environment_splits_into_words(tmp_path):
    """``--data-path ${DATA_PATH}`` with DATA_PATH="0.95 A 0.05 B" must reach the trainer as
    four arguments (a blend), while other ``$VAR`` values stay one argument each."""
    import subprocess

    from megatron_soda.scaling.launcher import shell_join

    line = shell_join(["--data-path", "${DATA_PATH}", "--tokenizer", "${TOKENIZER}"])
    out = subprocess.run(
        ["bash", "-c", f'printf "%s\\n" {line}'],
        env={"DATA_PATH": "0.95 A 0.05 B", "TOKENIZER": "/p/my tok.json", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == ["--data-path", "0.95", "A", "0.05", "B", "--tokenizer", "/p/my tok.json"]


def test_fit_params_count_flag(capsys, tmp_path):
    """N of the fits: params_soda by default, another column on request, 'params' as a fallback."""
    rows = [
        dict(r, params_soda=r["params"] / 2, params_total=r["params"]) for r in synthetic_rows()
    ]
    cols = ("budget", "params", "tokens", "loss", "params_soda", "params_total")
    path = write_csv(tmp_path / "results.csv", rows, cols)
    fast = ("--n-boot", "0", "--no-parametric", "--no-plots")
    fits = {}
    for extra in ((), ("--params-count", "total"), ("--params-count", "params")):
        rc, out, err = run_cli(capsys, "fit", "--results", path, *fast, *extra)
        assert rc == 0 and "no complete params_soda" not in err, err
        fits[extra[-1] if extra else "default"] = json.loads(out)
    assert fits["default"]["params_column"] == "params_soda"
    assert (fits["total"]["params_column"], fits["params"]["params_column"]) == (
        "params_total",
        "params",
    )
    # N halved: every optimum halves, the exponent stays
    for a, b in zip(fits["default"]["optima"], fits["total"]["optima"]):
        assert a["params_opt"] == pytest.approx(b["params_opt"] / 2, rel=1e-9)
    assert fits["default"]["alpha_n"] == pytest.approx(fits["total"]["alpha_n"], abs=1e-9)

    rc, out, err = run_cli(
        capsys, "fit", "--results", path, *fast, "--params-count", "non_embedding"
    )
    assert rc == 2 and "missing column(s) params_non_embedding" in err and err.count("\n") == 1

    plain = write_csv(tmp_path / "plain.csv", synthetic_rows())
    rc, out, err = run_cli(capsys, "predict", "--results", plain, "--budgets", "1e21", *fast)
    assert rc == 0 and json.loads(out)["params_column"] == "params"
    assert "warning: no complete params_soda column" in err
