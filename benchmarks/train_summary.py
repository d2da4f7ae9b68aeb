"""The summary of bench_train_cpu.py: per model and kind of run, tokens/s, model GFLOP/s,
tokens per CPU-second and the ratios against the baseline kind, as JSON and as a table.

GFLOP/s use the *true* training FLOPs per token (actual head dim, padded vocabulary: what the
model computes, as the trainer's TFLOP/s and MFU); the paper's count (Levanter's, head dim =
hidden / heads) is recorded beside it.  See :func:`megatron_soda.scaling.flops.run_flop_counts`."""

from __future__ import annotations

import statistics
from typing import Any


def stats(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_range(s: dict[str, float], spec: str = ".0f") -> str:
    """``median (min-max)`` of a :func:`stats` dict."""
    return f"{s['median']:{spec}} ({s['min']:{spec}}-{s['max']:{spec}})"


def summarize(
    model: str, d: dict, per_kind: dict[str, list[dict]], baseline: str, vocab_size: int
) -> dict:
    """One model's summary: its config, FLOPs per token and per kind of run the statistics.
    ``vocab_size``: the unpadded vocabulary of the tokenizer the runs used."""
    from megatron_soda.models import preset
    from megatron_soda.scaling.flops import run_flop_counts

    counts = run_flop_counts(preset(model).with_overrides(seq_length=d["seq_length"], vocab_size=vocab_size))
    fpt = counts["train_flops_per_token"]  # true count: the gflops below
    out: dict[str, Any] = {"config": d, "training_flops_per_token": fpt, "flop_count": "true (actual head dim)",
                           "paper_training_flops_per_token": counts["paper_train_flops_per_token"], "kinds": {}}
    for kind, runs in per_kind.items():
        tps = [r["tokens_per_sec"] for r in runs]
        entry: dict[str, Any] = {
            "tokens_per_sec": stats(tps),
            "per_repeat": tps,
            "others_cores": [round(r["others_cores"], 2) for r in runs],
            "gflops": stats([t * fpt / 1e9 for t in tps]),
        }
        if runs and "cpu_s" in runs[0]:
            per_cpu = [r["tokens_per_step"] / statistics.median(r["cpu_s"]) for r in runs]
            entry["tokens_per_cpu_second"] = stats(per_cpu)
            if baseline in per_kind and kind != baseline and "cpu_s" in per_kind[baseline][0]:
                base_cpu = [
                    b["tokens_per_step"] / statistics.median(b["cpu_s"]) for b in per_kind[baseline]
                ]
                entry["cpu_ratio_vs_" + baseline] = stats(
                    [x / y for x, y in zip(per_cpu, base_cpu)]
                )
        if baseline in per_kind and kind != baseline:
            ratios = [
                r["tokens_per_sec"] / b["tokens_per_sec"] for r, b in zip(runs, per_kind[baseline])
            ]
            entry["ratio_vs_" + baseline] = stats(ratios) | {"per_repeat": ratios}
        if runs and "fetch_s" in runs[0]:
            fetch = [statistics.median(r["fetch_s"]) for r in runs]
            make = [statistics.median(r["make_batch_s"]) for r in runs]
            frac = [(f + m) / statistics.median(r["step_s"]) for f, m, r in zip(fetch, make, runs)]
            entry["data_ms_per_step"] = {
                "fetch": stats([1e3 * x for x in fetch]),
                "make_batch": stats([1e3 * x for x in make]),
            }
            entry["data_over_step"] = stats(frac)
        out["kinds"][kind] = entry
    return out


def print_summary(summary: dict) -> None:
    """The summaries as a Markdown table, then the data pipeline's share of the step."""
    print(
        "\n| model | run | tokens/s median (min-max) | model GFLOP/s (true count) | vs baseline (min-max) | "
        "tokens per CPU-second | vs baseline, CPU time | others used (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, s in summary.items():
        if model.startswith("data_"):
            continue
        c = s["config"]
        for kind, e in s["kinds"].items():
            ratio = next((v for k, v in e.items() if k.startswith("ratio_vs_")), None)
            cpu_ratio = next((v for k, v in e.items() if k.startswith("cpu_ratio_vs_")), None)
            per_cpu = e.get("tokens_per_cpu_second")
            print(
                f"| {model} (seq {c['seq_length']}, {c['global_batch_size']}x{c['seq_length']} tokens/step) | "
                f"{kind} | {fmt_range(e['tokens_per_sec'])} | {e['gflops']['median']:.1f} | "
                f"{'-' if ratio is None else fmt_range(ratio, '.2f')} | "
                f"{'-' if per_cpu is None else fmt_range(per_cpu)} | "
                f"{'-' if cpu_ratio is None else fmt_range(cpu_ratio, '.2f')} | {e['others_cores']} |"
            )
    for model, s in summary.items():
        if model.startswith("data_"):
            continue
        e = s["kinds"].get("megatron")
        if e and "data_over_step" in e:
            print(
                f"{model}: data pipeline per step: fetch {fmt_range(e['data_ms_per_step']['fetch'], '.1f')} ms + "
                f"make_batch {fmt_range(e['data_ms_per_step']['make_batch'], '.1f')} ms = "
                f"{100 * e['data_over_step']['median']:.2f}% of the step "
                f"({100 * e['data_over_step']['min']:.2f}-{100 * e['data_over_step']['max']:.2f}%)"
            )
