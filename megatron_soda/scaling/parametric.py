"""Chinchilla's parametric law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al., approach 3).

Fitted like the paper: Huber loss (delta 1e-3) between log L and
LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e, minimised with L-BFGS
from a grid of initialisations.  The full Hoffmann grid has 5,400 points; the objective is first
evaluated at all of them (vectorised, cheap) and L-BFGS is started from the best ``n_starts``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import logsumexp

from megatron_soda.scaling.errors import ScalingError

HOFFMANN_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}


@dataclass
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_starts: int

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def implied_exponents(self) -> tuple[float, float]:
        """Exponents of N* and D* implied under C proportional to N*D: b/(a+b), a/(a+b)."""
        s = self.alpha + self.beta
        return (self.beta / s, self.alpha / s) if s > 0 else (math.nan, math.nan)

    def optimal_allocation(
        self, budget: float, fpt_intercept: float, fpt_slope: float
    ) -> dict[str, float]:
        """Minimise L(N, C / fpt(N)) over N, with log fpt(N) = intercept + slope * log N."""

        def loss_at(log_n: float) -> float:
            log_d = math.log(budget) - (fpt_intercept + fpt_slope * log_n)
            return float(self.predict(math.exp(log_n), math.exp(log_d)))

        res = minimize_scalar(loss_at, bounds=(math.log(1e3), math.log(1e15)), method="bounded")
        log_n = float(res.x)
        n = math.exp(log_n)
        d = math.exp(math.log(budget) - (fpt_intercept + fpt_slope * log_n))
        return {"params": n, "tokens": d, "loss": float(res.fun)}

    def to_dict(self) -> dict[str, float]:
        a, b = self.implied_exponents
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
                "implied_alpha_n": a, "implied_beta_d": b, "huber_objective": self.objective,
                "n_starts": self.n_starts}  # fmt: skip


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss of the residuals, elementwise."""
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
):
    """Huber(LSE(a - alpha log N, b - beta log D, e) - log L) summed, and its gradient."""
    a, b, e, alpha, beta = theta
    t0, t1 = a - alpha * log_n, b - beta * log_d
    m = np.maximum(np.maximum(t0, t1), e)
    x0, x1, x2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    s = x0 + x1 + x2
    r = m + np.log(s) - log_l
    huber = _huber(r, delta)
    dh = np.clip(r, -delta, delta) / s  # d huber / d term_k = dh * x_k (softmax weight)
    w0, w1 = dh * x0, dh * x1
    grad = np.array([w0.sum(), w1.sum(), (dh * x2).sum(), -(w0 * log_n).sum(), -(w1 * log_d).sum()])
    return float(huber.sum()), grad


def _grid_objectives(grid: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n))
    return _huber(logsumexp(terms, axis=0) - log_l, delta).sum(axis=1)


def fit_parametric(
    params: np.ndarray,
    tokens: np.ndarray,
    loss: np.ndarray,
    *,
    delta: float = 1e-3,
    n_starts: int | None = 64,
) -> ParametricFit:
    """Fit E, A, B, alpha, beta; ``n_starts=None`` runs L-BFGS from every grid point."""
    params, tokens, loss = (np.asarray(x, dtype=float) for x in (params, tokens, loss))
    if len(loss) < 5:
        raise ScalingError(f"the parametric fit needs at least 5 runs, got {len(loss)}")
    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(loss)
    order = ("a", "b", "e", "alpha", "beta")
    grid = np.array(list(itertools.product(*(HOFFMANN_GRID[k] for k in order))), dtype=float)
    if n_starts is not None and n_starts < len(grid):
        grid = grid[np.argsort(_grid_objectives(grid, log_n, log_d, log_l, delta))[:n_starts]]
    best = None
    for init in grid:
        res = minimize(
            _objective, init, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B"
        )
        if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ScalingError("the parametric fit did not converge from any initialisation")
    a, b, e, alpha, beta = (float(v) for v in best.x)
    return ParametricFit(
        math.exp(e), math.exp(a), math.exp(b), alpha, beta, float(best.fun), len(grid)
    )
