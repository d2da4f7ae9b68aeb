#!/usr/bin/env python
"""Check a converted HF model's held-out loss against the training run (``soda-check-hf-loss``;
see ``--help`` and docs/conversion.md)."""

from megatron_soda.convert.cli import check_hf_loss_main as main

if __name__ == "__main__":
    raise SystemExit(main())
