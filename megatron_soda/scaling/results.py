"""The results table: a CSV with at least the columns budget, params, tokens, loss.

``collect`` writes it, ``fit`` / ``predict`` read it.  Reading validates everything the fits
rely on, so the fitter never sees an empty table, a missing column or a non-finite number.

Which parameter count N the fits use (``fit --params-count``): ``soda`` (the column
``params_soda``: all parameters but the input embedding, the output head counted), ``total``
(``params_total``), ``non_embedding`` (``params_non_embedding``: both V x d matrices left out), or
``params`` (that column as written, e.g. results from elsewhere).  The default is ``soda``: the
authors' fitting code is not public, but their model cards say the sizes "exclude embedding
layers for our scaling law analysis" and give 135M / 4B for models whose all-but-input-embedding
counts are 131M / 4.00B (non-embedding would be 57M / 3.63B); see docs/scaling.md section 5.
Without a ``params_soda`` column the default falls back to ``params`` (and says so).
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

PARAMS_COLUMNS = {"soda": schema.META_PARAMS_SODA, "total": schema.META_PARAMS_TOTAL,
                  "non_embedding": schema.META_PARAMS_NON_EMBEDDING, "params": "params"}  # fmt: skip
DEFAULT_PARAMS_COUNT = "soda"


@dataclass
class Results:
    """Columns as float arrays (one entry per run) plus optional run names."""

    budget: np.ndarray
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    names: list[str]
    source: str = "<memory>"
    params_column: str = "params"  # the CSV column ``params`` was read from

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def budgets(self) -> list[float]:
        return sorted(set(self.budget.tolist()))

    def subset(self, mask: np.ndarray) -> Results:
        return Results(self.budget[mask], self.params[mask], self.tokens[mask], self.loss[mask],
                       [n for n, k in zip(self.names, mask) if k], self.source, self.params_column)  # fmt: skip

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[dict],
        source: str = "<memory>",
        lines: Sequence[int] | None = None,
        params_column: str = "params",
    ) -> Results:
        """Validate and convert rows; errors name ``source: row i``, or ``source:line`` for
        the file lines given in ``lines``.  N is read from ``params_column``."""
        if not rows:
            raise ScalingError(f"{source}: the results table is empty (no finished runs?)")
        read = {c: params_column if c == "params" else c for c in schema.REQUIRED_COLUMNS}
        cols = {c: [] for c in schema.REQUIRED_COLUMNS}
        names = []
        for i, row in enumerate(rows):
            where = f"{source}:{lines[i]}" if lines is not None else f"{source}: row {i + 1}"
            for c in schema.REQUIRED_COLUMNS:
                cols[c].append(_positive(row.get(read[c]), read[c], where))
            names.append(str(row.get("name") or f"run{i + 1}"))
        arrays = (np.asarray(cols[c], dtype=float) for c in schema.REQUIRED_COLUMNS)
        return cls(*arrays, names, source, params_column)


def params_column_for(header: Sequence[str], rows: Sequence[dict], params_count: str | None) -> str:
    """The CSV column N is read from (see the module docstring); None: the default, ``soda``,
    or ``params`` when the table has no complete ``params_soda`` column."""
    if params_count is None:
        col = PARAMS_COLUMNS[DEFAULT_PARAMS_COUNT]
        complete = col in header and all(str(r.get(col) or "").strip() for r in rows)
        return col if complete else "params"
    if params_count not in PARAMS_COLUMNS:
        raise ScalingError(
            f"params count must be one of {sorted(PARAMS_COLUMNS)}, got {params_count!r}"
        )
    return PARAMS_COLUMNS[params_count]


def read_results(path: str, params_count: str | None = "params") -> Results:
    """Read and validate a results CSV (errors name the file and line).  ``params_count``
    chooses the column N is read from (:data:`PARAMS_COLUMNS`; None: the fit's default)."""
    if params_count is not None and params_count not in PARAMS_COLUMNS:
        raise ScalingError(
            f"params count must be one of {sorted(PARAMS_COLUMNS)}, got {params_count!r}"
        )
    wanted = None if params_count in (None, "params") else PARAMS_COLUMNS[params_count]
    if not os.path.isfile(path):
        raise ScalingError(f"results file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ScalingError(f"{path}: the results table is empty (no header)")
        reader.fieldnames = header
        needed = [*schema.REQUIRED_COLUMNS, *([wanted] if wanted else [])]
        missing = [c for c in needed if c not in header]
        if missing:
            raise ScalingError(
                f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(needed)}"
                + (f" (--params-count {params_count})" if wanted else "")
            )
        rows, lines = [], []
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise ScalingError(f"{path}: the results table is empty (header only)")
    column = params_column_for(header, rows, params_count)
    return Results.from_rows(rows, source=path, lines=lines, params_column=column)


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
