"""The ``--steer*`` flags shared by ``python -m megatron_soda.generate`` and ``eval pairs|
likelihood``, and the helper that turns them into a :class:`~megatron_soda.steer.hooks.Steering`.

Strength: ``--steer-alpha-units raw`` (default) adds ``alpha x`` the stored vector (raw mean
shift, as the released code; probe/SAE vectors are unit vectors); ``norm`` adds ``alpha x``
the layer's median residual norm (stored with the vector) ``x`` the unit vector, so alpha 1
is a shift as large as a typical token's residual.  Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

# the position scopes and strength units are shared with the trainer's task evaluator
# (--eval-tasks-steer*), which sits below steer/: defined in models/steering.py
from megatron_soda.models.steering import ALPHA_UNITS, POSITIONS, in_units

if TYPE_CHECKING:
    from megatron_soda.steer.hooks import Steering

SCOPES = ("prefill", "all")
__all__ = ["ALPHA_UNITS", "POSITIONS", "SCOPES", "add_steer_args", "steer_record", "steering_from_args"]


def add_steer_args(p: argparse.ArgumentParser, scope: bool = True) -> None:
    g = p.add_argument_group("steering (docs/steering.md)")
    g.add_argument("--steer", default=None, metavar="VEC.safetensors",
                   help="steering-vector file (python -m megatron_soda.steer extract)")
    g.add_argument("--steer-layer", type=int, default=None,
                   help="decoder layer (0-based) whose output is steered (default: the file's "
                        "only layer)")
    g.add_argument("--steer-alpha", type=float, default=0.0, help="strength (0 = no steering)")
    g.add_argument("--steer-alpha-units", default="raw", choices=ALPHA_UNITS,
                   help="raw: alpha x the stored vector; norm: alpha x the layer's median "
                        "residual norm x the unit vector")
    g.add_argument("--steer-positions", default="audio", choices=POSITIONS,
                   help="which tokens are steered (markers never)")
    if scope:
        g.add_argument("--steer-scope", default="prefill", choices=SCOPES,
                       help="prefill: prompt positions only (the paper); all: generated tokens too")


def steering_from_args(args: argparse.Namespace, model: Any, tok: Any,
                       warn=lambda m: print(m, file=sys.stderr)) -> Steering | None:
    """The steering the flags ask for (``None`` without ``--steer``)."""
    from megatron_soda.steer.hooks import Steering
    from megatron_soda.steer.vectors import load_vectors

    if getattr(args, "steer", None) is None:
        if getattr(args, "steer_alpha", 0.0):
            raise ValueError("--steer-alpha needs --steer VEC.safetensors")
        return None
    sv = load_vectors(args.steer, model, tok, warn=warn)
    layer = args.steer_layer
    if layer is None:
        if len(sv.vectors) != 1:
            raise ValueError(f"{args.steer} holds layers {sorted(sv.vectors)}: choose one with "
                             "--steer-layer")
        layer = next(iter(sv.vectors))
    vec = in_units(sv.vector(layer), args.steer_alpha_units, sv.median_norm.get(layer),
                   f"{args.steer} layer {layer}")
    return Steering(vec, layer, float(args.steer_alpha), args.steer_positions,
                    getattr(args, "steer_scope", "prefill"))


def steer_record(args: argparse.Namespace, steer: Steering | None) -> dict[str, Any] | None:
    """What a results file records about the steering (None without it)."""
    if getattr(args, "steer", None) is None:
        return None
    return {"file": args.steer, "layer": steer.layer if steer else args.steer_layer,
            "alpha": args.steer_alpha, "alpha_units": args.steer_alpha_units,
            "positions": args.steer_positions, "scope": getattr(args, "steer_scope", None),
            "added_norm": float(steer.alpha * steer.vector.norm()) if steer else 0.0}
