"""A layer x alpha grid tuned on one split and reported on another, as the paper does.

The authors shuffle the benchmark's items with a fixed seed, hold out the last ``test_size``
(150) as the test split (``Woodygan/TextSteersVision`` ``utils.py`` lines 312-334), run the
grid of layers x strengths on the rest (``cvbench_grid_search.sh``: layers 5-20, strengths 5,
10, ..., 60), take the setting with the largest improvement over the unsteered model
(``plot.py`` lines 493-620, ``best_settings.json``) and report it on the test split (README
"Evaluation").  Here:

* :func:`sweep` measures every (layer, alpha) on the *tune* split, picks the best score among
  the settings whose damage stays within ``max_nll_increase`` of the unsteered model's
  (the measure's NLL: how much worse the model predicts the tune data), ties going to the
  smaller ``|alpha|`` then the lower layer, and measures only that setting and alpha 0 on
  the *held-out* split.  If no setting beats alpha 0 on the tune split, alpha 0 is the choice.
* :func:`task_measure` is the measure ``python -m megatron_soda.steer sweep`` uses: accuracy on
  a prepared likelihood task (pairs: strict win of the positive member; choice: acc_norm),
  with the mean per-token NLL of every scored sequence as the damage.
* :func:`split_items` is the deterministic tune / held-out split (a seeded permutation, the
  held-out items last, as the authors').

Any other measure (``tests/test_steer_planted.py`` counts generated audio codes) plugs in as a
function ``(steering or None, split) -> Measure``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from megatron_soda.steer.hooks import Steering, steering

SPLITS = ("tune", "heldout")


@dataclass(frozen=True)
class Measure:
    score: float  # higher is better (accuracy, share of switched codes, ...)
    nll: float = math.nan  # the damage guard: mean NLL of the split's data under the setting


@dataclass(frozen=True)
class GridPoint:
    layer: int
    alpha: float
    tune: Measure
    allowed: bool = True  # within the NLL guard


@dataclass
class SweepResult:
    baseline_tune: Measure
    baseline_heldout: Measure
    best_layer: int | None  # None: alpha 0 (no setting beat it on the tune split)
    best_alpha: float
    best_tune: Measure
    best_heldout: Measure
    grid: list[GridPoint] = field(default_factory=list)

    @property
    def heldout_gain(self) -> float:
        return self.best_heldout.score - self.baseline_heldout.score

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": {"tune": asdict(self.baseline_tune), "heldout": asdict(self.baseline_heldout)},
                "best": {"layer": self.best_layer, "alpha": self.best_alpha,
                         "tune": asdict(self.best_tune), "heldout": asdict(self.best_heldout)},
                "heldout_gain": self.heldout_gain,
                "grid": [{"layer": p.layer, "alpha": p.alpha, "allowed": p.allowed, **asdict(p.tune)}
                         for p in self.grid]}


def sweep(measure: Callable[[Steering | None, str], Measure], make: Callable[[int, float], Steering],
          layers: Sequence[int], alphas: Sequence[float], max_nll_increase: float | None = None,
          progress: Callable[[GridPoint], None] | None = None) -> SweepResult:
    """Tune (layer, alpha) on ``measure(., "tune")``; report the choice on ``"heldout"``.

    ``make(layer, alpha)`` builds the steering of one grid point; alpha 0 is measured once, as
    no steering (the hook registers nothing at alpha 0)."""
    base = measure(None, "tune")
    grid = []
    for layer in layers:
        for alpha in alphas:
            if alpha == 0:
                continue
            m = measure(make(layer, alpha), "tune")
            ok = _within_guard(m.nll, base.nll, max_nll_increase)
            point = GridPoint(layer, float(alpha), m, ok)
            grid.append(point)
            if progress:
                progress(point)
    # a NaN score (a broken measure) is never chosen; a NaN baseline is beaten by nothing
    candidates = [p for p in grid if p.allowed and math.isfinite(p.tune.score) and math.isfinite(base.score)
                  and p.tune.score > base.score]
    best = min(candidates, key=lambda p: (-p.tune.score, abs(p.alpha), p.layer), default=None)
    heldout_base = measure(None, "heldout")
    if best is None:
        return SweepResult(base, heldout_base, None, 0.0, base, heldout_base, grid)
    heldout = measure(make(best.layer, best.alpha), "heldout")
    return SweepResult(base, heldout_base, best.layer, best.alpha, best.tune, heldout, grid)


def _within_guard(nll: float, base_nll: float, max_increase: float | None) -> bool:
    """The NLL guard: no guard, or a finite NLL at most ``max_increase`` above the baseline's.
    A non-finite NLL (NaN: the steered model's logits broke) is refused, unless the baseline's is
    non-finite too (a measure without an NLL: there is nothing to compare with)."""
    if max_increase is None or not math.isfinite(base_nll):
        return True
    return math.isfinite(nll) and nll - base_nll <= max_increase


def split_items(n: int, heldout: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Item indices of each split: a seeded permutation whose last ``heldout`` items (default
    half) are held out."""
    heldout = n // 2 if heldout is None else heldout
    if not 0 < heldout < n:
        raise ValueError(f"{n} items, {heldout} held out: both splits need an item")
    order = np.random.default_rng(seed).permutation(n)
    return {"tune": np.sort(order[:n - heldout]), "heldout": np.sort(order[n - heldout:])}


def task_measure(model: Any, layout: Any, task: Any, splits: dict[str, np.ndarray],
                 batch_size: int = 8) -> Callable[[Steering | None, str], Measure]:
    """Accuracy (and mean per-token NLL) of a prepared likelihood task's split under a steering."""
    from megatron_soda.tasks.likelihood import score_sequences
    from megatron_soda.tasks.prepared import PreparedTask, item_results, summarize

    subsets = {name: PreparedTask(task.name, task.kind, [task.items[i] for i in idx])
               for name, idx in splits.items()}

    def measure(steer: Steering | None, split: str) -> Measure:
        sub = subsets[split]
        with steering(model, layout, steer):
            scores = score_sequences(model, sub.sequences(), batch_size)
        accuracy = summarize(sub, item_results(sub, scores))["accuracy"]
        total, count = sum(s for s, _ in scores), sum(c for _, c in scores)
        return Measure(float(accuracy), -total / count if count else math.nan)

    return measure
