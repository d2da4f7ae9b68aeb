#!/usr/bin/env python
"""Thin wrapper: ``tools/scaling/soda_scaling.py <plan|launch|collect|fit|predict> ...`` is
``python -m megatron_soda.scaling ...`` (see docs/scaling.md)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_soda.scaling.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
