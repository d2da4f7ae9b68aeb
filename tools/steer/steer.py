#!/usr/bin/env python
"""Extract steering vectors from text and sweep their layer x strength (``soda-steer`` =
``python -m megatron_soda.steer``; see ``--help`` and docs/steering.md)."""

from megatron_soda.steer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
