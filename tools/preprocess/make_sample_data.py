#!/usr/bin/env python
"""Write a small real speech corpus (espeak-ng reading public-domain Shakespeare) in the
preprocessing tool's input formats, and bad inputs (``soda-make-sample-data``; see ``--help``)."""

from megatron_soda.testing.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
