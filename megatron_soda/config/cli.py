"""The thin command-line layer: argv <-> :class:`TrainConfig`, with Megatron-LM's flag names.

Every flag is generated from the config dataclasses (:mod:`megatron_soda.config.fields`), so a
flag is renamed, added or documented in its section's file only.  :func:`flags_for` is the one
command builder for everything that launches the trainer (scaling sweeps, conversion hints,
benchmarks, tests): it spells given field values as flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import bool_flags, flag_names, flag_of, meta, value_type
from megatron_soda.config.model import ModelConfig, architecture_fields
from megatron_soda.config.train import SECTIONS, TrainConfig
from megatron_soda.models.config import FIELD_CHOICES

_TITLES = {
    "model": "model",
    "parallel": "device and parallelism",
    "precision": "precision and kernels",
    "data": "data",
    "optim": "batch, optimizer and schedule",
    "checkpoint": "checkpoints and evaluation",
    "task_eval": "in-training task evaluation (docs/evaluation.md)",
    "sft": "supervised fine-tuning (docs/finetuning.md)",
    "logging": "logging",
}
_ARCH_DEST = "architecture:"


def _add_field(group: argparse._ArgumentGroup, cls: type, f: dataclasses.Field) -> None:
    m = meta(f)
    typ, shape = value_type(cls, f)
    kwargs: dict[str, Any] = {"dest": f.name, "help": m["help"] or None}
    if shape == "dict":  # the architecture overrides: one flag per preset field
        for name, arch_type in architecture_fields():
            if arch_type is bool:
                on, off = bool_flags(name)
                group.add_argument(on, dest=_ARCH_DEST + name, action="store_const", const=True, default=None,
                                   help=f"override the preset's {name} (on)")
                group.add_argument(off, dest=_ARCH_DEST + name, action="store_const", const=False,
                                   help=f"override the preset's {name} (off)")
                continue
            group.add_argument(flag_of(name), dest=_ARCH_DEST + name, type=arch_type, default=None,
                               choices=FIELD_CHOICES.get(name), metavar=name.upper(),
                               help=f"override the preset's {name}")
        return
    if typ is bool:
        if m["negative"]:
            group.add_argument(m["negative"], action="store_false", default=True, **kwargs)
        else:
            group.add_argument(*flag_names(f), action="store_true", default=False, **kwargs)
        return
    kwargs.update(type=typ, choices=m["choices"], metavar=m["metavar"])
    if shape == "list":
        kwargs["nargs"] = "*"
    elif shape == "tuple3":
        kwargs["nargs"] = 3
    if m["required"]:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default
    group.add_argument(*flag_names(f), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_soda.py",
        description="Pretrain SODA (native audio foundation) models on megatron-core.",
        allow_abbrev=False,
    )
    for name, cls in SECTIONS.items():
        group = parser.add_argument_group(_TITLES[name])
        for f in dataclasses.fields(cls):
            _add_field(group, cls, f)
    return parser


def config_from_namespace(ns: argparse.Namespace) -> TrainConfig:
    values = vars(ns)
    built = {}
    for name, cls in SECTIONS.items():
        kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        if cls is ModelConfig:
            kwargs["architecture"] = {k[len(_ARCH_DEST):]: v for k, v in values.items()
                                      if k.startswith(_ARCH_DEST) and v is not None}
        built[name] = cls(**kwargs)
    return TrainConfig(**built)


def parse_argv(argv: Sequence[str] | None = None) -> TrainConfig:
    """argv -> validated config; a bad flag exits with status 2 and argparse's usage and
    ``error:`` line, a bad value (flags that contradict each other, a layout that does not
    divide) with the ``error:`` line alone."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(ns).validate()
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def _field_flags(cls: type, f: dataclasses.Field, value: Any) -> list[str]:
    typ, shape = value_type(cls, f)
    if value is None:
        return []
    if shape == "dict":
        out = []
        for k, v in value.items():
            if isinstance(v, bool):
                out.append(bool_flags(k)[0 if v else 1])
            elif v is not None:
                out += [flag_of(k), str(v)]
        return out
    m = meta(f)
    if typ is bool:
        if m["negative"]:
            return [] if value else [m["negative"]]
        return [flag_names(f)[0]] if value else []
    if shape in ("list", "tuple3"):
        return [flag_names(f)[0], *map(str, value)]
    return [flag_names(f)[0], str(value)]


def flags_for(values: Mapping[str, Any]) -> list[str]:
    """``pretrain_soda.py`` flags that set exactly the given fields (``{"hidden_size": 512,
    "data_path": [...], ...}``; architecture fields by name; None values are left out), in
    the parser's order.  Unknown names are an error, so a renamed field cannot be missed."""
    arch_names = [n for n, _ in architecture_fields()]
    known = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)} | set(arch_names)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"not a pretrain_soda.py option: {', '.join(sorted(unknown))}")
    out: list[str] = []
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            if cls is ModelConfig and f.name == "architecture":
                arch = dict(values.get("architecture") or {})
                arch.update({n: values[n] for n in arch_names if n in values})
                out += _field_flags(cls, f, {n: arch[n] for n in arch_names if n in arch})
            elif f.name in values:
                out += _field_flags(cls, f, values[f.name])
    return out


def to_argv(config: TrainConfig) -> list[str]:
    """Flags that rebuild ``config``: the required ones and every value that is not the default."""
    values: dict[str, Any] = {}
    for section in config.sections().values():
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            default = f.default if f.default is not dataclasses.MISSING else object()
            if value != default and not (f.name == "architecture" and not value):
                values[f.name] = value
    return flags_for(values)
