"""The results table: a CSV with at least the columns budget, params, tokens, loss.

``collect`` writes it, ``fit`` / ``predict`` read it.  Reading validates everything the fits
rely on, so the fitter never sees an empty table, a missing column or a non-finite number.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_soda.scaling import schema
from megatron_soda.scaling.errors import ScalingError


@dataclass
class Results:
    """Columns as float arrays (one entry per run) plus optional run names."""

    budget: np.ndarray
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    names: list[str]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def budgets(self) -> list[float]:
        return sorted(set(self.budget.tolist()))

    def subset(self, mask: np.ndarray) -> Results:
        return Results(self.budget[mask], self.params[mask], self.tokens[mask], self.loss[mask],
                       [n for n, k in zip(self.names, mask) if k], self.source)  # fmt: skip

    @classmethod
    def from_rows(
        cls, rows: Sequence[dict], source: str = "<memory>", lines: Sequence[int] | None = None
    ) -> Results:
        """Validate and convert rows; errors name ``source: row i``, or ``source:line`` for
        the file lines given in ``lines``."""
        if not rows:
            raise ScalingError(f"{source}: the results table is empty (no finished runs?)")
        cols = {c: [] for c in schema.REQUIRED_COLUMNS}
        names = []
        for i, row in enumerate(rows):
            where = f"{source}:{lines[i]}" if lines is not None else f"{source}: row {i + 1}"
            for c in schema.REQUIRED_COLUMNS:
                cols[c].append(_positive(row.get(c), c, where))
            names.append(str(row.get("name") or f"run{i + 1}"))
        return cls(
            *(np.asarray(cols[c], dtype=float) for c in schema.REQUIRED_COLUMNS), names, source
        )


def read_results(path: str) -> Results:
    """Read and validate a results CSV (errors name the file and line)."""
    if not os.path.isfile(path):
        raise ScalingError(f"results file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ScalingError(f"{path}: the results table is empty (no header)")
        reader.fieldnames = header
        missing = [c for c in schema.REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ScalingError(
                f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(schema.REQUIRED_COLUMNS)}"
            )
        rows, lines = [], []
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise ScalingError(f"{path}: the results table is empty (header only)")
    return Results.from_rows(rows, source=path, lines=lines)


def write_results(rows: Sequence[dict], path: str) -> None:
    """Write rows with the standard columns first; extra keys are appended."""
    extra = sorted({k for r in rows for k in r} - set(schema.RESULT_COLUMNS))
    columns = [*schema.RESULT_COLUMNS, *extra]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in columns})


def _positive(value: object, column: str, where: str) -> float:
    text = "" if value is None else str(value).strip()
    if not text:
        raise ScalingError(f"{where}: column {column!r} is empty")
    try:
        v = float(text)
    except ValueError:
        raise ScalingError(f"{where}: column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(v):
        hint = " (diverged run? `collect` skips those)" if column == "loss" else ""
        raise ScalingError(f"{where}: column {column!r} is not finite: {text}{hint}")
    if v <= 0:
        raise ScalingError(f"{where}: column {column!r} must be positive, got {text}")
    return v


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return repr(v)
    return v
