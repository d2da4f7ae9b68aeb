#!/usr/bin/env python
"""Convert a Hugging Face Qwen3ForCausalLM directory into a megatron_soda checkpoint at a given
tensor/pipeline-parallel layout (written by TP x PP CPU processes with the trainer's own code).

Sources: a SODA model (tokenizer with the SODA markers and audio characters, e.g. one written
by convert_to_hf.py), or a plain Qwen3 text model for a warm start: its vocabulary is extended
with the SODA markers and audio tokens (new rows: mean of the existing rows + small noise).

    python tools/checkpoint/convert_from_hf.py --load HF_DIR --save CKPT_DIR \\
        --tensor-model-parallel-size T --pipeline-model-parallel-size P [--tokenizer BASE_TOKENIZER_JSON]

The checkpoint is iteration 0, weights only: pretrain_soda.py --load CKPT_DIR [--finetune] starts
a fresh optimizer, learning-rate schedule and data order from it (the command is printed).
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
        "--load", required=True, help="Hugging Face model directory (config.json, *.safetensors)"
    )
    p.add_argument("--save", required=True, help="output checkpoint directory")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    p.add_argument(
        "--tokenizer",
        default=None,
        help="base text tokenizer.json (default: the one in --load; for a SODA model, its tokenizer "
        "identity then matches shards preprocessed with this file)",
    )
    p.add_argument(
        "--num-codebooks",
        type=int,
        default=None,
        help="audio codebooks (warm start: default 8; SODA model: must match it)",
    )
    p.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="recorded sequence length (default: max_position_embeddings)",
    )
    p.add_argument(
        "--new-row-noise",
        type=float,
        default=0.1,
        help="warm start: noise on the new vocabulary rows, in units of the old rows' std",
    )
    p.add_argument("--seed", type=int, default=1234, help="warm start: seed of that noise")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save directory")
    args = p.parse_args(argv)
    from megatron_soda.convert.errors import ConversionError
    from megatron_soda.convert.from_hf import convert_from_hf

    try:
        convert_from_hf(
            args.load,
            args.save,
            args.tensor_model_parallel_size,
            args.pipeline_model_parallel_size,
            tokenizer=args.tokenizer,
            num_codebooks=args.num_codebooks,
            seq_length=args.seq_length,
            new_row_noise=args.new_row_noise,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (ConversionError, ValueError, OSError) as e:
        print(f"convert_from_hf.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
