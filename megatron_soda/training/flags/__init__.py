"""Command-line flags of ``pretrain_soda.py``, one module per concern.

Each module has ``add_arguments(parser)`` and ``finalize(args)`` (checks and derived defaults
that do not need torch.distributed); checks that need the world size or the model live next to
the code that needs them (e.g. :func:`optim.check_batch`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_soda.training.flags import checkpoint, data, logs, model, optim, parallel, precision

GROUPS = (model, parallel, precision, data, optim, checkpoint, logs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_soda.py",
        description="Pretrain SODA (native audio foundation) models on megatron-core.",
        allow_abbrev=False,
    )
    for group in GROUPS:
        group.add_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for group in GROUPS:
            group.finalize(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    return args


__all__ = ["build_parser", "parse_args"]
