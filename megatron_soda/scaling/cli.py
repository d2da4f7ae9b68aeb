"""``python -m megatron_soda.scaling {plan,launch,collect,fit,predict,memory}``.

Results go to stdout (JSON or a table), progress and warnings to stderr.  Input errors print one
line ``error: ...`` and exit with status 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence

from megatron_soda.scaling import rules, schema
from megatron_soda.scaling.errors import ScalingError


def _budget(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number (e.g. 3e18)") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"budget must be a positive number of FLOPs, got {text}")
    return v


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budgets",
        type=_budget,
        nargs="+",
        required=True,
        help="training FLOP budgets, e.g. 3e18 1e19",
    )
    p.add_argument(
        "--rule", default="soda", help="soda | tiny | rule.json/.yaml | module:attr | file.py:attr"
    )
    g = p.add_argument_group("rule overrides (apply to any rule)")
    g.add_argument(
        "--vocab-size", type=int, help="unified vocabulary size (default: the rule's; soda 144,644)"
    )
    g.add_argument("--num-codebooks", type=int, help="audio codebooks: sets the vocab (with --text-vocab-size) "
                   "unless --vocab-size is given, and is passed to the trainer by launch")  # fmt: skip
    g.add_argument(
        "--text-vocab-size",
        type=int,
        default=rules.LLAMA3_TEXT_VOCAB,
        help="text ids for the derived vocab (Llama-3)",
    )
    g.add_argument("--seq-length", type=int)
    g.add_argument("--pad-vocab-to", type=int, help="count V padded to a multiple (trainer: 128)")
    g.add_argument(
        "--widths", type=int, nargs="+", help="explicit widths instead of the rule's ladder"
    )
    g.add_argument("--min-width", type=int)
    g.add_argument("--max-width", type=int)
    g.add_argument("--width-step", type=int, help="ladder step (for all budgets)")
    g.add_argument("--head-dim", type=int)
    g.add_argument(
        "--target-steps", type=int, help="batch rule aims at this many steps (soda: 65536)"
    )
    g.add_argument("--min-batch", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--max-lr", type=float)
    g.add_argument("--flop-count", choices=rules.FLOP_COUNTS,
                   help="count that defines the budgets (default levanter: SODA's, head dim = width/heads)")  # fmt: skip
    g.add_argument("--flop-tolerance", type=float)
    g.add_argument("--no-targets", action="store_true",
                   help="leave out the rule's hand-picked target runs (soda: the authors' 7)")  # fmt: skip
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="skip budgets without feasible runs instead of failing",
    )


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="CSV with columns budget, params, tokens, loss")
    p.add_argument("--params-count", choices=("soda", "total", "non_embedding", "params"), default=None,
                   help="N of the fits: soda (all but the input embedding; default: the authors' model "
                   "cards, their fit code is not public: docs/scaling.md section 5), total, non_embedding "
                   "(columns params_<count>), or the params column as written (the default's fallback)")  # fmt: skip
    p.add_argument("--plot-dir", help="where plots go (default: beside the results file)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ci", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--tokens-mode", choices=("flops", "6n"), default="flops",
                   help="D* = C / (training FLOPs/token at N*, from the runs) or C / (6 N*)")  # fmt: skip
    p.add_argument(
        "--require-interior",
        action="store_true",
        help="ignore budgets whose minimum is extrapolated",
    )
    p.add_argument("--no-parametric", action="store_true", help="skip the Chinchilla L(N, D) fit")
    p.add_argument(
        "--parametric-starts",
        type=int,
        default=64,
        help="L-BFGS starts from the best grid points (0: all 5,400)",
    )
    p.add_argument("--out", help="also write the JSON here")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m megatron_soda.scaling", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="shapes, batch, steps, tokens and LR per budget")
    _add_plan_args(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument(
        "--show-dropped", action="store_true", help="list dropped shapes with reasons (stderr)"
    )

    p = sub.add_parser(
        "launch", help="write run dirs, run_meta.json, commands and a Slurm job array"
    )
    _add_plan_args(p)
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--trainer", default="pretrain_soda.py")
    p.add_argument(
        "--launcher",
        default="torchrun --standalone --nproc-per-node=gpu",
        help="command prefix, e.g. python",
    )
    p.add_argument("--data-path", default="${DATA_PATH}")
    p.add_argument("--tokenizer", default="${TOKENIZER}")
    p.add_argument("--micro-batch-size", type=int, default=1,
                   help="0: the whole global batch per data-parallel rank (no accumulation)")  # fmt: skip
    p.add_argument("--data-parallel", type=int, default=1,
                   help="data-parallel ranks the --launcher starts (e.g. torchrun --nproc-per-node 2"
                   " on a CPU): with --micro-batch-size 0 the micro batch is batch / this")  # fmt: skip
    p.add_argument(
        "--model-size", default="135m", help="trainer preset for fields a plan does not set"
    )
    p.add_argument(
        "--eval-interval", type=int, help="default: each run's step count (eval at the end)"
    )
    p.add_argument("--eval-samples", type=int,
                   help="held-out sequences per evaluation, the same for every run (sets "
                   "--eval-iters = ceil(N / batch) per run; default: the trainer's --eval-iters)")  # fmt: skip
    p.add_argument(
        "--omit-flag", action="append", default=[], help="drop a trainer flag (repeatable)"
    )
    p.add_argument("--extra-args", default="", help="appended to every command (one quoted string)")
    p.add_argument("--job-name", default="soda-isoflop")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", dest="time_limit")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument(
        "--execute", action="store_true", help="then run them here, one after another (resumes)"
    )

    p = sub.add_parser("collect", help="finished runs' final held-out loss -> results CSV")
    p.add_argument("paths", nargs="+", help="sweep or run directories (holding run_meta.json)")
    p.add_argument("--out", help="results CSV (default: <first path>/results.csv)")
    p.add_argument(
        "--loss-field",
        help=f"held-out loss field (default: first of {', '.join(schema.EVAL_LOSS_FIELDS)})",
    )
    p.add_argument("--params-count", choices=("total", "soda", "non_embedding"), default="total",
                   help="which parameter count becomes the 'params' column")  # fmt: skip
    p.add_argument("--blowup-ratio", type=float, default=1.25)
    p.add_argument(
        "--min-eval-fraction",
        type=float,
        default=1.0,
        help="last eval must be at >= this x planned steps",
    )
    p.add_argument("--on-malformed", choices=("error", "skip"), default="error")

    p = sub.add_parser(
        "fit", help="IsoFLOP minima, power laws with intervals, parametric fit, plots"
    )
    _add_fit_args(p)

    p = sub.add_parser("predict", help="optimal N, D and loss at larger budgets")
    _add_fit_args(p)
    p.add_argument("--budgets", type=_budget, nargs="*", default=[], help="budgets to predict")
    p.add_argument(
        "--holdout-largest", action="store_true", help="fit without the largest budget and check it"
    )
    from megatron_soda.scaling.memory import add_memory_parser

    add_memory_parser(sub)
    return ap


def _rule_from_args(args: argparse.Namespace):
    from megatron_soda.scaling.rule_loading import load_rule
    from megatron_soda.scaling.rules import soda_vocab_size

    rule = load_rule(args.rule)
    vocab = args.vocab_size
    if vocab is None and args.num_codebooks is not None:
        vocab = soda_vocab_size(args.num_codebooks, text_vocab=args.text_vocab_size)
    recipe = {"vocab_size": vocab, "num_codebooks": args.num_codebooks, "seq_length": args.seq_length,
              "target_steps": args.target_steps, "min_batch": args.min_batch, "pad_vocab_to": args.pad_vocab_to, "max_steps": args.max_steps, "max_lr": args.max_lr,
              "flop_count": args.flop_count, "flop_tolerance": args.flop_tolerance}  # fmt: skip
    ladder = {"widths": args.widths, "min_width": args.min_width, "max_width": args.max_width,
              "head_dim": args.head_dim}  # fmt: skip
    if args.width_step is not None:
        ladder.update(step=args.width_step, large_step=args.width_step)
    if args.no_targets:
        rule = dataclasses.replace(rule, targets=())
    return rule.with_overrides(recipe, {k: v for k, v in ladder.items() if v is not None})


def _plan(args: argparse.Namespace):
    from megatron_soda.scaling.planner import plan

    p = plan(args.budgets, _rule_from_args(args), allow_empty=args.allow_empty)
    if p.dropped:
        if getattr(args, "show_dropped", False):
            for d in p.dropped:
                print(
                    f"dropped: budget {d.budget:.3g} width {d.width}: {d.reason}", file=sys.stderr
                )
        else:
            print(
                f"note: {len(p.dropped)} infeasible shape(s) dropped (--show-dropped lists them)",
                file=sys.stderr,
            )
    return p


def cmd_plan(args: argparse.Namespace) -> int:
    from megatron_soda.scaling.planner import format_table

    p = _plan(args)
    records = [r.to_dict() for r in p.runs]
    if args.format == "json":
        print(json.dumps(records, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
        print(buf.getvalue(), end="")
    else:
        print("params = total parameters (input embedding, layers, untied output head); "
              "params_soda = all but the input embedding (SODA's size names)")  # fmt: skip
        print(format_table(p.runs))
        total = sum(r.achieved_flops for r in p.runs)
        print(f"{len(p.runs)} runs, {total:.3g} training FLOPs in total")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from megatron_soda.scaling.launcher import LaunchConfig, run_local, write_sweep

    p = _plan(args)
    cfg = LaunchConfig(
        out_dir=args.out, trainer=args.trainer, launcher=args.launcher, data_path=args.data_path or None,
        tokenizer=args.tokenizer or None, num_codebooks=args.num_codebooks,
        micro_batch_size=args.micro_batch_size, data_parallel=args.data_parallel, model_size=args.model_size or None,
        eval_interval=args.eval_interval, eval_samples=args.eval_samples, extra_args=tuple(shlex.split(args.extra_args)),
        omit_flags=tuple(args.omit_flag), job_name=args.job_name, partition=args.partition,
        account=args.account, time_limit=args.time_limit, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task, max_concurrent=args.max_concurrent,
    )  # fmt: skip
    summary = write_sweep(p.runs, cfg)
    print(json.dumps(summary, indent=2))
    if args.execute:
        done = run_local([os.path.join(summary["out_dir"], r.name) for r in p.runs])
        failed = [d for d, rc in done if rc != 0]
        if failed:
            print(f"error: run failed: {failed[0]} (see its train.log)", file=sys.stderr)
            return 1
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from megatron_soda.scaling.collector import collect
    from megatron_soda.scaling.results import write_results

    rows, statuses = collect(args.paths, loss_field=args.loss_field, params_count=args.params_count,
                             blowup_ratio=args.blowup_ratio, min_eval_fraction=args.min_eval_fraction,
                             on_malformed=args.on_malformed)  # fmt: skip
    skipped = [
        {"name": s.name, "status": s.status, "reason": s.reason} for s in statuses if not s.ok
    ]
    for s in statuses:
        for note in s.notes:
            print(f"note: {note}", file=sys.stderr)
    for s in skipped:
        print(f"skipped {s['name']}: {s['status']}: {s['reason']}", file=sys.stderr)
    if not rows:
        raise ScalingError(f"no finished runs among {len(statuses)} found; nothing to write")
    out = args.out or os.path.join(
        args.paths[0] if os.path.isdir(args.paths[0]) else ".", "results.csv"
    )
    write_results(rows, out)
    print(json.dumps({"results": out, "finished": len(rows), "skipped": skipped}, indent=2))
    return 0


def _fit_kwargs(args: argparse.Namespace) -> dict:
    if args.n_boot < 0:
        raise ScalingError("--n-boot must be >= 0")
    return dict(tokens_mode=args.tokens_mode, n_boot=args.n_boot, seed=args.seed, ci=args.ci,
                require_interior=args.require_interior, parametric=not args.no_parametric,
                parametric_starts=args.parametric_starts or None)  # fmt: skip


def _emit(payload: dict, out: str | None) -> None:
    text = json.dumps(_clean(payload), indent=2)
    print(text)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def _read_results(args: argparse.Namespace):
    """The results table with N from the --params-count column (warns on the default's fallback)."""
    from megatron_soda.scaling.results import read_results

    res = read_results(args.results, args.params_count)
    if args.params_count is None and res.params_column == "params":
        print("warning: no complete params_soda column: N is the 'params' column as written "
              "(choose with --params-count)", file=sys.stderr)  # fmt: skip
    return res


def cmd_fit(args: argparse.Namespace) -> int:
    from megatron_soda.scaling.fitter import fit_scaling

    res = _read_results(args)
    fit = fit_scaling(res, **_fit_kwargs(args))
    for w in fit.warnings:
        print(f"warning: {w}", file=sys.stderr)
    payload = fit.to_dict()
    payload["results"] = args.results
    payload["params_column"] = res.params_column
    if not args.no_plots:
        from megatron_soda.scaling.plots import plot_all

        payload["plots"] = plot_all(
            res, fit, args.plot_dir or os.path.dirname(os.path.abspath(args.results))
        )
    _emit(payload, args.out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from megatron_soda.scaling.fitter import fit_scaling, holdout_check

    if not args.budgets and not args.holdout_largest:
        raise ScalingError("predict needs --budgets and/or --holdout-largest")
    res = _read_results(args)
    kwargs = _fit_kwargs(args)
    fit = fit_scaling(res, **kwargs)
    payload: dict = {"alpha_n": fit.n_law.exponent, "beta_d": fit.d_law.exponent,
                     "params_column": res.params_column,
                     "predictions": [fit.predict(b) for b in args.budgets]}  # fmt: skip
    heldout = None
    if args.holdout_largest:
        if len(res.budgets) < 3:
            raise ScalingError("--holdout-largest needs >= 3 budgets (2 to fit, 1 to check)")
        heldout, fit = holdout_check(res, **kwargs)  # the plot then shows the held-out fit
        payload["holdout"] = heldout
    if not args.no_plots:
        from megatron_soda.scaling.plots import plot_predicted_vs_achieved

        out_dir = args.plot_dir or os.path.dirname(os.path.abspath(args.results))
        payload["plots"] = plot_predicted_vs_achieved(res, fit, out_dir, heldout)
    _emit(payload, args.out)
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from megatron_soda.scaling.memory import run_memory_command

    try:
        print(run_memory_command(args))
    except ValueError as e:
        raise ScalingError(str(e)) from None
    return 0


def _clean(obj):
    """NaN/inf -> null so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


COMMANDS = {
    "plan": cmd_plan,
    "launch": cmd_launch,
    "collect": cmd_collect,
    "fit": cmd_fit,
    "predict": cmd_predict,
    "memory": cmd_memory,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ScalingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
