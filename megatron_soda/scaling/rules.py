"""Shape and hyperparameter rules for IsoFLOP sweeps.

A :class:`Rule` is (which shapes to try at a budget) + (a :class:`Recipe`: how batch, steps, LR
and optimizer settings follow from shape and budget, and which runs are infeasible).  Shapes come
from a width ladder (SODA's depth-from-width formula), from hand-picked entries (optionally only
in a budget range, optionally with a fixed batch/LR), or from a user callable.

Built-in rules: ``soda`` (SODA section 5, exactly) and ``tiny`` (widths 64..512, seq 256, for
CPU-sized studies).  Rule files (JSON/YAML) and ``module:attr`` / ``file.py:attr`` callables are
loaded by :func:`load_rule`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.flops import (
    ModelShape,
    kaplan_flops_per_token,
    training_flops_per_token,
)

CODEBOOK_SIZE = 2048  # Mimi; same constant as megatron_soda.tokenizer.layout (not imported: cheap)
LLAMA3_TEXT_VOCAB = 128_256
NUM_MARKERS = 4


def soda_vocab_size(
    num_codebooks: int = 8, text_vocab: int = LLAMA3_TEXT_VOCAB, added_specials: int = 0
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
    num_codebooks: int = 8  # passed to the trainer; keep consistent with vocab_size
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
            new = dataclasses.replace(new, recipe=_replace_checked(new.recipe, recipe, "recipe"))
        if ladder:
            if new.ladder is None:
                raise ScalingError(
                    f"rule {new.name!r} has no width ladder to override ({sorted(ladder)})"
                )
            new = dataclasses.replace(new, ladder=_replace_checked(new.ladder, ladder, "ladder"))
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
        vals[name] = value if isinstance(value, bool) else _as_int(value, key, rule.name)
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


def load_rule(spec: str) -> Rule:
    """``soda`` / ``tiny``, a ``.json``/``.yaml`` rule file, or ``module:attr`` / ``file.py:attr``.

    A callable attr is called as ``attr(budget)`` and returns shapes (ModelShape or mappings);
    it gets SODA's recipe (CLI overrides still apply).  A Rule attr is used as is.
    """
    builtins = builtin_rules()
    if spec in builtins:
        return builtins[spec]
    if spec.lower().endswith((".json", ".yaml", ".yml")):
        return _rule_from_file(spec)
    if ":" in spec:
        return _rule_from_callable(spec)
    raise ScalingError(
        f"unknown rule {spec!r}: use one of {sorted(builtins)}, a .json/.yaml rule file, or module:attr"
    )


def _rule_from_file(path: str) -> Rule:
    if not os.path.isfile(path):
        raise ScalingError(f"rule file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.lower().endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        raise ScalingError(f"rule file {path}: cannot parse: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ScalingError(f"rule file {path}: top level must be a mapping")
    allowed = {"name", "base", "recipe", "ladder", "shapes"}
    unknown = set(data) - allowed
    if unknown:
        raise ScalingError(
            f"rule file {path}: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}"
        )
    base_name = data.get("base", "soda")
    if base_name not in builtin_rules():
        raise ScalingError(f"rule file {path}: base must be one of {sorted(builtin_rules())}")
    rule = dataclasses.replace(
        builtin_rules()[base_name], name=str(data.get("name", os.path.basename(path)))
    )
    if "ladder" in data and data["ladder"] is None:
        rule = dataclasses.replace(rule, ladder=None)
    try:
        rule = rule.with_overrides(data.get("recipe") or None, data.get("ladder") or None)
    except ScalingError as e:
        raise ScalingError(f"rule file {path}: {e}") from None
    fixed = []
    for i, entry in enumerate(data.get("shapes") or []):
        if not isinstance(entry, dict):
            raise ScalingError(f"rule file {path}: shapes[{i}] must be a mapping")
        entry = dict(entry)
        extra = {
            k: entry.pop(k) for k in ("min_budget", "max_budget", "batch_size", "lr") if k in entry
        }
        fe = FixedEntry(
            shape=entry,
            min_budget=_as_float(extra.get("min_budget", 0.0), "min_budget", path),
            max_budget=_as_float(extra.get("max_budget", math.inf), "max_budget", path),
            batch_size=None
            if "batch_size" not in extra
            else _as_int(extra["batch_size"], "batch_size", path),
            lr=None if "lr" not in extra else _as_float(extra["lr"], "lr", path),
        )
        shape_from_mapping(fe.shape, rule)  # validate now, not at plan time
        fixed.append(fe)
    rule = dataclasses.replace(rule, fixed=tuple(fixed))
    if rule.ladder is None and not rule.fixed:
        raise ScalingError(f"rule file {path}: no ladder and no shapes: nothing to plan")
    return rule


def _rule_from_callable(spec: str) -> Rule:
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise ScalingError(f"rule module {target} does not exist")
            mod_spec = importlib.util.spec_from_file_location("soda_user_rule", target)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as e:
        raise ScalingError(f"cannot import rule module {target!r}: {e}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ScalingError(f"rule module {target!r} has no attribute {attr!r}")
    if isinstance(obj, Rule):
        return obj
    if callable(obj):
        return Rule(name=attr, ladder=None, generator=obj)
    raise ScalingError(f"{spec} is neither a Rule nor a callable budget -> shapes")


def _replace_checked(obj: Any, updates: Mapping[str, Any], what: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    clean: dict[str, Any] = {}
    for key, value in updates.items():
        if value is None:
            continue
        if key not in fields:
            raise ScalingError(f"unknown {what} field {key!r}; allowed: {sorted(fields)}")
        current = getattr(obj, key)
        if key == "widths":
            clean[key] = tuple(_as_int(w, "widths", what) for w in value)
        elif (
            isinstance(current, bool)
            or isinstance(value, str)
            and key in ("lr_schedule", "flop_count")
        ):
            clean[key] = value
        elif isinstance(current, int) and not isinstance(current, bool):
            clean[key] = _as_int(value, key, what)
        elif isinstance(current, float) or current is None:
            clean[key] = (
                _as_float(value, key, what) if key != "kv_heads" else _as_int(value, key, what)
            )
        else:
            clean[key] = value
    return dataclasses.replace(obj, **clean)


def _as_float(value: Any, key: str, where: str) -> float:
    try:
        return float(value)  # YAML reads 1e20 as a string; accept it
    except (TypeError, ValueError):
        raise ScalingError(f"{where}: {key} must be a number, got {value!r}") from None


def _as_int(value: Any, key: str, where: str) -> int:
    f = _as_float(value, key, where)
    if not math.isfinite(f) or f != int(f):
        raise ScalingError(f"{where}: {key} must be an integer, got {value!r}")
    return int(f)
