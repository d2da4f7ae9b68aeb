"""Markdown summary of the small CPU IsoFLOP study: runs, per-budget optima, fitted laws.

    python docs/scaling_study/summarize.py RUNS_DIR OUT_DIR [--speech-stats STATS_JSON]

Reads RUNS_DIR/*/run_meta.json, metrics.jsonl and train.log (run wall time = the log's birth to
its last write) and OUT_DIR/{results.csv,fit.json,predict.json}, written by run_study.sh.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os


def _fmt_ci(ci: list | None, spec: str = ".3f") -> str:
    if not ci or any(v is None or not math.isfinite(v) for v in ci):
        return "n/a"
    return f"[{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _wall(path: str) -> float | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    born = getattr(st, "st_birthtime", None)
    if born is None:
        import subprocess

        out = subprocess.run(["stat", "-c", "%W", path], capture_output=True, text=True).stdout
        born = float(out.strip() or 0)
    return st.st_mtime - born if born else None


def _records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_rows(runs_dir: str, speech_tokens: int | None) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(runs_dir)):
        meta_path = os.path.join(runs_dir, name, "run_meta.json")
        if not os.path.isfile(meta_path):
            continue
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        metrics = os.path.join(runs_dir, name, "metrics.jsonl")
        recs = _records(metrics) if os.path.isfile(metrics) else []
        valid = [r for r in recs if r.get("split") == "valid"]
        train = [r for r in recs if r.get("split") == "train"]
        tps = [r["tokens_per_sec"] for r in train if r.get("tokens_per_sec")]
        rows.append({
            "name": name, "budget": meta["budget"], "width": meta["width"],
            "params": meta["params_total"], "tokens": meta["tokens"], "steps": meta["steps"],
            "lr": meta["lr"],
            "epochs": meta["tokens"] * 0.95 / speech_tokens if speech_tokens else None,
            "valid_audio": valid[-1]["loss_audio"] if valid else None,
            "valid_lm": valid[-1]["lm_loss"] if valid else None,
            "train_lm": train[-1]["lm_loss"] if train else None,
            "tokens_per_sec": sorted(tps)[len(tps) // 2] if tps else None,
            "wall_s": _wall(os.path.join(runs_dir, name, "train.log")),
        })  # fmt: skip
    rows.sort(key=lambda r: (r["budget"], r["params"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--speech-stats", help="speech_train.stats.json (default: RUNS/../shards/)")
    args = ap.parse_args()
    stats = args.speech_stats or os.path.join(
        os.path.dirname(os.path.abspath(args.runs_dir)), "shards", "speech_train.stats.json"
    )
    speech_tokens = None
    if os.path.isfile(stats):
        with open(stats, encoding="utf-8") as f:
            speech_tokens = json.load(f)["total_tokens"]
    rows = run_rows(args.runs_dir, speech_tokens)
    with open(os.path.join(args.out_dir, "fit.json"), encoding="utf-8") as f:
        fit = json.load(f)
    pred_path = os.path.join(args.out_dir, "predict.json")
    pred = None
    if os.path.isfile(pred_path):
        with open(pred_path, encoding="utf-8") as f:
            pred = json.load(f)
    with open(os.path.join(args.out_dir, "results.csv"), encoding="utf-8") as f:
        used = {r["name"] for r in csv.DictReader(f)}

    out = ["## Runs", "",
           "| budget (FLOPs) | width | params (total) | tokens | epochs of speech shard | steps | LR "
           "| held-out speech NLL | held-out NLL, all tokens | final train NLL | tokens/s | wall (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    total_wall = 0.0
    for r in rows:
        total_wall += r["wall_s"] or 0.0

        def f(v, spec):
            return "-" if v is None else format(v, spec)

        flag = "" if r["name"] in used else " (not used)"
        out.append(
            f"| {r['budget']:.0e} | {r['width']} | {r['params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M "
            f"| {f(r['epochs'], '.2f')} | {r['steps']} | {r['lr']:.4f} | {f(r['valid_audio'], '.4f')}{flag} "
            f"| {f(r['valid_lm'], '.4f')} | {f(r['train_lm'], '.4f')} | {f(r['tokens_per_sec'], '.0f')} "
            f"| {f(r['wall_s'], '.0f')} |"
        )
    out += ["", f"Sum of run wall times: {total_wall / 60:.1f} min over {len(rows)} runs.", ""]

    out += ["## Per-budget optima (parabola of held-out speech NLL vs ln N)", "",
            "| budget (FLOPs) | runs | N* (params) | D* (tokens) | D*/N* | L* (nats) | interior | note |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o in fit["optima"]:
        n, d, loss = o.get("params_opt"), o.get("tokens_opt"), o.get("loss_opt")
        ok = n is not None and d is not None
        out.append(
            f"| {o['budget']:.0e} | {o['n_runs']} | {n / 1e6:.3f}M | {d / 1e6:.3f}M | {d / n:.2f} "
            f"| {loss:.4f} | {o['interior']} | {o.get('reason') or ''} |"
            if ok
            else f"| {o['budget']:.0e} | {o['n_runs']} | - | - | - | - | - | {o.get('reason')} |"
        )
    level = round(100 * fit["ci"])
    out += ["", "## Fitted laws", "",
            f"| quantity | this study | {level}% bootstrap interval | SODA (spec section 5) |",
            "|---|---|---|---|",
            f"| alpha_n (N* ~ C^alpha_n) | {fit['alpha_n']:.3f} | {_fmt_ci(fit['alpha_n_ci'])} "
            f"| {fit['paper']['alpha_n']} |",
            f"| beta_d (D* ~ C^beta_d) | {fit['beta_d']:.3f} | {_fmt_ci(fit['beta_d_ci'])} "
            f"| {fit['paper']['beta_d']} |",
            f"| gamma (L* = E + k C^-gamma) | {fit['gamma_loss']:.3f} | {_fmt_ci(fit['gamma_loss_ci'])} | - |"]  # fmt: skip
    par = fit.get("parametric")
    if par:
        out += [
            "",
            f"Chinchilla parametric fit L(N, D) = E + A/N^a + B/D^b on all runs: E = {par['E']:.3f}, "
            f"a = {par['alpha']:.3f}, b = {par['beta']:.3f}; implied N* ~ C^{par['implied_alpha_n']:.3f}, "
            f"D* ~ C^{par['implied_beta_d']:.3f}.",
        ]
    for w in fit.get("warnings") or []:
        out.append(f"\nwarning from fit: {w}")
    if pred:
        out += ["", "## Predictions (power laws; intervals from the bootstrap)", "",
                "| budget (FLOPs) | N* | D* | L* |", "|---|---|---|---|"]  # fmt: skip
        for p in pred.get("predictions", []):
            out.append(
                f"| {p['budget']:.0e} | {p['params_opt'] / 1e6:.2f}M {_fmt_ci([v / 1e6 for v in p['params_opt_ci']], '.2f')} "
                f"| {p['tokens_opt'] / 1e6:.2f}M {_fmt_ci([v / 1e6 for v in p['tokens_opt_ci']], '.2f')} "
                f"| {p['loss_opt']:.3f} {_fmt_ci(p['loss_opt_ci'])} |"
            )
        h = pred.get("holdout")
        if h:
            p, a = h["predicted"], h["achieved"]
            an = a.get("params_opt")
            out += [
                "",
                f"Hold-out check: fitted on the other budgets, predicted at {h['budget']:.0e}: "
                f"N* = {p['params_opt'] / 1e6:.3f}M {_fmt_ci([v / 1e6 for v in p['params_opt_ci']])}, "
                f"L* = {p['loss_opt']:.4f} {_fmt_ci(p['loss_opt_ci'], '.4f')}; achieved there: "
                + (
                    f"N* = {an / 1e6:.3f}M, L* = {a['loss_opt']:.4f}"
                    if an
                    else f"no parabola minimum ({a.get('reason')})"
                )
                + f", best run {h['achieved_best_run_loss']:.4f}.",
            ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
