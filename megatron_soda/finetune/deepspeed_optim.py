"""The optimizer and schedule of the DeepSpeed / plain-torch fine-tuner: SODA's Cautious AdamC
(:mod:`megatron_soda.optim.cautious`) as DeepSpeed's *client optimizer*, and megatron's LR
schedule.

DeepSpeed's ZeRO (stage 1/2/3, with or without CPU offload) keeps the fp32 master weights as flat
partitions and calls the client optimizer's ``step()`` on them: with stage 1/2 once per param
group, with stage 3 once per *sub-group* (``zero_optimization.sub_group_size``), the other groups'
``params`` emptied meanwhile.  Two things would then go wrong with a plain ``CautiousAdamC``:

* the step count (bias correction, mirrored into ``state["step"]``) would advance once per call,
  not once per update: :class:`CountedCautious` takes it from the training loop instead;
* ``mean(mask)`` would be taken over a whole flat partition, not per Levanter array:
  :func:`zero_statistics` maps every flat partition back to the parameters it holds (and, on
  several ranks, sums the counts over the data-parallel group), so the statistic is the megatron
  path's.  Stage 3 needs each param group in one sub-group (the generated config sets
  ``sub_group_size`` to 1e12, megatron-core-like one flat buffer per group); it is checked.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from megatron_soda.finetune.deepspeed_model import element_runs, statistic_group
from megatron_soda.optim.cautious import CautiousAdamC, MaskStatistics, Run


class CountedCautious(CautiousAdamC):
    """``CautiousAdamC`` whose step count is ``updates_done + 1`` (set by the loop), however many
    times one update calls ``step()``."""

    updates_done: int = 0

    def _group_step(self, group: dict[str, Any]) -> int:
        return self.updates_done


class MegatronSchedule:
    """megatron-core's ``OptimizerParamScheduler.get_lr`` for the styles fine-tuning uses
    (``constant``, ``linear``, ``cosine``), in iterations as ``training/optimizer.py`` sets it up:
    update ``k`` (from 0) runs at ``lr(k)``; warmup from ``init_lr`` over ``warmup`` iterations
    (``lr(0) = init_lr`` when there is a warmup), then the decay to ``min_lr`` at ``decay``.
    Also a DeepSpeed ``lr_scheduler`` (``step``/``state_dict``/``load_state_dict``)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        min_lr: float,
        warmup: int,
        decay: int,
        style: str = "cosine",
        init_lr: float = 0.0,
    ) -> None:
        if style not in ("constant", "linear", "cosine"):
            raise ValueError(f"lr decay style {style!r}: choose constant, linear or cosine")
        if warmup >= decay and style != "constant":
            raise ValueError(
                f"warmup ({warmup} iterations) must be shorter than the decay ({decay})"
            )
        self.optimizer, self.max_lr, self.min_lr = optimizer, max_lr, min_lr
        self.warmup, self.decay, self.style, self.init_lr = warmup, decay, style, init_lr
        self.num_steps = 0
        self._apply()

    def lr(self, n: int) -> float:
        if self.warmup > 0 and n <= self.warmup:
            return self.init_lr + (self.max_lr - self.init_lr) * n / self.warmup
        if self.style == "constant":
            return self.max_lr
        if n > self.decay:
            return self.min_lr
        ratio = (n - self.warmup) / (self.decay - self.warmup)
        coeff = 1.0 - ratio if self.style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.num_steps)
            group["max_lr"] = self.max_lr  # AdamC's peak (CautiousAdamC reads the group's)

    def step(self, increment: int = 1) -> None:
        self.num_steps += increment
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [self.lr(self.num_steps)] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "warmup": self.warmup,
            "decay": self.decay,
            "style": self.style,
            "init_lr": self.init_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        changed = {
            k: (state[k], mine[k])
            for k in mine
            if k != "num_steps" and k in state and state[k] != mine[k]
        }
        if changed:
            raise ValueError(f"the checkpoint's schedule differs from this run's: {changed}")
        self.num_steps = int(state["num_steps"])
        self._apply()


def model_statistics(model: torch.nn.Module, vocab_size: int) -> MaskStatistics:
    """Statistic groups for an optimizer over the model's own parameters (the plain engine)."""
    groups = _group_indices(model)
    runs = {
        id(p): element_runs(name, tuple(p.shape), vocab_size, groups)
        for name, p in model.named_parameters()
    }
    return MaskStatistics(runs, len(groups), names=tuple(groups))


def _group_indices(model: torch.nn.Module) -> dict[str, int]:
    """Statistic group index per name, in ``named_parameters`` order: the same on every rank,
    whichever parameters its partitions hold."""
    groups: dict[str, int] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(statistic_group(name), len(groups))
    return groups


def _clip(runs: list[Run], start: int, end: int, shift: int) -> list[Run]:
    """The runs within elements ``[start, end)`` of a parameter, placed at ``shift`` in a flat tensor."""
    out = []
    for lo, hi, g in runs:
        lo, hi = max(lo, start), min(hi, end)
        if hi > lo:
            out.append((lo - start + shift, hi - start + shift, g))
    return out


def _zero_flat_runs(
    zero: Any,
    names: dict[int, str],
    shapes: dict[int, tuple[int, ...]],
    vocab_size: int,
    groups: dict[str, int],
    rank: int,
) -> dict[int, list[Run]]:
    """``id(flat fp32 partition) -> runs`` for DeepSpeed's ZeRO optimizer ``zero``."""
    out: dict[int, list[Run]] = {}

    def param_runs(p: torch.Tensor) -> list[Run]:
        return element_runs(names[id(p)], shapes[id(p)], vocab_size, groups)

    if hasattr(zero, "fp32_partitioned_groups_flat"):  # stage 3: each parameter partitioned apart
        per_group: dict[int, int] = {}
        for sub, flat in enumerate(zero.fp32_partitioned_groups_flat):
            gid = zero.sub_group_to_group_id[sub]
            per_group[gid] = per_group.get(gid, 0) + 1
            runs, at = [], 0
            for p in zero.fp16_groups[sub]:
                k = p.partition_numel()
                runs += _clip(param_runs(p), rank * k, rank * k + k, at)
                at += k
            if at != flat.numel():
                raise RuntimeError(
                    f"ZeRO-3 sub-group {sub}: {flat.numel()} elements, its parameters' partitions "
                    f"hold {at}; this DeepSpeed version lays them out differently"
                )
            out[id(flat)] = runs
        if any(n > 1 for n in per_group.values()):
            raise ValueError(
                "ZeRO-3 split a param group into several sub-groups; the cautious statistic "
                "must see a whole group: raise zero_optimization.sub_group_size above the "
                "model's parameter count"
            )
        return out
    # stage 1/2: the group's parameters flattened in order, padded at the end, cut in equal partitions
    for i, flat in enumerate(zero.single_partition_of_fp32_groups):
        size = int(zero.partition_size[i])
        lo, runs, at = rank * size, [], 0
        for p in zero.round_robin_bit16_groups[i]:
            n = p.numel()
            if at + n > lo and at < lo + size:
                runs += _clip(
                    param_runs(p), max(lo - at, 0), min(lo + size - at, n), max(at - lo, 0)
                )
            at += n
        if flat.numel() != size:
            raise RuntimeError(
                f"ZeRO group {i}: partition of {flat.numel()} elements, expected {size}"
            )
        out[id(flat)] = runs
    return out


def zero_statistics(
    zero: Any,
    model: torch.nn.Module,
    vocab_size: int,
    shapes: dict[int, tuple[int, ...]],
    group: Any = None,
) -> MaskStatistics:
    """The cautious statistic groups of DeepSpeed's ZeRO optimizer ``zero`` over ``model``
    (``shapes``: each parameter's full shape, taken before ZeRO-3 partitioned it)."""
    import torch.distributed as dist

    names = {id(p): name for name, p in model.named_parameters()}
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    groups = _group_indices(model)
    runs = _zero_flat_runs(zero, names, shapes, vocab_size, groups, rank)
    if not dist.is_initialized() or world == 1:
        return MaskStatistics(runs, len(groups), names=tuple(groups))
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend(group) == "nccl"
        else "cpu"
    )
    return MaskStatistics(
        runs,
        len(groups),
        all_reduce=lambda t: dist.all_reduce(t, group=group),
        device=device,
        names=tuple(groups),
    )
