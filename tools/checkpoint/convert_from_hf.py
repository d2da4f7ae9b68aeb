#!/usr/bin/env python
"""Convert a Hugging Face Qwen3 directory into a megatron_soda checkpoint
(``soda-convert-from-hf``; see ``--help`` and docs/conversion.md)."""

from megatron_soda.convert.cli import from_hf_main as main

if __name__ == "__main__":
    raise SystemExit(main())
