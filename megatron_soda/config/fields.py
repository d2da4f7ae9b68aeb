"""How a config field becomes a command-line flag: the metadata of :func:`option`.

A field's flag is ``--`` + its name with ``-`` for ``_`` (Megatron-LM's convention) unless the
field names others; its argparse type and action follow from the annotation:

* ``bool`` -> ``store_true`` (or ``store_false`` under ``negative=``, for default-on options);
* ``T | None`` -> ``type=T``; ``list[T] | None`` -> ``nargs="*"``; ``tuple[int, int, int] | None``
  -> ``nargs=3``;
* ``dict`` fields (the architecture overrides) are expanded by the owning section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import Field
from typing import Any

CLI = "megatron_soda.cli"


def option(
    default: Any = None,
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    negative: str | None = None,
    choices: tuple[Any, ...] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    required: bool = False,
) -> Any:
    """A dataclass field with its command-line spelling.  ``flags``: the flag and its aliases
    (default ``--field-name``); ``negative``: the ``--no-...`` flag of a default-on bool."""
    meta = {"help": help, "flags": flags, "negative": negative, "choices": choices,
            "metavar": metavar, "required": required}
    return dataclasses.field(default=default, metadata={CLI: meta})


def required(help: str = "", **kwargs: Any) -> Any:
    """A field without a default (the flag is required on the command line)."""
    meta = {"help": help, "flags": (), "negative": None, "choices": kwargs.get("choices"),
            "metavar": None, "required": True}
    return dataclasses.field(metadata={CLI: meta})


def meta(f: Field) -> dict[str, Any]:
    return f.metadata.get(CLI, {"help": "", "flags": (), "negative": None, "choices": None,
                                "metavar": None, "required": False})


def flag_names(f: Field) -> tuple[str, ...]:
    """The flag of field ``f`` first, then its aliases."""
    return meta(f)["flags"] or ("--" + f.name.replace("_", "-"),)


def flag_of(name: str) -> str:
    """``hidden_size`` -> ``--hidden-size``."""
    return "--" + name.replace("_", "-")


def bool_flags(name: str) -> tuple[str, str]:
    """The on/off flags of a bool architecture field: ``use_rope_scaling`` ->
    (``--use-rope-scaling``, ``--no-rope-scaling``), Megatron-LM's spelling of the first."""
    return flag_of(name), flag_of("no_" + name.removeprefix("use_"))


def value_type(cls: type, f: Field) -> tuple[type, str]:
    """(element type, shape) of field ``f`` of dataclass ``cls``; shape is ``scalar``, ``list``,
    ``tuple3`` or ``dict``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    origin = typing.get_origin(hint)
    if origin is list:
        return typing.get_args(hint)[0], "list"
    if origin is tuple:
        return typing.get_args(hint)[0], "tuple3"
    if origin is dict or hint is dict:
        return dict, "dict"
    return hint, "scalar"
