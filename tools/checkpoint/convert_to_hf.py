#!/usr/bin/env python
"""Convert a megatron_soda checkpoint (any TP/PP/DP layout) into a Hugging Face directory:
Qwen3ForCausalLM weights (safetensors), config.json, generation_config.json and the SODA
tokenizer (audio tokens as U+E000 + index characters).  Runs on a CPU in one process.

    python tools/checkpoint/convert_to_hf.py --load CKPT_DIR --save HF_DIR [--iteration N] [--dtype bf16|fp32]
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
    p.add_argument(
        "--load", required=True, help="checkpoint directory (a run's --save) or one iter_* in it"
    )
    p.add_argument("--save", required=True, help="output Hugging Face directory")
    p.add_argument(
        "--iteration", type=int, default=None, help="iteration to convert (default: the latest)"
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default=None,
        help="weight dtype (default: the checkpoint's: fp32, or bf16 for bf16/fp16 runs)",
    )
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        help="split model.safetensors above this size (index file)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save directory")
    args = p.parse_args(argv)
    from megatron_soda.convert.errors import ConversionError
    from megatron_soda.convert.to_hf import convert_to_hf

    try:
        convert_to_hf(
            args.load, args.save, args.iteration, args.dtype, args.max_shard_size, args.overwrite
        )
    except (ConversionError, ValueError, OSError) as e:
        print(f"convert_to_hf.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
