#!/usr/bin/env python
"""SODA's evaluation suite (``soda-eval`` = ``python -m megatron_soda.eval``; see ``--help`` and
docs/evaluation.md)."""

from megatron_soda.eval.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
