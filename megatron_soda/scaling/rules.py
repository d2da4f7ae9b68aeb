"""Shape and hyperparameter rules for IsoFLOP sweeps.

A :class:`Rule` is (which shapes to try at a budget) + (a :class:`Recipe`: how batch, steps, LR
and optimizer settings follow from shape and budget, and which runs are infeasible).  Shapes come
from a width ladder (SODA's depth-from-width formula), from hand-picked entries (optionally only
in a budget range, optionally with a fixed batch/LR), or from a user callable.

Built-in rules: ``soda`` (the authors' sweep code exactly: their ladder with its drop rules plus
their hand-picked target runs, :data:`SODA_TARGETS`) and ``tiny`` (widths 64..512, seq 256, for
CPU-sized studies).  Rule files (JSON/YAML) and ``module:attr`` / ``file.py:attr`` callables are
loaded by :func:`megatron_soda.scaling.rule_loading.load_rule`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from megatron_soda.format import CODEBOOK_SIZE, DEFAULT_NUM_CODEBOOKS, MARKERS
from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.flops import (
    TRAIN_OVER_FORWARD,
    ModelShape,
    kaplan_flops_per_token,
    training_flops_per_token,
)

LLAMA3_TEXT_VOCAB = 128_256
NUM_MARKERS = len(MARKERS)


def soda_vocab_size(
    num_codebooks: int = DEFAULT_NUM_CODEBOOKS,
    text_vocab: int = LLAMA3_TEXT_VOCAB,
    added_specials: int = 0,
) -> int:
    """Unified vocabulary size: text ids (+ added BOS/EOS) + 4 markers + codebooks x 2048."""
    return text_vocab + added_specials + NUM_MARKERS + num_codebooks * CODEBOOK_SIZE


SODA_VOCAB_SIZE = soda_vocab_size(8)  # 144,644
TINY_VOCAB_SIZE = soda_vocab_size(1, text_vocab=512, added_specials=2)  # small BPE + 1 codebook

# Which count defines a budget.  levanter: Levanter's lm_flops_per_token x 3 with its head dim
# d / h (SODA's, the paper's axis); levanter_causal: the same with the s-terms halved; true: the
# model's own head dim (what the trainer's TFLOP/s and MFU use); 6n / 6n_non_embedding: Kaplan.
FLOP_COUNTS = ("levanter", "levanter_causal", "true", "6n", "6n_non_embedding")
OPTIMIZERS = ("cautious", "adam")  # the trainer's --optimizer choices


@dataclass(frozen=True)
class Recipe:
    """Training-hyperparameter rule and feasibility limits.  Defaults are the authors' sweep:
    marin-community/marin ``experiments/audio/isoflop_audio_sweep.py`` @193d3656 (``IsoFlopSweepConfig``
    lines 114-155 and ``candidate_configs`` lines 192-261, cited per field as "sweep L<n>")."""

    seq_length: int = 4096  # sweep L121
    vocab_size: int = SODA_VOCAB_SIZE  # sweep L195-197 (144,644 for their tokenizer)
    num_codebooks: int = DEFAULT_NUM_CODEBOOKS  # passed to the trainer; keep consistent with vocab_size
    # Count the vocabulary padded to a multiple of this (the trainer pads its embedding/output
    # rows to 128 and computes them).  1 for SODA's rule: its published anchor is unpadded.
    pad_vocab_to: int = 1
    # batch = power of two at or above tokens / (target_steps * seq): sweep L122, L211-223
    target_steps: int = 2**16
    lr_constant: float = 0.33  # lr = lr_constant * sqrt(batch) / width: sweep L126, L224
    max_lr: float = 0.01  # halve the batch while lr > max_lr: sweep L225-227
    min_batch: int = 8  # drop runs whose batch ends below this: sweep L230-231
    max_steps: int = 400_000  # drop runs with steps >= this: sweep generate_isoflop_steps L335
    # Optimizer: CautiousConfig(adamc_weight_decay=True), sweep L129-143 (the trainer's
    # --optimizer cautious is Cautious Adam with AdamC decay).
    optimizer: str = "cautious"
    beta1: float = 0.95  # sweep L135
    beta2_base: float = 0.98  # beta2 = beta2_base ** (batch / beta2_batch): sweep L228
    beta2_batch: float = 128.0
    eps: float = 1e-15  # sweep L137
    weight_decay: float = 0.1  # sweep L132
    # fractions of the run (WSD: warmup, constant, linear decay to 0): sweep L133-134, L140-141
    # (min_lr_ratio 0, warmup 0.1, lr_schedule "linear", decay 0.2)
    warmup: float = 0.1
    decay: float = 0.2
    z_loss: float = 0.0  # the sweep sets none
    grad_clip: float = 1.0  # sweep L138 (max_grad_norm=1)
    lr_schedule: str = "WSD"
    flop_tolerance: float = 0.01  # drop runs whose rounded steps miss the budget: sweep L123, L258
    flop_count: str = "levanter"  # which count defines the budget: see FLOP_COUNTS

    def __post_init__(self) -> None:
        if self.flop_count not in FLOP_COUNTS:
            raise ScalingError(f"flop_count must be one of {FLOP_COUNTS}, got {self.flop_count!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ScalingError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in (
            "seq_length",
            "vocab_size",
            "target_steps",
            "min_batch",
            "max_steps",
            "pad_vocab_to",
        ):
            if int(getattr(self, name)) < 1:
                raise ScalingError(f"recipe {name} must be >= 1, got {getattr(self, name)}")

    def learning_rate(self, batch_size: int, width: int) -> float:
        return self.lr_constant * math.sqrt(batch_size) / width

    def beta2(self, batch_size: int) -> float:
        return self.beta2_base ** (batch_size / self.beta2_batch)

    def train_flops_per_token(self, shape: ModelShape) -> float:
        """Training FLOPs per token in the count that defines this recipe's budgets."""
        if self.flop_count == "levanter":
            return training_flops_per_token(shape, convention="paper")
        if self.flop_count == "levanter_causal":
            return training_flops_per_token(shape, attention="causal", convention="paper")
        if self.flop_count == "true":
            return training_flops_per_token(shape)
        return kaplan_flops_per_token(shape, include_embeddings=self.flop_count == "6n")


@dataclass(frozen=True)
class WidthLadder:
    """Widths in steps; depth, heads and FFN follow from the width (the authors' formula, sweep
    ``candidate_configs`` L199-209: ``range(2**7, 2**11 + 1, step)``, so the 256 step ends at
    1920)."""

    min_width: int = 128  # sweep L127 (2**min_hidden_pow)
    max_width: int = 2048  # sweep L128 (2**max_hidden_pow), inclusive
    step: int = 128  # sweep L202
    large_step: int = 256  # sweep L200, for budgets above large_step_above_forward
    # In forward-only FLOPs, the authors' unit (sweep L199: ``budget > 9e18``): the 256 step
    # starts above paper budget 2.7e19, i.e. at paper 3e19 (their 1e19).
    large_step_above_forward: float = 9e18
    widths: tuple[int, ...] | None = None  # explicit widths replace the range
    head_dim: int = 128  # heads = width / head_dim: sweep L125, L208
    kv_heads: int | None = None  # None: as many KV heads as query heads (sweep L209)
    ffn_mult: int = 4  # sweep L42, L206
    # layers = round(d / (depth_base + depth_log_coef*log2 d - depth_offset)): sweep L124, L207
    depth_base: float = 64.0
    depth_log_coef: float = 4.0
    depth_offset: float = 7.0

    def widths_for(self, budget: float) -> list[int]:
        """Widths at ``budget`` (training FLOPs, paper units)."""
        if self.widths is not None:
            return sorted(int(w) for w in self.widths)
        forward = budget / TRAIN_OVER_FORWARD
        step = self.large_step if forward > self.large_step_above_forward else self.step
        if step < 1 or self.min_width < 1 or self.max_width < self.min_width:
            raise ScalingError(f"bad width ladder: {self.min_width}..{self.max_width} step {step}")
        return list(range(self.min_width, self.max_width + 1, step))

    def num_layers(self, width: int) -> int:
        denom = self.depth_base + self.depth_log_coef * math.log2(width) - self.depth_offset
        return max(1, round(width / denom))


@dataclass(frozen=True)
class Candidate:
    """One shape to try at a budget; batch/lr set here override the recipe.  ``source``:
    ladder | fixed (rule-file shape) | callable | target (hand-picked run, see TargetRun)."""

    shape: ModelShape
    batch_size: int | None = None
    lr: float | None = None
    source: str = "ladder"


@dataclass(frozen=True)
class TargetRun:
    """A hand-picked width at one budget (paper units), planned with the recipe's batch, LR and
    steps but *without* its drop rules (min batch, FLOP tolerance, max steps): the authors'
    target script derives them the same way and filters nothing
    (``isoflop_audio_target.py`` ``compute_hyperparams_from_hidden_and_budget`` L126-178)."""

    budget: float
    width: int

    def matches(self, budget: float) -> bool:
        return math.isclose(budget, self.budget, rel_tol=1e-9)


# The authors' seven target runs, marin-community/marin experiments/audio/isoflop_audio_target.py
# @3f89a976 L299-307 (budgets there are forward-only: 1e20, 6e19, 3e19 -> paper x 3).  Widths
# 2048 and above, beyond the 256-step ladder's last width 1920, at the three largest budgets.
SODA_TARGETS: tuple[TargetRun, ...] = tuple(
    TargetRun(TRAIN_OVER_FORWARD * fwd, width)
    for fwd, width in (
        (1e20, 2304), (1e20, 2048), (6e19, 2048), (3e19, 2048), (6e19, 2304), (1e20, 3072),
        (1e20, 2816),
    )
)  # fmt: skip


@dataclass(frozen=True)
class FixedEntry:
    """A hand-picked shape (from a rule file), used for budgets in [min_budget, max_budget]."""

    shape: Mapping[str, Any]
    min_budget: float = 0.0
    max_budget: float = math.inf
    batch_size: int | None = None
    lr: float | None = None


ShapeGenerator = Callable[[float], Iterable["ModelShape | Mapping[str, Any]"]]


@dataclass(frozen=True)
class Rule:
    """Shapes to try at each budget plus the recipe that turns them into runs."""

    name: str
    recipe: Recipe = field(default_factory=Recipe)
    ladder: WidthLadder | None = field(default_factory=WidthLadder)
    fixed: tuple[FixedEntry, ...] = ()
    generator: ShapeGenerator | None = None
    targets: tuple[TargetRun, ...] = ()

    def candidates(self, budget: float) -> tuple[list[Candidate], list[tuple[dict[str, Any], str]]]:
        """Shapes for ``budget`` and the shapes rejected before planning (with a reason)."""
        out: list[Candidate] = []
        rejected: list[tuple[dict[str, Any], str]] = []
        if self.ladder is not None:
            for width in self.ladder.widths_for(budget):
                if width % self.ladder.head_dim:
                    rejected.append(
                        (
                            {"width": width},
                            f"width not divisible by head_dim {self.ladder.head_dim}",
                        )
                    )
                    continue
                out.append(Candidate(shape_from_mapping({"width": width}, self)))
        for entry in self.fixed:
            if entry.min_budget <= budget <= entry.max_budget:
                out.append(
                    Candidate(
                        shape_from_mapping(entry.shape, self), entry.batch_size, entry.lr, "fixed"
                    )
                )
        if self.generator is not None:
            for item in self.generator(budget):
                shape = item if isinstance(item, ModelShape) else shape_from_mapping(item, self)
                out.append(Candidate(shape, source="callable"))
        for target in sorted(self.targets, key=lambda t: t.width):
            if target.matches(budget):
                out.append(Candidate(shape_from_mapping({"width": target.width}, self), source="target"))
        return out, rejected

    def with_overrides(
        self, recipe: Mapping[str, Any] | None = None, ladder: Mapping[str, Any] | None = None
    ) -> Rule:
        """A copy with some Recipe / WidthLadder fields replaced (None values are ignored)."""
        new = self
        if recipe:
            new = dataclasses.replace(new, recipe=replace_checked(new.recipe, recipe, "recipe"))
        if ladder:
            if new.ladder is None:
                raise ScalingError(
                    f"rule {new.name!r} has no width ladder to override ({sorted(ladder)})"
                )
            new = dataclasses.replace(new, ladder=replace_checked(new.ladder, ladder, "ladder"))
        return new


_SHAPE_ALIASES = {
    "width": "hidden_size",
    "d": "hidden_size",
    "layers": "num_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_query_groups",
    "head_dim": "kv_channels",
    "ffn": "ffn_hidden_size",
    "vocab": "vocab_size",
    "seq": "seq_length",
}
_SHAPE_FIELDS = {f.name for f in dataclasses.fields(ModelShape)}


def shape_from_mapping(spec: Mapping[str, Any], rule: Rule) -> ModelShape:
    """Complete a partial shape (Megatron names or short aliases) from the rule's defaults."""
    vals: dict[str, Any] = {}
    for key, value in spec.items():
        name = _SHAPE_ALIASES.get(key, key)
        if name not in _SHAPE_FIELDS:
            allowed = sorted(_SHAPE_FIELDS | set(_SHAPE_ALIASES))
            raise ScalingError(
                f"unknown shape key {key!r} in rule {rule.name!r}; allowed: {allowed}"
            )
        vals[name] = value if isinstance(value, bool) else as_int(value, key, rule.name)
    if "hidden_size" not in vals:
        raise ScalingError(f"shape {dict(spec)} in rule {rule.name!r} has no width/hidden_size")
    d = vals["hidden_size"]
    ladder = rule.ladder or WidthLadder()
    vals.setdefault("num_layers", ladder.num_layers(d))
    vals.setdefault("kv_channels", ladder.head_dim)
    vals.setdefault("num_attention_heads", max(1, d // vals["kv_channels"]))
    vals.setdefault("num_query_groups", ladder.kv_heads or vals["num_attention_heads"])
    vals.setdefault("ffn_hidden_size", ladder.ffn_mult * d)
    vals.setdefault("vocab_size", rule.recipe.vocab_size)
    pad = rule.recipe.pad_vocab_to
    vals["vocab_size"] = -(-vals["vocab_size"] // pad) * pad
    vals.setdefault("seq_length", rule.recipe.seq_length)
    if vals["num_attention_heads"] % vals["num_query_groups"]:
        raise ScalingError(f"shape {dict(spec)}: heads must be a multiple of kv heads")
    return ModelShape(**vals)


def builtin_rules() -> dict[str, Rule]:
    tiny_recipe = Recipe(
        seq_length=256,
        vocab_size=TINY_VOCAB_SIZE,
        num_codebooks=1,
        pad_vocab_to=128,  # at this size the padded rows are a visible share of the FLOPs
        target_steps=256,
        max_lr=0.02,  # 0.01 with min batch 4 would exclude width 64 altogether
        min_batch=4,
        max_steps=100_000,
        flop_tolerance=0.02,
    )
    tiny_ladder = WidthLadder(min_width=64, max_width=512, step=64, large_step=64, head_dim=64)
    return {
        "soda": Rule("soda", targets=SODA_TARGETS),
        "tiny": Rule("tiny", recipe=tiny_recipe, ladder=tiny_ladder),
    }


def replace_checked(obj: Any, updates: Mapping[str, Any], what: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    clean: dict[str, Any] = {}
    for key, value in updates.items():
        if value is None:
            continue
        if key not in fields:
            raise ScalingError(f"unknown {what} field {key!r}; allowed: {sorted(fields)}")
        current = getattr(obj, key)
        if key == "widths":
            clean[key] = tuple(as_int(w, "widths", what) for w in value)
        elif (
            isinstance(current, bool)
            or isinstance(value, str)
            and key in ("lr_schedule", "flop_count")
        ):
            clean[key] = value
        elif isinstance(current, int) and not isinstance(current, bool):
            clean[key] = as_int(value, key, what)
        elif isinstance(current, float) or current is None:
            clean[key] = (
                as_float(value, key, what) if key != "kv_heads" else as_int(value, key, what)
            )
        else:
            clean[key] = value
    return dataclasses.replace(obj, **clean)


def as_float(value: Any, key: str, where: str) -> float:
    try:
        return float(value)  # YAML reads 1e20 as a string; accept it
    except (TypeError, ValueError):
        raise ScalingError(f"{where}: {key} must be a number, got {value!r}") from None


def as_int(value: Any, key: str, where: str) -> int:
    f = as_float(value, key, where)
    if not math.isfinite(f) or f != int(f):
        raise ScalingError(f"{where}: {key} must be an integer, got {value!r}")
    return int(f)
