#!/usr/bin/env python
"""Generate speech or text with a SODA model (``soda-generate`` = ``python -m
megatron_soda.generate``; see ``--help`` and docs/evaluation.md)."""

from megatron_soda.generate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
