"""Logging flags: stdout, JSONL metrics, TensorBoard, Weights & Biases."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--metrics-jsonl", default=None,
                   help="one JSON record per logged step and per evaluation (default: "
                   "SAVE/metrics.jsonl, else TENSORBOARD_DIR/metrics.jsonl)")
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--wandb-project", default=None, help="log to Weights & Biases (needs wandb)")
    g.add_argument("--wandb-exp-name", default=None)
    g.add_argument("--wandb-save-dir", default=None)
    g.add_argument("--peak-tflops-per-device", type=float, default=None,
                   help="dense peak for MFU (default: known GPUs' bf16 peak; none on CPU)")


def finalize(args: argparse.Namespace) -> None:
    if args.log_interval < 1:
        raise ValueError("--log-interval must be >= 1")
    if args.metrics_jsonl is None:
        base = args.save or args.tensorboard_dir
        if base:
            args.metrics_jsonl = os.path.join(base, "metrics.jsonl")
    if args.wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("--wandb-project: wandb is not installed (pip install 'megatron_soda[wandb]')") from None
