"""Compute-optimal fits from an IsoFLOP sweep (Chinchilla approach 2, as in SODA).

1. Per budget C: a parabola of loss in x = ln N; its vertex gives N*(C) and L*(C).
   D*(C) = C / (training FLOPs per token at N*): with ``tokens_mode="flops"`` the per-token cost
   is interpolated from the budget's own runs (log(C / D_i) linear in log N_i, so the Levanter
   count of the actual shapes is used); with ``"6n"`` it is 6 N*.
2. Power laws N* = a C^alpha_n, D* = b C^beta_d (least squares in log-log), and the frontier loss
   L* = E + k C^-gamma (E profiled; E = 0 with fewer than 4 budgets).
3. Confidence intervals: bootstrap over runs (resample each budget's runs with replacement,
   refit everything), seeded; percentile intervals.
4. Optionally Chinchilla's parametric L(N, D) (see :mod:`parametric`) on all runs, for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.parametric import ParametricFit, fit_parametric
from megatron_soda.scaling.results import Results

PAPER_ALPHA_N = 0.367  # SODA: N* ~ C^0.367
PAPER_BETA_D = 0.579  # SODA: D* ~ C^0.579
TOKENS_MODES = ("flops", "6n")


@dataclass
class BudgetFit:
    budget: float
    n_runs: int
    coeffs: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # a x^2 + b x + c, x = ln N
    params_opt: float = math.nan
    tokens_opt: float = math.nan
    loss_opt: float = math.nan
    log_n_range: tuple[float, float] = (math.nan, math.nan)
    ok: bool = False
    interior: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return {"budget": self.budget, "n_runs": self.n_runs, "ok": self.ok, "interior": self.interior,
                "params_opt": self.params_opt, "tokens_opt": self.tokens_opt, "loss_opt": self.loss_opt,
                "parabola": list(self.coeffs), "params_range": [math.exp(v) for v in self.log_n_range],
                "reason": self.reason}  # fmt: skip


@dataclass
class PowerLaw:
    """y = offset + coef * C^exponent, with bootstrap samples of (log coef, exponent, offset)."""

    log_coef: float
    exponent: float
    offset: float = 0.0
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))
    ci: float = 0.95

    @property
    def coef(self) -> float:
        return math.exp(self.log_coef)

    def __call__(self, c: np.ndarray | float) -> np.ndarray:
        return self.offset + np.exp(
            self.log_coef + self.exponent * np.log(np.asarray(c, dtype=float))
        )

    def _q(self, values: np.ndarray) -> list[float]:
        if len(values) < 2:
            return [math.nan, math.nan]
        lo = (1 - self.ci) / 2
        return [float(v) for v in np.quantile(values, [lo, 1 - lo], axis=0)]

    def exponent_interval(self) -> list[float]:
        return self._q(self.samples[:, 1])

    def interval_at(self, c: float) -> list[float]:
        s = self.samples
        return self._q(s[:, 2] + np.exp(s[:, 0] + s[:, 1] * math.log(c)))

    def to_dict(self) -> dict:
        return {"coef": self.coef, "exponent": self.exponent, "offset": self.offset,
                "exponent_ci": self.exponent_interval(), "n_boot": int(len(self.samples))}  # fmt: skip


@dataclass
class FitResult:
    optima: list[BudgetFit]
    n_law: PowerLaw
    d_law: PowerLaw
    loss_law: PowerLaw
    fpt_fit: tuple[float, float]  # log(train FLOPs/token) = intercept + slope * log N, all runs
    tokens_mode: str
    ci: float
    seed: int
    n_boot_failed: int = 0
    parametric: ParametricFit | None = None
    parametric_error: str = ""
    warnings: list[str] = field(default_factory=list)

    def predict(self, budget: float) -> dict:
        """Optimal allocation and loss at ``budget`` from the power laws (and the parametric fit)."""
        out = {
            "budget": budget,
            "params_opt": float(self.n_law(budget)),
            "params_opt_ci": self.n_law.interval_at(budget),
            "tokens_opt": float(self.d_law(budget)),
            "tokens_opt_ci": self.d_law.interval_at(budget),
            "loss_opt": float(self.loss_law(budget)),
            "loss_opt_ci": self.loss_law.interval_at(budget),
        }
        if self.parametric is not None:
            out["parametric"] = self.parametric.optimal_allocation(budget, *self.fpt_fit)
            out["parametric"]["loss_at_powerlaw_optimum"] = float(
                self.parametric.predict(out["params_opt"], out["tokens_opt"])
            )
        return out

    def to_dict(self) -> dict:
        return {
            "alpha_n": self.n_law.exponent,
            "alpha_n_ci": self.n_law.exponent_interval(),
            "beta_d": self.d_law.exponent,
            "beta_d_ci": self.d_law.exponent_interval(),
            "gamma_loss": -self.loss_law.exponent,
            "gamma_loss_ci": sorted(-v for v in self.loss_law.exponent_interval()),
            "ci": self.ci,
            "paper": {"alpha_n": PAPER_ALPHA_N, "beta_d": PAPER_BETA_D},
            "n_law": self.n_law.to_dict(),
            "d_law": self.d_law.to_dict(),
            "loss_law": self.loss_law.to_dict(),
            "tokens_mode": self.tokens_mode,
            "seed": self.seed,
            "bootstrap_failed_resamples": self.n_boot_failed,
            "optima": [o.to_dict() for o in self.optima],
            "parametric": self.parametric.to_dict() if self.parametric else None,
            "parametric_error": self.parametric_error or None,
            "warnings": self.warnings,
        }


def fit_budget(budget: float, params: np.ndarray, tokens: np.ndarray, loss: np.ndarray,
               tokens_mode: str = "flops") -> BudgetFit:  # fmt: skip
    """Parabola of loss vs ln N for the runs of one budget."""
    x = np.log(params)
    fit = BudgetFit(budget, len(x), log_n_range=(float(x.min()), float(x.max())))
    sizes = len(np.unique(np.round(x, 9)))
    if sizes < 3:
        fit.reason = f"needs >= 3 distinct model sizes, has {sizes}"
        return fit
    a, b, c = (float(v) for v in np.polyfit(x, loss, 2))
    fit.coeffs = (a, b, c)
    if not a > 0:
        fit.reason = "loss vs log N is not convex here (no minimum); widen the size range"
        return fit
    x_opt = -b / (2 * a)
    fit.params_opt = math.exp(x_opt)
    fit.loss_opt = c - b * b / (4 * a)
    if tokens_mode == "6n":
        fit.tokens_opt = budget / (6.0 * fit.params_opt)
    else:  # the per-token training cost of this budget's shapes, interpolated at N*
        fit.tokens_opt = budget / math.exp(_interp_loglog(x, np.log(budget / tokens), x_opt))
    fit.interior = bool(x.min() <= x_opt <= x.max())
    fit.ok = True
    if not fit.interior:
        fit.reason = "minimum outside the sampled sizes (extrapolated)"
    return fit


def _interp_loglog(x: np.ndarray, y: np.ndarray, x0: float) -> float:
    """Piecewise-linear y(x) through the (x-sorted, x-deduplicated) points; the end segments
    extend linearly outside them."""
    xs, idx = np.unique(x, return_index=True)
    ys = y[idx]
    if len(xs) == 1:
        return float(ys[0])
    i = int(np.clip(np.searchsorted(xs, x0) - 1, 0, len(xs) - 2))
    t = (x0 - xs[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + t * (ys[i + 1] - ys[i]))


def fit_isoflops(res: Results, tokens_mode: str = "flops") -> list[BudgetFit]:
    if tokens_mode not in TOKENS_MODES:
        raise ScalingError(f"tokens mode must be one of {TOKENS_MODES}, got {tokens_mode!r}")
    return [fit_budget(c, res.params[m], res.tokens[m], res.loss[m], tokens_mode)
            for c in res.budgets for m in [res.budget == c]]  # fmt: skip


def _usable(optima: list[BudgetFit], require_interior: bool) -> list[BudgetFit]:
    return [o for o in optima if o.ok and (o.interior or not require_interior)]


def _laws(optima: list[BudgetFit]) -> tuple[tuple[float, float, float], ...]:
    """(log coef, exponent, offset) of N*(C), D*(C) and the loss frontier L*(C)."""
    lc = np.log([o.budget for o in optima])
    out = []
    for ys in ([o.params_opt for o in optima], [o.tokens_opt for o in optima]):
        slope, intercept = np.polyfit(lc, np.log(ys), 1)
        out.append((float(intercept), float(slope), 0.0))
    out.append(_loss_frontier(lc, np.array([o.loss_opt for o in optima])))
    return tuple(out)


def _loss_frontier(
    lc: np.ndarray, loss: np.ndarray, n_grid: int = 200
) -> tuple[float, float, float]:
    """L* = E + k C^-gamma.  E is profiled on a grid in [0, min L*) (for each E the rest is a
    log-log line); with fewer than 4 budgets E = 0 (a pure power law: 3 points would be
    interpolated exactly, which says nothing)."""
    if len(loss) < 4 or not np.all(loss > 0):
        slope, intercept = np.polyfit(lc, np.log(loss), 1)
        return float(intercept), float(slope), 0.0
    offsets = np.min(loss) * np.linspace(0.0, 0.995, n_grid)
    y = np.log(loss[None, :] - offsets[:, None])  # (grid, budgets)
    xm, ym = lc.mean(), y.mean(axis=1, keepdims=True)
    slope = ((lc - xm) * (y - ym)).sum(axis=1) / ((lc - xm) ** 2).sum()
    intercept = ym[:, 0] - slope * xm
    pred = offsets[:, None] + np.exp(intercept[:, None] + slope[:, None] * lc[None, :])
    best = int(np.argmin(((pred - loss[None, :]) ** 2).sum(axis=1)))
    return float(intercept[best]), float(slope[best]), float(offsets[best])


def fit_scaling(
    res: Results,
    *,
    tokens_mode: str = "flops",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    require_interior: bool = False,
    parametric: bool = True,
    parametric_starts: int | None = 64,
) -> FitResult:
    """Everything ``fit`` reports; raises ScalingError when fewer than 2 budgets have a minimum."""
    if not 0 < ci < 1:
        raise ScalingError(f"ci must be in (0, 1), got {ci}")
    optima = fit_isoflops(res, tokens_mode)
    usable = _usable(optima, require_interior)
    if len(usable) < 2:
        why = "; ".join(f"{o.budget:.3g}: {o.reason or 'ok'}" for o in optima)
        raise ScalingError(
            f"need >= 2 budgets with an IsoFLOP minimum to fit power laws, got {len(usable)} ({why})"
        )
    n_fit, d_fit, l_fit = _laws(usable)
    warnings = [f"budget {o.budget:.3g}: {o.reason}" for o in optima if o.reason]
    if len(usable) == 2:
        warnings.append(
            "only 2 budgets: the power laws pass exactly through them; intervals are wide"
        )

    budgets = [o.budget for o in usable]
    samples, failed = _bootstrap(res, budgets, tokens_mode, n_boot, seed, require_interior)
    fpt_slope, fpt_icpt = np.polyfit(np.log(res.params), np.log(res.budget / res.tokens), 1)
    out = FitResult(
        optima=optima,
        n_law=PowerLaw(*n_fit, samples=samples[:, 0:3], ci=ci),
        d_law=PowerLaw(*d_fit, samples=samples[:, 3:6], ci=ci),
        loss_law=PowerLaw(*l_fit, samples=samples[:, 6:9], ci=ci),
        fpt_fit=(float(fpt_icpt), float(fpt_slope)),
        tokens_mode=tokens_mode,
        ci=ci,
        seed=seed,
        n_boot_failed=failed,
        warnings=warnings,
    )
    if failed > n_boot // 2:
        warnings.append(
            f"{failed} of {n_boot} bootstrap resamples failed (too few sizes per budget?)"
        )
    if parametric:
        try:
            out.parametric = fit_parametric(
                res.params, res.tokens, res.loss, n_starts=parametric_starts
            )
        except ScalingError as e:
            out.parametric_error = str(e)
    return out


def _bootstrap(res: Results, budgets: list[float], tokens_mode: str, n_boot: int, seed: int,
               require_interior: bool, max_redraw: int = 20) -> tuple[np.ndarray, int]:  # fmt: skip
    """Rows of (log coef, exponent, offset) x (N*, D*, L*) from resampled sweeps.

    Each of ``budgets`` (those usable in the point estimate) has its runs resampled with
    replacement; a degenerate resample (too few distinct sizes, no minimum) is redrawn, and a
    bootstrap sample where some budget stays degenerate is counted as failed."""
    rng = np.random.default_rng(seed)
    groups = [(c, np.flatnonzero(res.budget == c)) for c in budgets]
    rows, failed = [], 0
    for _ in range(n_boot):
        optima = []
        for c, idx in groups:
            for _attempt in range(max_redraw):
                pick = rng.choice(idx, size=len(idx), replace=True)
                fit = fit_budget(c, res.params[pick], res.tokens[pick], res.loss[pick], tokens_mode)
                if fit.ok and (fit.interior or not require_interior):
                    optima.append(fit)
                    break
        if len(optima) < len(groups):
            failed += 1
            continue
        rows.append([v for law in _laws(optima) for v in law])
    return (np.asarray(rows, dtype=float).reshape(-1, 9), failed)


def holdout_check(res: Results, **kwargs: object) -> tuple[dict, FitResult]:
    """Fit on all budgets but the largest, predict it, and compare with what was achieved.

    Returns the comparison and the fit made without the largest budget."""
    largest = max(res.budgets)
    train = res.subset(res.budget < largest)
    held = res.subset(res.budget == largest)
    fit = fit_scaling(train, **kwargs)  # type: ignore[arg-type]
    pred = fit.predict(largest)
    achieved = fit_budget(largest, held.params, held.tokens, held.loss, fit.tokens_mode)
    out = {"budget": largest, "predicted": pred, "achieved": achieved.to_dict(),
           "achieved_best_run_loss": float(held.loss.min())}  # fmt: skip
    if fit.parametric is not None:
        out["parametric_on_heldout_runs"] = {
            "predicted": fit.parametric.predict(held.params, held.tokens).tolist(),
            "achieved": held.loss.tolist(),
        }
    return out, fit
