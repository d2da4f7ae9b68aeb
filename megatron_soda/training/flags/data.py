"""Data flags: Megatron blend syntax, splits, document masking."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="blend: 'PREFIX' or 'W1 PREFIX1 W2 PREFIX2 ...' (split by --split)")
    g.add_argument("--split", default=None,
                   help="train,valid,test proportions of --data-path documents (default 99,1,0: "
                   "there is no test pass; ignored when --valid-data-path is given)")
    g.add_argument("--train-data-path", nargs="*", default=None, help="blend used only for training")
    g.add_argument("--valid-data-path", nargs="*", default=None, help="held-out blend for validation")
    g.add_argument("--test-data-path", nargs="*", default=None)
    g.add_argument("--data-cache-path", default=None,
                   help="where megatron's sample indices are cached (default: next to the shards)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes per rank (default 2 on cuda, 0 on cpu, where the "
                   "ranks already use every core)")
    g.add_argument("--no-reset-attention-mask", dest="reset_attention_mask", action="store_false",
                   help="let attention cross document boundaries (default: documents are masked "
                   "apart at each EOS)")
    g.add_argument("--no-reset-position-ids", dest="reset_position_ids", action="store_false",
                   help="keep positions running across documents (default: restart at each document)")
    g.add_argument("--eod-mask-loss", action="store_true",
                   help="no loss at positions whose input is EOS (SODA trains on all positions)")
    g.add_argument("--data-check", choices=("full", "quick", "none"), default="full",
                   help="check shards before training: full scans token ids of shards up to "
                   "--data-check-max-gib (and samples larger ones), quick only checks files")
    g.add_argument("--data-check-max-gib", type=float, default=4.0)


def finalize(args: argparse.Namespace) -> None:
    if args.data_path and args.train_data_path:
        raise ValueError("give --data-path (with --split) or --train-data-path, not both")
    if not args.data_path and not args.train_data_path:
        raise ValueError("no training data: pass --data-path (or --train-data-path)")
    if args.split is None:
        args.split = "99,1,0"
    if args.num_workers is None:
        args.num_workers = 2 if args.device == "cuda" else 0
    if args.num_workers < 0:
        raise ValueError("--num-workers must be >= 0")
