#!/usr/bin/env python
"""Convert a megatron_soda checkpoint into a Hugging Face directory (``soda-convert-to-hf``;
see ``--help`` and docs/conversion.md)."""

from megatron_soda.convert.cli import to_hf_main as main

if __name__ == "__main__":
    raise SystemExit(main())
