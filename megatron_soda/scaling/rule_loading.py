"""Loading a sweep rule by name: a built-in (``soda``, ``tiny``), a JSON/YAML rule file, or a
``module:attr`` / ``file.py:attr`` callable (see :mod:`megatron_soda.scaling.rules`)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os

from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.rules import (
    FixedEntry,
    Rule,
    TargetRun,
    as_float,
    as_int,
    builtin_rules,
    shape_from_mapping,
)


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
    allowed = {"name", "base", "recipe", "ladder", "shapes", "targets"}
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
            min_budget=as_float(extra.get("min_budget", 0.0), "min_budget", path),
            max_budget=as_float(extra.get("max_budget", math.inf), "max_budget", path),
            batch_size=None
            if "batch_size" not in extra
            else as_int(extra["batch_size"], "batch_size", path),
            lr=None if "lr" not in extra else as_float(extra["lr"], "lr", path),
        )
        shape_from_mapping(fe.shape, rule)  # validate now, not at plan time
        fixed.append(fe)
    rule = dataclasses.replace(rule, fixed=tuple(fixed))
    if "targets" in data:  # null / []: none; a list of {budget, width} replaces the base's
        rule = dataclasses.replace(rule, targets=_targets(data["targets"] or [], path))
    if rule.ladder is None and not rule.fixed and not rule.targets:
        raise ScalingError(f"rule file {path}: no ladder and no shapes: nothing to plan")
    return rule


def _targets(entries: object, path: str) -> tuple[TargetRun, ...]:
    if not isinstance(entries, list):
        raise ScalingError(f"rule file {path}: targets must be a list of {{budget, width}}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"budget", "width"}:
            raise ScalingError(
                f"rule file {path}: targets[{i}] must be {{budget: ..., width: ...}}"
            )
        out.append(
            TargetRun(
                as_float(entry["budget"], "budget", path), as_int(entry["width"], "width", path)
            )
        )
    return tuple(out)


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
