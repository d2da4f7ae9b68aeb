#!/usr/bin/env python
"""Thin wrapper: ``tools/scaling/soda_scaling.py <plan|launch|collect|fit|predict> ...`` is
``python -m megatron_soda.scaling ...`` (see docs/scaling.md)."""

from megatron_soda.scaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
