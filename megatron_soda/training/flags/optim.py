"""Batch, optimizer and schedule flags.  Defaults are SODA's recipe (SODA_SPEC.md section 4):
Adam(0.98, 0.98, eps 1e-16), weight decay 0.033 (not on norms/embeddings), clip 1.0, WSD with
10% warmup and a linear decay to 0 over the last 20%."""

from __future__ import annotations

import argparse

from megatron_soda.training.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("batch, optimizer and schedule")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--global-batch-size", type=int, required=True)
    g.add_argument("--rampup-batch-size", nargs=3, type=int, default=None, metavar=("START", "INCR", "SAMPLES"),
                   help="grow the global batch from START by INCR over SAMPLES samples")
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--lr", type=float, default=None,
                   help="peak LR (default: SODA's 0.003*sqrt(batch/256)*sqrt(1024/hidden))")
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=("WSD", "cosine", "linear", "constant"), default="WSD")
    g.add_argument("--lr-warmup-fraction", type=float, default=None, help="default 0.1 (of --lr-decay-iters)")
    g.add_argument("--lr-warmup-iters", type=int, default=None)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default --train-iters")
    g.add_argument("--lr-wsd-decay-style", choices=("linear", "cosine", "exponential", "minus_sqrt"), default="linear")
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None)
    g.add_argument("--lr-wsd-decay-fraction", type=float, default=0.2, help="WSD decay share of --lr-decay-iters")
    g.add_argument("--weight-decay", type=float, default=0.033)
    g.add_argument("--adam-beta1", type=float, default=0.98)
    g.add_argument("--adam-beta2", type=float, default=0.98)
    g.add_argument("--adam-eps", type=float, default=1e-16)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--on-nonfinite-loss", choices=("stop", "skip"), default="stop",
                   help="a NaN/Inf loss stops the run (default) or skips that update")


def finalize(args: argparse.Namespace) -> None:
    for name in ("micro_batch_size", "global_batch_size", "train_iters"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.rampup_batch_size:
        start, increment, samples = args.rampup_batch_size
        if not (1 <= start <= args.global_batch_size and increment >= 1 and samples >= 0
                and (args.global_batch_size - start) % increment == 0):
            raise ValueError(f"--rampup-batch-size {start} {increment} {samples}: needs 1 <= START <= "
                             f"--global-batch-size {args.global_batch_size}, INCR >= 1 with "
                             "(global - START) a multiple of INCR, and SAMPLES >= 0")
    if args.lr_warmup_fraction is not None and args.lr_warmup_iters is not None:
        raise ValueError("give --lr-warmup-fraction or --lr-warmup-iters, not both")
    if args.lr_warmup_fraction is None and args.lr_warmup_iters is None:
        args.lr_warmup_fraction = 0.1
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_iters is None:
        args.lr_warmup_iters = int(args.lr_warmup_fraction * args.lr_decay_iters)
    if args.lr_wsd_decay_iters is None:
        args.lr_wsd_decay_iters = max(1, int(round(args.lr_wsd_decay_fraction * args.lr_decay_iters)))
    if args.lr_warmup_iters >= args.lr_decay_iters:
        raise ValueError(f"warmup ({args.lr_warmup_iters} iters) must be shorter than the decay "
                         f"horizon ({args.lr_decay_iters} iters)")


def check_batch(args: argparse.Namespace, data_parallel_size: int) -> None:
    """What megatron's micro-batch calculator would assert, as a clear error: every global batch
    of the run (the ramp-up's too) is a whole number of micro batches on every DP rank."""
    unit = args.micro_batch_size * data_parallel_size
    sizes = {"global batch": args.global_batch_size}
    if args.rampup_batch_size:  # then every ramp-up size START + k * INCR is a multiple too
        sizes.update({"ramp-up start batch": args.rampup_batch_size[0],
                      "ramp-up increment": args.rampup_batch_size[1]})
    for what, size in sizes.items():
        if size % unit:
            raise ConfigError(f"{what} {size} is not a multiple of micro batch "
                             f"{args.micro_batch_size} x data-parallel size {data_parallel_size}")
