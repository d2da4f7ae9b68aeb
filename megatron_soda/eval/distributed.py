"""Data parallelism for the evaluators: under ``torchrun`` every rank scores its share of the
items and the results are gathered, in item order, on every rank.  Without torchrun (no
``WORLD_SIZE`` in the environment) it is one process and nothing is initialised."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class EvalWorld:
    def __init__(self, device: str | None = None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device in (None, "auto"):
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        elif device == "cuda":
            device = f"cuda:{local}"
        self.device = torch.device(device)
        self._own_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend)
            self._own_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: a contiguous block (so gathering keeps item order)."""
        n = len(items)
        start, stop = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return list(items[start:stop])

    def gather(self, part: list[Any]) -> list[Any]:
        """Concatenate every rank's ``part`` (rank order) on every rank."""
        if self.world == 1:
            return list(part)
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, part)
        return [x for p in parts for x in p]

    def close(self) -> None:
        if self._own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
