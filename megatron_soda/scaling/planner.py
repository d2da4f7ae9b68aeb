"""IsoFLOP sweep planner: budgets x rule -> runs (shape, batch, steps, tokens, LR), with drops.

Budgets are training FLOPs in the paper's units (3 x the forward-only budgets of the authors'
sweep code; ``budget_forward`` in a plan is theirs).  Per budget C and candidate shape (forward
FLOPs/token F in the recipe's count, Levanter's by default; training FLOPs/token 3F), following
marin-community/marin ``experiments/audio/isoflop_audio_sweep.py`` @193d3656 ``candidate_configs``
(L192-261) and ``generate_isoflop_steps`` (L264-354):

1. batch B = the power of two at or above (C / 3F) / (target_steps * seq)  [2^16 steps; L211-223]
2. LR = lr_constant * sqrt(B) / width; halve B while LR > max_lr  [L224-227]
3. drop if B < min_batch [L230-231]; steps = round(C / (3F * B * seq)) [L233-244]; drop if the
   rounded steps miss C by more than flop_tolerance [L246-259], or if steps >= max_steps [L335]
4. beta2 = 0.98 ** (B / 128) [L228]; the rest of the optimizer settings come from the recipe.

Hand-picked target runs (``source="target"``) skip the drops of step 3, as in the authors'
``isoflop_audio_target.py``.

Parameter counts in a plan: ``params`` is the total count (input embedding, all layers, final
norm and the untied output head); ``params_soda`` is SODA's size-name convention (all but the
input embedding); ``params_non_embedding`` excludes both embedding matrices.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.flops import (
    TRAIN_OVER_FORWARD,
    ModelShape,
    forward_flops_per_token,
    param_counts,
    training_flops_per_token,
)
from megatron_soda.scaling.rules import Candidate, Recipe, Rule

PLAN_COLUMNS = (
    "name", "budget", "source", "width", "layers", "heads", "kv_heads", "head_dim", "ffn", "params",
    "params_soda", "batch_size", "seq_length", "steps", "tokens", "lr", "beta2", "tokens_per_param",
)  # fmt: skip


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the sweep, everything the launcher and collector need."""

    name: str
    rule: str
    budget: float
    shape: ModelShape
    batch_size: int
    steps: int
    lr: float
    recipe: Recipe
    source: str = "ladder"

    @property
    def tokens(self) -> int:
        return self.batch_size * self.steps * self.shape.seq_length

    @property
    def forward_flops_per_token(self) -> float:
        """The paper's (Levanter's) forward count, head dim = width / heads."""
        return forward_flops_per_token(self.shape, convention="paper")

    @property
    def train_flops_per_token(self) -> float:
        return self.recipe.train_flops_per_token(self.shape)

    @property
    def achieved_flops(self) -> float:
        return self.train_flops_per_token * self.tokens

    @property
    def params(self) -> dict[str, int]:
        return param_counts(self.shape)

    def to_dict(self) -> dict:
        """Flat, JSON-ready description (the ``plan --format json`` record)."""
        s, r, p = self.shape, self.recipe, self.params
        return {
            "name": self.name,
            "rule": self.rule,
            "source": self.source,
            "budget": self.budget,
            "budget_forward": self.budget / TRAIN_OVER_FORWARD,  # the authors' sweep-code units
            "width": s.hidden_size,
            "layers": s.num_layers,
            "heads": s.num_attention_heads,
            "kv_heads": s.num_query_groups,
            "head_dim": s.kv_channels,
            "ffn": s.ffn_hidden_size,
            "vocab_size": s.vocab_size,
            "num_codebooks": r.num_codebooks,
            "params": p["total"],
            "params_total": p["total"],
            "params_soda": p["soda"],
            "params_non_embedding": p["non_embedding"],
            "params_embedding": p["embedding"],
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_size * s.seq_length,
            "seq_length": s.seq_length,
            "steps": self.steps,
            "tokens": self.tokens,
            "tokens_per_param": self.tokens / p["total"],
            "forward_flops_per_token": self.forward_flops_per_token,
            "train_flops_per_token": self.train_flops_per_token,
            # what the model really computes (actual head dim): for TFLOP/s and MFU
            "true_train_flops_per_token": training_flops_per_token(s),
            "flop_count": r.flop_count,
            "achieved_flops": self.achieved_flops,
            "lr": self.lr,
            "optimizer": r.optimizer,
            "lr_schedule": r.lr_schedule,
            "warmup": r.warmup,
            "decay": r.decay,
            "beta1": r.beta1,
            "beta2": r.beta2(self.batch_size),
            "eps": r.eps,
            "weight_decay": r.weight_decay,
            "z_loss": r.z_loss,
            "grad_clip": r.grad_clip,
            "swiglu": s.swiglu,
            "qk_norm": s.qk_norm,
            "tied_embeddings": s.tied_embeddings,
        }


@dataclass(frozen=True)
class DroppedRun:
    budget: float
    width: int
    layers: int
    reason: str
    kind: str = "shape"  # min_batch | lr_cap | max_steps | too_small | tolerance | shape


@dataclass
class Plan:
    runs: list[PlannedRun]
    dropped: list[DroppedRun]


def run_name(rule: str, budget: float, shape: ModelShape, batch: int) -> str:
    """``<rule>-C<budget>-d<width>-L<layers>-B<batch>``; the budget to 3 significant digits
    without the exponent's '+' (3e18 -> C3e18, 1.2e15 -> C1.2e15)."""
    c = f"{budget:.3g}".replace("+", "")
    return f"{rule}-C{c}-d{shape.hidden_size}-L{shape.num_layers}-B{batch}"


def plan_candidate(budget: float, cand: Candidate, rule: Rule) -> PlannedRun | DroppedRun:
    """Apply the recipe to one shape at one budget (target runs skip the drop rules)."""
    r, s = rule.recipe, cand.shape
    checked = cand.source != "target"
    drop = lambda why, kind: DroppedRun(budget, s.hidden_size, s.num_layers, why, kind)  # noqa: E731
    fpt = r.train_flops_per_token(s)
    seq = s.seq_length
    wanted = cand.batch_size
    if wanted is None:
        exact = budget / fpt / (r.target_steps * seq)
        wanted = 1 if exact <= 1 else 2 ** math.ceil(math.log2(exact))
    batch = wanted
    if cand.batch_size is None:
        while r.learning_rate(batch, s.hidden_size) > r.max_lr and batch > 1:
            batch //= 2
    lr = cand.lr if cand.lr is not None else r.learning_rate(batch, s.hidden_size)
    if checked and batch < r.min_batch:
        if batch < wanted:
            why = f"batch {batch} < min_batch {r.min_batch} after the LR cap {r.max_lr:g} halved it from {wanted}"
            return drop(why, "lr_cap")
        return drop(
            f"budget too small: batch {batch} < min_batch {r.min_batch} at ~{r.target_steps} steps",
            "min_batch",
        )
    steps = round(budget / (fpt * batch * seq))
    if steps < 1 or batch < 1:
        return drop(f"budget too small for one step of batch {batch}", "too_small")
    achieved = fpt * batch * seq * steps
    if checked and abs(achieved - budget) / budget > r.flop_tolerance:
        return drop(
            f"rounded steps miss the budget by {abs(achieved / budget - 1):.1%} > {r.flop_tolerance:.1%}",
            "tolerance",
        )
    if checked and steps >= r.max_steps:
        return drop(f"steps {steps} >= max_steps {r.max_steps}", "max_steps")
    return PlannedRun(
        run_name(rule.name, budget, s, batch),
        rule.name,
        budget,
        s,
        batch,
        steps,
        lr,
        r,
        cand.source,
    )


def plan(budgets: list[float], rule: Rule, *, allow_empty: bool = False) -> Plan:
    """Plan every budget.  A budget without any feasible run is an error unless allow_empty."""
    if not budgets:
        raise ScalingError("no budgets given")
    for b in budgets:
        if not (isinstance(b, int | float) and math.isfinite(b) and b > 0):
            raise ScalingError(f"budget must be a positive finite number of FLOPs, got {b!r}")
    runs: list[PlannedRun] = []
    dropped: list[DroppedRun] = []
    empty: list[str] = []
    for budget in sorted(set(float(b) for b in budgets)):
        cands, rejected = rule.candidates(budget)
        for spec, why in rejected:
            dropped.append(DroppedRun(budget, int(spec.get("width", 0)), 0, why))
        got = []
        for cand in cands:
            res = plan_candidate(budget, cand, rule)
            (got if isinstance(res, PlannedRun) else dropped).append(res)
        seen: set[str] = set()
        for run in got:  # identical shapes from ladder and fixed entries: keep the first
            if run.name not in seen:
                seen.add(run.name)
                runs.append(run)
        if not got:
            mine = [d for d in dropped if d.budget == budget]
            kinds = Counter(d.kind for d in mine)
            example = {}
            for d in mine:
                example.setdefault(d.kind, d)
            summary = (
                "; ".join(
                    f"{n} shape(s): {example[k].reason}, e.g. width {example[k].width}"
                    for k, n in kinds.most_common(3)
                )
                or "no candidate shapes"
            )
            empty.append(f"{budget:.3g} ({summary})")
    if empty and (not allow_empty or not runs):
        raise ScalingError(
            f"no feasible run for rule {rule.name!r} at budget(s) {', '.join(empty)}: "
            "every shape was dropped; try another budget, --rule tiny, "
            "or relax --min-batch/--max-steps/--target-steps"
        )
    return Plan(runs, dropped)


def format_table(runs: list[PlannedRun]) -> str:
    """Fixed-width text table of the plan (params = total count)."""
    rows = [[_fmt(d[c]) for c in PLAN_COLUMNS] for d in (r.to_dict() for r in runs)]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(PLAN_COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(PLAN_COLUMNS), *(line(row) for row in rows)])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 100_000:
        return f"{v / 1e6:.2f}M" if abs(v) < 1e9 else f"{v / 1e9:.3f}B"
    return str(v)
