"""The conversion tools: ``tools/checkpoint/{convert_to_hf,convert_from_hf,check_hf_loss}.py``,
installed as the console scripts ``soda-convert-to-hf``, ``soda-convert-from-hf`` and
``soda-check-hf-loss``.  Each ``*_main(argv)`` returns the exit status."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

TO_HF = """Convert a megatron_soda checkpoint (any TP/PP/DP layout) into a Hugging Face directory:
Qwen3ForCausalLM weights (safetensors), config.json, generation_config.json and the SODA
tokenizer (audio tokens as U+E000 + index characters).  Runs on a CPU in one process.

    python tools/checkpoint/convert_to_hf.py --load CKPT_DIR --save HF_DIR [--iteration N] [--dtype bf16|fp32]
"""

FROM_HF = """Convert a Hugging Face Qwen3ForCausalLM directory into a megatron_soda checkpoint at a given
tensor/pipeline-parallel layout (written by TP x PP CPU processes with the trainer's own code).

Sources: a SODA model (tokenizer with the SODA markers and audio characters: a released SODA
model or one written by convert_to_hf.py), or a plain Qwen3 text model for a warm start done as
the authors did theirs: its vocabulary is extended with the SODA markers and audio tokens (new
rows: mean of the existing rows + N(0, 0.02^2)), and it trains with SODA's RoPE.

    python tools/checkpoint/convert_from_hf.py --load HF_DIR --save CKPT_DIR \\
        --tensor-model-parallel-size T --pipeline-model-parallel-size P [--tokenizer BASE_TOKENIZER_JSON]

The checkpoint is iteration 0, weights only: pretrain_soda.py --load CKPT_DIR [--finetune] starts
a fresh optimizer, learning-rate schedule and data order from it (the command is printed).
"""

CHECK_HF_LOSS = """Check a converted HF model against the training run: score the held-out samples the trainer
evaluated and compare with the validation loss it reported.  Prints one PASS/FAIL line.

    python tools/checkpoint/check_hf_loss.py --hf HF_DIR [--load CKPT_DIR] [--metrics-jsonl FILE]

``--load`` defaults to the checkpoint the HF directory was converted from (soda_conversion.json);
``--metrics-jsonl`` to the run's own; ``--data-path`` replaces the run's blend (shards moved).
"""


def _parser(description: str) -> argparse.ArgumentParser:
    # megatron warns "Transformer Engine and Apex are not installed" when it is imported
    warnings.filterwarnings("ignore", module=r"megatron\.")
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _run(
    tool: str,
    convert: Callable[..., Any],
    args: argparse.Namespace,
    positional: Sequence[str],
    keywords: Sequence[str] = (),
) -> int:
    """``convert`` called with the parsed flags named in ``positional`` (in order) and
    ``keywords`` (by name); a refused conversion is one ``TOOL: error:`` line and status 1."""
    from megatron_soda.convert.errors import ConversionError

    try:
        convert(
            *(getattr(args, name) for name in positional),
            **{name: getattr(args, name) for name in keywords},
        )
    except (ConversionError, ValueError, OSError) as e:
        print(f"{tool}: error: {e}", file=sys.stderr)
        return 1
    return 0


def to_hf_main(argv: list[str] | None = None) -> int:
    p = _parser(TO_HF)
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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --save directory (only once the new one is complete: a failed "
        "or interrupted conversion leaves it as it was)",
    )
    args = p.parse_args(argv)
    from megatron_soda.convert.to_hf import convert_to_hf

    fields = ("load", "save", "iteration", "dtype", "max_shard_size", "overwrite")
    return _run("convert_to_hf.py", convert_to_hf, args, fields)


def from_hf_main(argv: list[str] | None = None) -> int:
    from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

    p = _parser(FROM_HF)
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
        help=f"audio codebooks (warm start: default {DEFAULT_NUM_CODEBOOKS}; SODA model: taken "
        "from its tokenizer, must match it if given)",
    )
    p.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="recorded sequence length (default: max_position_embeddings; a warm start with "
        "--warm-start-arch soda: 4096, SODA's)",
    )
    p.add_argument(
        "--new-row-noise",
        type=float,
        default=0.02,
        help="warm start: std of the Gaussian noise added to the mean row for each new vocabulary "
        "row (default 0.02, the authors')",
    )
    p.add_argument(
        "--new-row-noise-unit",
        choices=("absolute", "std"),
        default="absolute",
        help="warm start: --new-row-noise as is (default), or in units of the old rows' "
        "per-dimension std",
    )
    p.add_argument(
        "--warm-start-layout",
        choices=("authors", "compact"),
        default="authors",
        help="warm start: 'authors' makes a Qwen tokenizer the authors' Qwen3x base (ids as in "
        "their warm-start tokenizer); 'compact' extends the text tokenizer as it is",
    )
    p.add_argument(
        "--warm-start-arch",
        choices=("soda", "source"),
        default="soda",
        help="warm start: SODA's RoPE (Llama-3, base 500000, factor 8), RMSNorm epsilon 1e-5 and "
        "sequence length 4096 as in the authors' runs (default), or the text model's own",
    )
    p.add_argument("--seed", type=int, default=1234, help="warm start: seed of that noise")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --save directory (only once the new one is complete: a failed "
        "or interrupted conversion leaves it as it was)",
    )
    args = p.parse_args(argv)
    from megatron_soda.convert.from_hf import convert_from_hf

    layout = ("load", "save", "tensor_model_parallel_size", "pipeline_model_parallel_size")
    options = (
        "tokenizer",
        "num_codebooks",
        "seq_length",
        "new_row_noise",
        "new_row_noise_unit",
        "warm_start_layout",
        "warm_start_arch",
        "seed",
        "overwrite",
    )
    return _run("convert_from_hf.py", convert_from_hf, args, layout, options)


def check_hf_loss_main(argv: list[str] | None = None) -> int:
    p = _parser(CHECK_HF_LOSS)
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
