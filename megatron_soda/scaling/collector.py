"""Collect finished runs of a sweep into one results table.

Each run directory holds ``run_meta.json`` (written by the launcher: budget, shape, parameter
counts, planned steps and tokens) and the trainer's metrics JSONL (one JSON object per line).
Field names are in :mod:`megatron_soda.scaling.schema`.

A run is used only when it is *finished* (it reached its planned steps and has a held-out loss
from the end of training).  Others are skipped with a reason:

- ``unfinished``: no metrics yet, or the last iteration is short of the planned steps;
- ``diverged``: a non-finite training loss / grad norm / held-out loss, or a loss blow-up
  (final smoothed training loss > ``blowup_ratio`` x its best smoothed value);
- ``no_eval``: no held-out record, or the last one is from before the end of training;
- ``malformed``: a bad log, only with ``on_malformed="skip"`` (default: raise, naming file:line).

A final line without its newline that does not parse is taken as a write in progress and ignored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from megatron_soda.scaling import schema
from megatron_soda.scaling.errors import ScalingError

PARAM_COUNTS = {"total": schema.META_PARAMS_TOTAL, "soda": schema.META_PARAMS_SODA,
                "non_embedding": schema.META_PARAMS_NON_EMBEDDING}  # fmt: skip
_REQUIRED_META = (schema.META_NAME, schema.META_BUDGET, schema.META_PLANNED_STEPS,
                  schema.META_PLANNED_TOKENS, schema.META_PARAMS_TOTAL)  # fmt: skip


_NON_FINITE = {"nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


@dataclass
class Metrics:
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunStatus:
    run_dir: str
    name: str
    status: str  # finished | unfinished | diverged | no_eval | malformed
    reason: str = ""
    row: dict | None = None
    notes: list[str] = field(default_factory=list)  # from reading the metrics (not problems)

    @property
    def ok(self) -> bool:
        return self.status == "finished"


def is_eval_record(rec: dict) -> bool:
    return rec.get(schema.SPLIT) in schema.EVAL_SPLITS or rec.get(schema.KIND) in schema.EVAL_KINDS


def read_metrics(path: str, loss_field: str | None = None) -> Metrics:
    """Parse a metrics JSONL; raise ScalingError naming ``file:line`` on a malformed record."""
    out = Metrics()
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not line.endswith("\n"):
                out.notes.append(f"{where}: ignored a partial last line (write in progress?)")
                continue
            raise ScalingError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ScalingError(
                f"{where}: expected a JSON object per line, got {type(rec).__name__}"
            )
        if is_eval_record(rec):
            _number(rec, schema.ITERATION, where, required=True, integer=True)
            key = _eval_loss_key(rec, loss_field)
            if key is None:
                wanted = loss_field or " or ".join(schema.EVAL_LOSS_FIELDS)
                raise ScalingError(f"{where}: eval record has no held-out loss field ({wanted})")
            rec["_loss"] = _number(rec, key, where, required=True)
            out.eval.append(rec)
        elif schema.ITERATION in rec or schema.TRAIN_LOSS in rec:
            _number(rec, schema.ITERATION, where, required=True, integer=True)
            for key in schema.FINITE_TRAIN_FIELDS:
                _number(rec, key, where, required=False)
            out.train.append(rec)
        # other records (config headers, summaries) are ignored
    return out


def inspect_run(
    run_dir: str,
    *,
    loss_field: str | None = None,
    params_count: str = "total",
    blowup_ratio: float = 1.25,
    min_eval_fraction: float = 1.0,
    on_malformed: str = "error",
) -> RunStatus:
    """Classify one run directory and, when finished, build its results row."""
    meta = read_run_meta(run_dir)
    name = str(meta[schema.META_NAME])
    planned = int(meta[schema.META_PLANNED_STEPS])
    metrics_path = meta.get(schema.META_METRICS, schema.METRICS_FILE)
    if not os.path.isabs(metrics_path):
        metrics_path = os.path.join(run_dir, metrics_path)
    if not os.path.isfile(metrics_path):
        return RunStatus(
            run_dir, name, "unfinished", f"no metrics file {metrics_path} (not started?)"
        )
    try:
        m = read_metrics(metrics_path, loss_field)
    except ScalingError as e:
        if on_malformed == "skip":
            return RunStatus(run_dir, name, "malformed", str(e))
        raise

    def status(kind: str, reason: str = "", row: dict | None = None) -> RunStatus:
        return RunStatus(run_dir, name, kind, reason, row, m.notes)

    for rec in m.train:
        for key in schema.FINITE_TRAIN_FIELDS:
            v = rec.get(key)
            if v is not None and not math.isfinite(v):
                return status("diverged", f"{key} = {v} at iteration {rec[schema.ITERATION]}")
    for rec in m.eval:
        if rec["_loss"] is None or not math.isfinite(rec["_loss"]):
            return status(
                "diverged", f"held-out loss {rec['_loss']} at iteration {rec[schema.ITERATION]}"
            )
    losses = [r[schema.TRAIN_LOSS] for r in m.train if r.get(schema.TRAIN_LOSS) is not None]
    if losses:
        smooth = _moving_mean(losses, max(1, min(20, len(losses) // 10)))
        if smooth[-1] > blowup_ratio * min(smooth):
            return status("diverged",
                          f"loss blew up: final {smooth[-1]:.4g} > {blowup_ratio:g} x best {min(smooth):.4g}")  # fmt: skip
    last = max((int(r[schema.ITERATION]) for r in (*m.train, *m.eval)), default=0)
    if last < planned:
        return status("unfinished", f"reached iteration {last} of {planned}")
    if not m.eval:
        return status("no_eval", "no held-out loss record "
                      f"(eval records carry '{schema.SPLIT}': 'valid' or '{schema.KIND}': 'eval')")  # fmt: skip
    final = max(m.eval, key=lambda r: int(r[schema.ITERATION]))
    if int(final[schema.ITERATION]) < min_eval_fraction * planned:
        return status("no_eval",
                      f"last held-out eval at iteration {final[schema.ITERATION]}, before the end ({planned})")  # fmt: skip
    return status("finished", "", _row(meta, final["_loss"], losses, final, params_count))


def collect(paths: Sequence[str], **kwargs: object) -> tuple[list[dict], list[RunStatus]]:
    """Find every run under ``paths`` (dirs holding run_meta.json); return rows and statuses."""
    run_dirs = sorted(set(find_run_dirs(paths)))
    statuses = [inspect_run(d, **kwargs) for d in run_dirs]  # type: ignore[arg-type]
    return [s.row for s in statuses if s.ok and s.row is not None], statuses


def find_run_dirs(paths: Iterable[str]) -> list[str]:
    found = []
    for path in paths:
        if not os.path.exists(path):
            raise ScalingError(f"{path} does not exist")
        before = len(found)
        if os.path.isfile(path) and os.path.basename(path) == schema.RUN_META_FILE:
            found.append(os.path.dirname(os.path.abspath(path)))
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != "checkpoints"]
            if schema.RUN_META_FILE in files:
                found.append(os.path.abspath(root))
        if len(found) == before:
            raise ScalingError(
                f"no {schema.RUN_META_FILE} under {path} (the launcher writes one per run)"
            )
    return found


def read_run_meta(run_dir: str) -> dict:
    path = os.path.join(run_dir, schema.RUN_META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ScalingError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise ScalingError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise ScalingError(f"{path}: expected a JSON object")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ScalingError(f"{path}: missing keys {missing}")
    return meta


def _row(meta: dict, loss: float, losses: list[float], final_eval: dict, params_count: str) -> dict:
    if params_count not in PARAM_COUNTS:
        raise ScalingError(
            f"params count must be one of {sorted(PARAM_COUNTS)}, got {params_count!r}"
        )
    tokens = float(meta[schema.META_PLANNED_TOKENS])
    fpt = meta.get(schema.META_TRAIN_FLOPS_PER_TOKEN)
    return {
        "name": meta[schema.META_NAME],
        "budget": float(meta[schema.META_BUDGET]),
        "params": int(meta[PARAM_COUNTS[params_count]]),
        "tokens": tokens,
        "loss": float(loss),
        "flops": float(fpt) * tokens if fpt is not None else "",
        "train_flops_per_token": fpt if fpt is not None else "",
        "params_total": meta.get(schema.META_PARAMS_TOTAL, ""),
        "params_soda": meta.get(schema.META_PARAMS_SODA, ""),
        "params_non_embedding": meta.get(schema.META_PARAMS_NON_EMBEDDING, ""),
        "width": meta.get("width", ""),
        "layers": meta.get("layers", ""),
        "batch_size": meta.get("batch_size", ""),
        "seq_length": meta.get("seq_length", ""),
        "steps": meta[schema.META_PLANNED_STEPS],
        "final_train_loss": losses[-1] if losses else "",
        "eval_iteration": final_eval[schema.ITERATION],
    }


def _number(
    rec: dict, key: str, where: str, *, required: bool, integer: bool = False
) -> float | None:
    if key not in rec:
        if required:
            raise ScalingError(f"{where}: record has no {key!r} field")
        return None
    v = rec[key]
    if v is None and not integer:
        return None  # not available (e.g. grad_norm on a skipped step)
    if isinstance(v, str) and v.strip().lower() in _NON_FINITE:
        v = rec[key] = float(v)  # the trainer writes NaN/Inf as strings (JSON has neither)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ScalingError(f"{where}: field {key!r} must be a number, got {v!r}")
    if integer and (not math.isfinite(v) or v != int(v)):
        raise ScalingError(f"{where}: field {key!r} must be an integer, got {v!r}")
    return float(v)


def _eval_loss_key(rec: dict, loss_field: str | None) -> str | None:
    if loss_field is not None:
        return loss_field if loss_field in rec else None
    return next((k for k in schema.EVAL_LOSS_FIELDS if k in rec), None)


def _moving_mean(xs: list[float], w: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out
