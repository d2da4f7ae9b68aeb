"""``pretrain_soda.py`` command lines of the training benchmarks: the flags of a short
benchmark run (no evaluation, a log line and metrics record every iteration, quick data
check) and the ``torchrun`` launch around them."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from bench_paths import REPO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for the rendezvous of one run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_flags(
    *,
    device: str,
    model_size: str,
    tokenizer: str,
    num_codebooks: int,
    data_path: Sequence[str],
    data_cache_path: str,
    seq_length: int,
    micro_batch_size: int,
    global_batch_size: int,
    train_iters: int,
    parallel: Sequence[str] = (),
    lr: str | None = None,
    metrics_jsonl: str | None = None,
) -> list[str]:
    """pretrain_soda.py's flags for one benchmark run (spelled by the trainer's command
    builder), then ``parallel`` (model-parallel flags as given); ``lr`` default: the trainer's."""
    given = {k: v for k, v in locals().items() if k not in ("parallel", "lr", "data_path")}  # named as config fields
    from megatron_soda.config.cli import flags_for

    short_run = {"seed": 1, "log_interval": 1, "eval_iters": 0, "split": "100,0,0", "data_check": "quick"}
    lr_value = float(lr) if lr else None
    return [*flags_for({**given, **short_run, "data_path": list(data_path), "lr": lr_value}), *parallel]


def torchrun_command(
    torchrun: str, nproc_per_node: int, master_port: int | None, flags: Sequence[str]
) -> list[str]:
    """``torchrun ... pretrain_soda.py FLAGS`` (a free port unless ``master_port``)."""
    return [
        torchrun,
        "--nproc_per_node",
        str(nproc_per_node),
        "--master_port",
        str(master_port or free_port()),
        os.path.join(REPO, "pretrain_soda.py"),
        *flags,
    ]
