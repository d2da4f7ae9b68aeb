"""Cautious Adam with AdamC weight decay: the optimizer SODA trained with (Levanter's
``CautiousConfig(..., adamc_weight_decay=True)``), as a plain ``torch.optim.Optimizer``.

One step, for every parameter ``p`` with gradient ``g`` (``t`` counts from 1)::

    m = b1 m + (1 - b1) g                  v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    c = [u * g > 0]                        (the update agrees in sign with the gradient)
    u = u * c / (mean(c) + eps)            (mean over p's statistic group, see below)
    p = p - lr * (u + wd_t * p)            wd_t = weight_decay * lr / max_lr  (AdamC)

Every choice is the authors' (marin-community/marin, ``lib/levanter/src/levanter/optim/
cautious.py`` at cd838d5b; line numbers counted in that copy):

* moments and bias correction: ``scale_by_cautious.update_fn`` L107-111 (optax
  ``tree_update_moment``/``tree_bias_correction``: ``t`` = the incremented count);
* ``eps`` outside the square root (``eps_root`` = 0): L112-117, ``m / (sqrt(v + eps_root) + eps)``;
* the mask ``(g * u) > 0`` with ``g`` the (already clipped) gradient: L118-120;
* the rescaling ``u * mask / (mask.mean() + eps)``, the *same* ``eps`` as Adam's, mean over the
  whole leaf array: L121-126 (no clamp: an all-false mask gives a zero update, not 0/0);
* weight decay added *after* the cautious transform, so it is not masked, and scaled by
  ``learning_rate / max_lr`` with ``max_lr`` the configured peak: ``CautiousConfig.build``
  L51-57 (``optax.add_decayed_weights``), then the whole update times ``-learning_rate`` L60: the
  decay a parameter sees per step is ``lr * weight_decay * lr / peak_lr``.

Which elements share one ``mean(c)`` is the :class:`MaskStatistics` given; without one, each
parameter tensor is its own group (what Levanter does when every parameter is one array).

State per parameter is torch Adam's (``exp_avg``, ``exp_avg_sq``, ``step``), so megatron-core's
optimizer wrappers and checkpoints handle it unchanged.  The step count lives in each param
group's ``"step"`` (as Transformer Engine's FusedAdam keeps it, which megatron reads when TE is
installed) and is mirrored into every parameter's ``state["step"]`` (as torch's Adam keeps it,
which megatron reads otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# (start, end, group) over a parameter's flattened elements; group -1: left out of the statistic
# (elements that never get a gradient, such as padded vocabulary rows) and not rescaled.
Run = tuple[int, int, int]


@dataclass
class MaskStatistics:
    """Where ``mean(c)`` is taken: ``runs[id(p)]`` splits parameter ``p`` into runs of groups
    ``0 .. num_groups - 1``; ``all_reduce`` (if given) sums a ``[num_groups, 2]`` float64 tensor
    of (agreeing elements, elements) in place over every process holding part of a group, so
    that a parameter split over ranks (tensor parallel, distributed-optimizer shards) gives the
    statistic of the whole.  Every process must then step the optimizer the same number of times."""

    runs: dict[int, Sequence[Run]]
    num_groups: int
    all_reduce: Callable[[torch.Tensor], None] | None = None
    device: torch.device | str = "cpu"
    names: Sequence[str] = field(default_factory=tuple)  # group names, for messages


class CautiousAdamC(torch.optim.Optimizer):
    """Cautious Adam with AdamC weight decay (see the module docstring for the formulas).

    ``max_lr``: the peak learning rate AdamC divides by; a param group's own ``"max_lr"`` (which
    megatron-core's param groups carry) wins.  ``adamc=False`` decays by ``lr * weight_decay``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_lr: float | None = None, adamc: bool = True,
                 statistics: MaskStatistics | None = None) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid hyper-parameters: lr {lr}, betas {betas}, eps {eps}, weight decay {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        max_lr=lr if max_lr is None else max_lr, adamc=adamc)
        super().__init__(params, defaults)
        self.statistics = statistics

    @classmethod
    def adopt(cls, param_groups: list[dict[str, Any]], **kwargs: Any) -> CautiousAdamC:
        """An optimizer over existing param-group dicts, taken as they are (megatron-core's
        distributed optimizer hands its inner optimizer views of a flat buffer, which torch's
        ``add_param_group`` refuses as non-leaf tensors; megatron itself assigns them to
        ``param_groups`` directly).  ``kwargs`` fill the keys a group lacks."""
        opt = cls([torch.zeros(1, requires_grad=True)], **kwargs)
        for group in param_groups:
            for key, value in opt.defaults.items():
                group.setdefault(key, value)
        opt.param_groups = param_groups
        return opt

    # ------------------------------------------------------------------ the step count
    def _group_step(self, group: dict[str, Any]) -> int:
        """Updates done so far: the group's ``step``, or (a state loaded from torch's Adam) the
        parameters' ``state["step"]``."""
        if group.get("step") is not None:
            return int(group["step"])
        steps = [int(self.state[p]["step"]) for p in group["params"] if "step" in self.state.get(p, {})]
        return max(steps, default=0)

    # ------------------------------------------------------------------ pieces of the step
    def _direction(self, group: dict[str, Any], p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam's bias-corrected direction ``u`` and the cautious mask ``u * g > 0``.  Called
        twice per step (counting, then applying): the same ops on the same inputs give the same
        bits, and no direction is kept for the whole model between the two passes."""
        state, step = self.state[p], group["step"]
        beta1, beta2 = group["betas"]
        m_hat = state["exp_avg"] / (1.0 - beta1**step)
        denom = (state["exp_avg_sq"] / (1.0 - beta2**step)).sqrt_().add_(group["eps"])
        u = m_hat.div_(denom)
        return u, (u * p.grad) > 0

    def _runs(self, p: torch.Tensor, index: int) -> Sequence[Run]:
        if self.statistics is None:
            return ((0, p.numel(), index),)
        try:
            return self.statistics.runs[id(p)]
        except KeyError:
            raise KeyError(f"CautiousAdamC: parameter of shape {tuple(p.shape)} has no statistic group") from None

    def _means(self, work: list[tuple[dict[str, Any], torch.Tensor]]) -> list[float]:
        """Per statistic group: the fraction of its elements whose update agrees with the gradient."""
        stats = self.statistics
        num_groups = stats.num_groups if stats is not None else len(work)
        device = stats.device if stats is not None else "cpu"
        numel = [0] * num_groups
        sums, index = [], []
        for i, (group, p) in enumerate(work):
            _, mask = self._direction(group, p)
            flat = mask.view(-1)
            for start, end, g in self._runs(p, i):
                if g < 0 or end <= start:
                    continue
                sums.append(flat[start:end].sum())
                index.append(g)
                numel[g] += end - start
        counts = torch.zeros(num_groups, 2, dtype=torch.float64, device=device)
        if sums:
            agree = torch.stack(sums).to(device=device, dtype=torch.float64)
            counts[:, 0].index_add_(0, torch.tensor(index, device=device), agree)
        counts[:, 1] = torch.tensor(numel, dtype=torch.float64, device=device)
        if stats is not None and stats.all_reduce is not None:
            stats.all_reduce(counts)
        total = counts[:, 1]
        return torch.where(total > 0, counts[:, 0] / total.clamp(min=1), 0.0).tolist()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work: list[tuple[dict[str, Any], torch.Tensor]] = []
        for group in self.param_groups:
            group["step"] = step = self._group_step(group) + 1
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CautiousAdamC does not support sparse gradients")
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grad = p.grad
                state["exp_avg"].lerp_(grad, 1.0 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                state["step"] = torch.tensor(float(step), dtype=torch.float32)
                work.append((group, p))
        # One pass counts the agreeing elements of every statistic group (one all-reduce for the
        # whole model when the groups span processes), the second applies the update.
        means = self._means(work)
        for i, (group, p) in enumerate(work):
            u, mask = self._direction(group, p)
            u.mul_(mask)
            flat, eps = u.view(-1), group["eps"]
            for start, end, g in self._runs(p, i):
                if g >= 0 and end > start:
                    flat[start:end].div_(means[g] + eps)
            lr = group["lr"]
            decay = group["weight_decay"]
            if group.get("adamc", True):
                peak = group["max_lr"]
                decay = decay * lr / peak if peak > 0 else 0.0
            if decay != 0.0:
                p.mul_(1.0 - lr * decay)
            p.add_(u, alpha=-lr)
        return loss
