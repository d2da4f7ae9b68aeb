#!/usr/bin/env python
"""Check a converted HF model against the training run: score the held-out samples the trainer
evaluated and compare with the validation loss it reported.  Prints one PASS/FAIL line.

    python tools/checkpoint/check_hf_loss.py --hf HF_DIR [--load CKPT_DIR] [--metrics-jsonl FILE]

``--load`` defaults to the checkpoint the HF directory was converted from (soda_conversion.json);
``--metrics-jsonl`` to the run's own; ``--data-path`` replaces the run's blend (shards moved).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings(
    "ignore", module=r"megatron\."
)  # "Transformer Engine and Apex are not installed"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--hf", required=True, help="directory written by convert_to_hf.py")
    p.add_argument(
        "--load", default=None, help="the megatron_soda checkpoint (default: the conversion source)"
    )
    p.add_argument(
        "--metrics-jsonl",
        default=None,
        help="the run's metrics (default: the run's --metrics-jsonl)",
    )
    p.add_argument(
        "--data-path", nargs="*", default=None, help="override the run's --data-path blend"
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="tolerance on the mean loss (default 1e-4 for fp32 runs, 5e-2 with bf16/fp16)",
    )
    args = p.parse_args(argv)
    from megatron_soda.convert.errors import ConversionError
    from megatron_soda.convert.loss_check import check_hf_loss

    try:
        r = check_hf_loss(args.hf, args.load, args.metrics_jsonl, args.data_path, args.atol)
    except (ConversionError, OSError) as e:
        print(f"check_hf_loss: FAIL: {e}")
        return 1
    tokens = (
        ""
        if r["tokens"] == r["trainer_tokens"]
        else f" (token counts differ: {r['tokens']} vs {r['trainer_tokens']})"
    )
    print(
        f"check_hf_loss: {'PASS' if r['passed'] else 'FAIL'}: transformers loss {r['hf_loss']:.6f} vs trainer "
        f"validation loss {r['trainer_loss']:.6f} at iteration {r['iteration']} on the same {r['tokens']} held-out "
        f"tokens: |diff| {r['abs_diff']:.2e} (tolerance {r['atol']:.0e}){tokens}"
    )
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
