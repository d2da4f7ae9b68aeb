"""Figures (matplotlib, Agg backend), each written as PNG and SVG.

- ``isoflop.{png,svg}``: loss vs N per budget, fitted parabolas and their minima;
- ``frontiers.{png,svg}``: N*(C) and D*(C) with the fitted power laws, their bootstrap bands,
  and SODA's exponents (0.367 / 0.579) overlaid through the same centre point;
- ``predicted_vs_achieved.{png,svg}``: frontier-law prediction vs the fitted minimum per budget
  (a held-out budget marked), and the parametric L(N, D) against every run's loss.
"""

from __future__ import annotations

import math
import os

import numpy as np

from megatron_soda.scaling.fitter import PAPER_ALPHA_N, PAPER_BETA_D, FitResult, PowerLaw
from megatron_soda.scaling.results import Results


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: str, stem: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    _plt().close(fig)
    return paths


def plot_isoflop(res: Results, fit: FitResult, out_dir: str) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(res.budgets)))
    for color, opt in zip(colors, fit.optima):
        m = res.budget == opt.budget
        ax.scatter(res.params[m], res.loss[m], color=color, s=18, label=f"C = {opt.budget:.1e}")
        if all(math.isfinite(v) for v in opt.coeffs):
            x = np.linspace(
                np.log(res.params[m]).min() - 0.2, np.log(res.params[m]).max() + 0.2, 100
            )
            ax.plot(np.exp(x), np.polyval(opt.coeffs, x), color=color, lw=1)
        if opt.ok:
            ax.scatter([opt.params_opt], [opt.loss_opt], color=color, marker="*", s=120,
                       edgecolor="black", linewidth=0.5, zorder=5)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final held-out loss")
    ax.set_title("IsoFLOP curves (stars: fitted minima)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out_dir, "isoflop")


def _frontier_panel(
    ax, budgets: np.ndarray, values: np.ndarray, law: PowerLaw, paper: float, label: str
) -> None:
    grid = np.geomspace(budgets.min() / 2, budgets.max() * 2, 60)
    ax.scatter(budgets, values, color="black", zorder=5, label=f"IsoFLOP minima {label}")
    lo, hi = law.exponent_interval() if len(law.samples) else [math.nan, math.nan]
    ax.plot(
        grid, law(grid), color="C0", label=f"fit: exponent {law.exponent:.3f} [{lo:.3f}, {hi:.3f}]"
    )
    if len(law.samples) > 1:
        band = np.array([law.interval_at(c) for c in grid])
        ax.fill_between(grid, band[:, 0], band[:, 1], color="C0", alpha=0.2)
    centre = math.exp(np.mean(np.log(budgets)))
    ax.plot(
        grid,
        law(centre) * (grid / centre) ** paper,
        color="C3",
        ls="--",
        label=f"SODA paper: {paper}",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def plot_frontiers(fit: FitResult, out_dir: str) -> list[str]:
    plt = _plt()
    used = [o for o in fit.optima if o.ok]
    c = np.array([o.budget for o in used])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    _frontier_panel(a1, c, np.array([o.params_opt for o in used]), fit.n_law, PAPER_ALPHA_N, "N*")
    a1.set_ylabel("compute-optimal parameters N*")
    _frontier_panel(a2, c, np.array([o.tokens_opt for o in used]), fit.d_law, PAPER_BETA_D, "D*")
    a2.set_ylabel("compute-optimal tokens D*")
    return _save(fig, out_dir, "frontiers")


def plot_predicted_vs_achieved(
    res: Results, fit: FitResult, out_dir: str, heldout: dict | None = None
) -> list[str]:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    used = [o for o in fit.optima if o.ok]
    pred = [float(fit.loss_law(o.budget)) for o in used]
    got = [o.loss_opt for o in used]
    a1.scatter(got, pred, color="C0", label="fitted budgets")
    if heldout is not None:
        p = heldout["predicted"]
        g = heldout["achieved"]["loss_opt"]
        if math.isfinite(g):
            a1.errorbar([g], [p["loss_opt"]], yerr=[[p["loss_opt"] - p["loss_opt_ci"][0]], [p["loss_opt_ci"][1] - p["loss_opt"]]],
                        fmt="s", color="C3", label=f"held-out C = {heldout['budget']:.1e}")  # fmt: skip
            got.append(g)
            pred.append(p["loss_opt"])
    _diag(a1, got + pred)
    a1.set_xlabel("achieved: IsoFLOP minimum loss")
    a1.set_ylabel("predicted: frontier law L*(C)")
    a1.set_title("frontier loss")
    a1.legend(fontsize=7)
    if fit.parametric is not None:
        p_all = fit.parametric.predict(res.params, res.tokens)
        a2.scatter(res.loss, p_all, s=14, c=np.log10(res.budget), cmap="viridis")
        if heldout is not None:
            m = res.budget == heldout["budget"]
            a2.scatter(res.loss[m], p_all[m], s=40, facecolor="none", edgecolor="C3",
                       label=f"held-out C = {heldout['budget']:.1e}")  # fmt: skip
            a2.legend(fontsize=7)
        _diag(a2, list(res.loss) + list(p_all))
        a2.set_title(
            f"parametric L(N, D): alpha={fit.parametric.alpha:.2f}, beta={fit.parametric.beta:.2f}"
        )
    else:
        a2.text(
            0.5,
            0.5,
            f"no parametric fit\n{fit.parametric_error}",
            ha="center",
            va="center",
            wrap=True,
        )
        a2.set_title("parametric L(N, D)")
    a2.set_xlabel("achieved loss (each run)")
    a2.set_ylabel("predicted loss")
    return _save(fig, out_dir, "predicted_vs_achieved")


def _diag(ax, values: list[float]) -> None:
    v = [x for x in values if math.isfinite(x)]
    if v:
        lo, hi = min(v), max(v)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", lw=1, ls=":")
    ax.grid(alpha=0.3)


def plot_all(res: Results, fit: FitResult, out_dir: str) -> list[str]:
    return [*plot_isoflop(res, fit, out_dir), *plot_frontiers(fit, out_dir),
            *plot_predicted_vs_achieved(res, fit, out_dir)]  # fmt: skip
