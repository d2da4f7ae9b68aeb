"""The fitter recovers known exponents from synthetic IsoFLOP sweeps drawn from a known law.

Ground truth: Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al.'s fitted values)
with C = 6 N D.  Then exactly N* ~ C^(beta/(alpha+beta)) = C^0.4516 and D* ~ C^0.5484.
Noise: multiplicative, 0.3% (sd) on each loss; sizes jittered off a log grid.
Tolerances: exponents within 0.02 of the truth and inside the 95% bootstrap interval;
parametric alpha/beta within 0.03; extrapolated N* at 10x the largest budget within 15%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.fitter import fit_budget, fit_isoflops, fit_scaling, holdout_check
from megatron_soda.scaling.results import Results

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TRUE_A_N = BETA / (ALPHA + BETA)
TRUE_B_D = ALPHA / (ALPHA + BETA)
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21)


def true_optimum(c: float) -> float:
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (c / 6) ** TRUE_A_N


def synthetic(
    noise: float = 0.003, sizes: int = 9, seed: int = 1, extra_fpt: float = 0.0
) -> Results:
    """Runs spread over 1/6..6 x the true N*; tokens from C / fpt(N), fpt = 6N + extra_fpt."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in BUDGETS:
        for f in np.geomspace(1 / 6, 6, sizes):
            n = true_optimum(c) * f * math.exp(rng.uniform(-0.2, 0.2))
            d = c / (6 * n + extra_fpt)
            loss = (E + A / n**ALPHA + B / d**BETA) * math.exp(rng.normal(0, noise))
            rows.append({"budget": c, "params": n, "tokens": d, "loss": loss})
    return Results.from_rows(rows)


def test_recovers_known_exponents_with_intervals():
    fit = fit_scaling(synthetic(), tokens_mode="6n", n_boot=300, seed=0, parametric=False)
    out = fit.to_dict()
    assert out["alpha_n"] == pytest.approx(TRUE_A_N, abs=0.02)
    assert out["beta_d"] == pytest.approx(TRUE_B_D, abs=0.02)
    lo, hi = out["alpha_n_ci"]
    assert lo < TRUE_A_N < hi and hi - lo < 0.1
    lo, hi = out["beta_d_ci"]
    assert lo < TRUE_B_D < hi
    assert out["alpha_n"] + out["beta_d"] == pytest.approx(1.0, abs=1e-9)  # C = 6ND
    assert all(o["ok"] and o["interior"] for o in out["optima"])
    # the frontier loss exponent is alpha*beta/(alpha+beta) for this law
    assert out["gamma_loss"] == pytest.approx(ALPHA * BETA / (ALPHA + BETA), abs=0.02)
    pred = fit.predict(1e22)
    assert pred["params_opt"] == pytest.approx(true_optimum(1e22), rel=0.15)
    assert pred["params_opt_ci"][0] < pred["params_opt"] < pred["params_opt_ci"][1]


def test_bootstrap_is_seeded():
    res = synthetic(sizes=5)
    a = fit_scaling(res, n_boot=100, seed=7, parametric=False).to_dict()
    b = fit_scaling(res, n_boot=100, seed=7, parametric=False).to_dict()
    c = fit_scaling(res, n_boot=100, seed=8, parametric=False).to_dict()
    assert a["alpha_n_ci"] == b["alpha_n_ci"] and a["beta_d_ci"] == b["beta_d_ci"]
    assert a["alpha_n_ci"] != c["alpha_n_ci"]
    assert a["alpha_n"] == c["alpha_n"]  # the point estimate does not depend on the seed


def test_tokens_mode_uses_the_runs_flops_per_token():
    extra = 2e9  # an attention-like per-token cost that 6N misses
    res = synthetic(extra_fpt=extra)
    for opt in fit_isoflops(res, "flops"):
        assert opt.tokens_opt == pytest.approx(opt.budget / (6 * opt.params_opt + extra), rel=0.02)
    for opt in fit_isoflops(res, "6n"):
        assert opt.tokens_opt == pytest.approx(opt.budget / (6 * opt.params_opt))


def test_parametric_fit_recovers_the_law():
    fit = fit_scaling(synthetic(noise=0.001), n_boot=0, parametric=True)
    p = fit.parametric
    assert p is not None
    assert p.alpha == pytest.approx(ALPHA, abs=0.03) and p.beta == pytest.approx(BETA, abs=0.03)
    assert p.E == pytest.approx(E, abs=0.05)
    assert p.implied_exponents[0] == pytest.approx(TRUE_A_N, abs=0.03)
    alloc = fit.predict(1e22)["parametric"]
    assert alloc["params"] == pytest.approx(true_optimum(1e22), rel=0.25)


def test_holdout_prediction_of_the_largest_budget():
    out, fit = holdout_check(synthetic(), tokens_mode="6n", n_boot=50, parametric=False)
    assert out["budget"] == 1e21 and max(o.budget for o in fit.optima) == 3e20
    assert out["predicted"]["params_opt"] == pytest.approx(out["achieved"]["params_opt"], rel=0.15)
    assert out["predicted"]["loss_opt"] == pytest.approx(out["achieved"]["loss_opt"], rel=0.01)


def test_degenerate_budgets_are_flagged_and_errors_are_clear():
    n = np.array([1e8, 2e8, 4e8])
    assert not fit_budget(1e19, n[:2], n[:2], np.array([3.0, 2.9])).ok  # two sizes
    concave = fit_budget(1e19, n, 1e19 / (6 * n), np.array([3.0, 3.2, 3.0]))
    assert not concave.ok and "not convex" in concave.reason
    edge = fit_budget(1e19, n, 1e19 / (6 * n), np.array([3.0, 2.9, 2.85]))
    assert edge.ok and not edge.interior
    one_budget = Results.from_rows([{"budget": 1e19, "params": v, "tokens": 1e19 / (6 * v), "loss": 3 - i / 10 + i * i / 20}
                                    for i, v in enumerate(n)])  # fmt: skip
    with pytest.raises(ScalingError, match="need >= 2 budgets"):
        fit_scaling(one_budget, n_boot=0)
    with pytest.raises(ScalingError, match="empty"):
        Results.from_rows([])
    with pytest.raises(ScalingError, match="row 1: column 'loss' is not finite"):
        Results.from_rows([{"budget": 1e19, "params": 1e8, "tokens": 1e9, "loss": float("nan")}])
