"""Shape and hyperparameter rules for IsoFLOP sweeps.

A :class:`Rule` is (which shapes to try at a budget) + (a :class:`Recipe`: how batch, steps, LR
and optimizer settings follow from shape and budget, and which runs are infeasible).  Shapes come
from a width ladder (SODA's depth-from-width formula), from hand-picked entries (optionally only
in a budget range, optionally with a fixed batch/LR), or from a user callable.

Built-in rules: ``soda`` (SODA section 5, exactly) and ``tiny`` (widths 64..512, seq 256, for
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

FLOP_COUNTS = ("levanter", "levanter_causal", "6n", "6n_non_embedding")


@dataclass(frozen=True)
class Recipe:
    """Training-hyperparameter rule and feasibility limits (defaults: SODA section 5)."""

    seq_length: int = 4096
    vocab_size: int = SODA_VOCAB_SIZE
    num_codebooks: int = DEFAULT_NUM_CODEBOOKS  # passed to the trainer; keep consistent with vocab_size
    # Count the vocabulary padded to a multiple of this (the trainer pads its embedding/output
    # rows to 128 and computes them).  1 for SODA's rule: its published anchor is unpadded.
    pad_vocab_to: int = 1
    target_steps: int = 2**16  # batch = power of two at or above tokens / (target_steps * seq)
    lr_constant: float = 0.33  # lr = lr_constant * sqrt(batch) / width
    max_lr: float = 0.01  # halve the batch while lr > max_lr
    min_batch: int = 8  # drop runs whose batch ends below this
    max_steps: int = 400_000  # drop runs with steps >= this
    beta1: float = 0.95
    beta2_base: float = 0.98  # beta2 = beta2_base ** (batch / beta2_batch)
    beta2_batch: float = 128.0
    eps: float = 1e-15
    weight_decay: float = 0.1
    warmup: float = 0.1  # fractions of the run (WSD: warmup, constant, linear decay to 0)
    decay: float = 0.2
    z_loss: float = 0.0
    grad_clip: float = 1.0
    lr_schedule: str = "WSD"
    flop_tolerance: float = 0.01  # drop runs whose rounded steps miss the budget by more
    flop_count: str = "levanter"  # which count defines the budget: see FLOP_COUNTS

    def __post_init__(self) -> None:
        if self.flop_count not in FLOP_COUNTS:
            raise ScalingError(f"flop_count must be one of {FLOP_COUNTS}, got {self.flop_count!r}")
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
        if self.flop_count == "levanter":
            return training_flops_per_token(shape)
        if self.flop_count == "levanter_causal":
            return training_flops_per_token(shape, attention="causal")
        return kaplan_flops_per_token(shape, include_embeddings=self.flop_count == "6n")


@dataclass(frozen=True)
class WidthLadder:
    """Widths in steps; depth, heads and FFN follow from the width (SODA's formula)."""

    min_width: int = 128
    max_width: int = 2048
    step: int = 128
    large_step: int = 256  # used for budgets above large_step_above
    large_step_above: float = 9e18
    widths: tuple[int, ...] | None = None  # explicit widths replace the range
    head_dim: int = 128  # heads = width / head_dim
    kv_heads: int | None = None  # None: as many KV heads as query heads
    ffn_mult: int = 4
    depth_base: float = (
        64.0  # layers = round(d / (depth_base + depth_log_coef*log2 d - depth_offset))
    )
    depth_log_coef: float = 4.0
    depth_offset: float = 7.0

    def widths_for(self, budget: float) -> list[int]:
        if self.widths is not None:
            return sorted(int(w) for w in self.widths)
        step = self.large_step if budget > self.large_step_above else self.step
        if step < 1 or self.min_width < 1 or self.max_width < self.min_width:
            raise ScalingError(f"bad width ladder: {self.min_width}..{self.max_width} step {step}")
        return list(range(self.min_width, self.max_width + 1, step))

    def num_layers(self, width: int) -> int:
        denom = self.depth_base + self.depth_log_coef * math.log2(width) - self.depth_offset
        return max(1, round(width / denom))


@dataclass(frozen=True)
class Candidate:
    """One shape to try at a budget; batch/lr set here override the recipe."""

    shape: ModelShape
    batch_size: int | None = None
    lr: float | None = None
    source: str = "ladder"


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
        "soda": Rule("soda"),
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
