"""Checkpoint and evaluation-cadence flags."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpoints and evaluation")
    g.add_argument("--save", default=None, help="checkpoint directory; a run resumes from its latest checkpoint")
    g.add_argument("--load", default=None,
                   help="checkpoint directory (or one iter_* inside it) to start from; ignored once --save "
                   "holds a checkpoint of this run (resume wins, e.g. after a requeue)")
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-save-optim", action="store_true")
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true",
                   help="load weights only and start at iteration 0 (no optimizer/scheduler/data state)")
    g.add_argument("--exit-interval", type=int, default=None, help="stop (after saving) at this iteration")
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=10, help="global batches per evaluation")
    g.add_argument("--inject-crash-at-iteration", type=int, default=None,
                   help="testing: hard-exit (no cleanup, like a kill) after this iteration")
    g.add_argument("--inject-crash-in-save", type=int, default=None,
                   help="testing: hard-exit while the checkpoint of this iteration is being written")


def finalize(args: argparse.Namespace) -> None:
    if args.save_interval is not None and args.save_interval < 1:
        raise ValueError("--save-interval must be >= 1")
    if args.save_interval and not args.save:
        raise ValueError("--save-interval needs --save DIR")
    if args.eval_interval < 1 or args.eval_iters < 0:
        raise ValueError("--eval-interval must be >= 1 and --eval-iters >= 0")
    if args.load is not None and not os.path.exists(args.load):
        raise FileNotFoundError(f"--load {args.load}: no such directory")
