"""Optimizer and learning-rate schedule, built from the typed run configuration.

``--optimizer cautious`` (default): SODA's Cautious Adam with AdamC weight decay
(:class:`megatron_soda.optim.CautiousAdamC`); ``--optimizer adam``: megatron-core's AdamW as is.

How Cautious enters megatron-core 0.16.1.  ``get_megatron_optimizer`` knows only Adam and SGD
and has no hook for another torch optimizer; its wrappers (``FP32Optimizer``,
``Float16OptimizerWithFloat16Params``, ``DistributedOptimizer``, ``ChainedOptimizer``) do the
precision handling, gradient clipping, distributed-optimizer sharding and checkpointing around
an inner ``torch.optim.Optimizer`` that they reach only through ``.optimizer`` (its
``param_groups``, ``state``, ``step()``, ``state_dict()``).  So megatron builds its Adam-based
optimizer exactly as for ``--optimizer adam``; while the inner Adam still holds no state, it is
replaced by a ``CautiousAdamC`` over the *same* param-group dicts (which by then hold the fp32
main parameters, or this rank's distributed-optimizer shards, and megatron's ``max_lr``/
``wd_mult`` keys).  Its per-parameter state has torch Adam's keys (``exp_avg``, ``exp_avg_sq``,
``step``), so megatron's checkpointing of optimizer state works unchanged.

The cautious rescaling divides by the fraction of agreeing signs over a whole statistic group
(the authors' Levanter array: one projection type over all layers; see
:mod:`megatron_soda.optim.groups`).  A group is cut across layers, pipeline stages, tensor-
parallel ranks and distributed-optimizer shards, so every step sums the (agreeing, total) counts
of all groups in one all-reduce over all ranks.  Each group is either wholly split or wholly
replicated along every parallel dimension, so replicas scale both counts alike and the ratio is
exact.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.optimizer import MegatronOptimizer
from megatron.core.optimizer.optimizer_config import ParamKey, ParamPredicate
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.utils import get_model_config

from megatron_soda.config import OptimConfig, TrainConfig
from megatron_soda.optim import CautiousAdamC, GPTLayout, MaskStatistics, clip_runs, param_runs
from megatron_soda.training.model_setup import params_dtype


def _no_weight_decay() -> dict:
    """SODA: no weight decay on norms (1-D weights), biases and the input embedding; the untied
    output head is a linear layer and is decayed (Levanter's default mask: marin
    ``lib/levanter/src/levanter/optim/config.py``, ``build_weight_decay_mask``)."""
    key = ParamKey(
        name=("*.bias", "*embedding.word_embeddings.weight"),
        predicate=ParamPredicate(name="norm_1d", fn=lambda p: p.dim() == 1),
    )
    return {key: {"wd_mult": 0.0}}


def build_optimizer(config: TrainConfig, model: list, lr: float) -> MegatronOptimizer:
    """megatron's optimizer for ``model`` (precision wrappers, distributed optimizer, clipping);
    its inner torch optimizer is ``CautiousAdamC`` under ``--optimizer cautious``."""
    optim, precision = config.optim, config.precision
    megatron_config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=optim.min_lr_for(lr),
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=precision.bf16,
        fp16=precision.fp16,
        params_dtype=params_dtype(precision),
        use_distributed_optimizer=config.parallel.use_distributed_optimizer,
        overlap_param_gather=config.parallel.overlap_param_gather,
    )
    optimizer = get_megatron_optimizer(megatron_config, model, config_overrides=_no_weight_decay())
    if optim.optimizer == "cautious":
        install_cautious(optimizer, model, optim, lr)
    return optimizer


def build_scheduler(optim: OptimConfig, optimizer, lr: float) -> OptimizerParamScheduler:
    """Steps are iterations: warmup/decay horizons are the --lr-*-iters values."""
    wsd = optim.lr_decay_style == "WSD"
    return OptimizerParamScheduler(
        optimizer,
        init_lr=optim.lr_warmup_init,
        max_lr=lr,
        min_lr=optim.min_lr_for(lr),
        lr_warmup_steps=optim.lr_warmup_iters,
        lr_decay_steps=optim.lr_decay_iters,
        lr_decay_style=optim.lr_decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=optim.train_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=optim.lr_wsd_decay_iters if wsd else None,
        lr_wsd_decay_style=optim.lr_wsd_decay_style if wsd else None,
    )


def install_cautious(optimizer: MegatronOptimizer, model: list, optim: OptimConfig, lr: float) -> None:
    """Replace the inner (state-less) torch Adam of megatron's ``optimizer`` by ``CautiousAdamC``
    on the same param groups, with statistic groups spanning all ranks."""
    inner = [o for o in getattr(optimizer, "chained_optimizers", [optimizer]) if o.optimizer is not None]
    if len(inner) > 1:
        raise NotImplementedError("--optimizer cautious: one statistic would span several megatron "
                                  "optimizers (expert parallelism, overlapped param gather with the step)")
    for opt in inner:
        if len(opt.optimizer.state):
            raise RuntimeError("install_cautious: the optimizer already holds state")
        stats = mask_statistics(opt, model)
        opt.optimizer = CautiousAdamC.adopt(
            opt.optimizer.param_groups, lr=lr, betas=(optim.adam_beta1, optim.adam_beta2), eps=optim.adam_eps,
            weight_decay=optim.weight_decay, max_lr=lr, adamc=True, statistics=stats)


def _layout(model: list) -> GPTLayout:
    tc = get_model_config(model[0])
    core = model[0]
    while hasattr(core, "module"):
        core = core.module
    return GPTLayout(
        num_attention_heads=tc.num_attention_heads,
        num_query_groups=tc.num_query_groups or tc.num_attention_heads,
        head_dim=tc.kv_channels,
        gated_linear_unit=tc.gated_linear_unit,
        vocab_size=getattr(core, "unpadded_vocab_size", None) or core.vocab_size,
        tensor_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        tensor_parallel_rank=parallel_state.get_tensor_model_parallel_rank(),
    )


def _model_ranges(opt: MegatronOptimizer, model: list) -> dict[int, tuple[torch.nn.Parameter, int, int]]:
    """id(inner optimizer parameter) -> (model parameter, first, end element of the flattened
    model parameter that it holds)."""
    out: dict[int, tuple[torch.nn.Parameter, int, int]] = {}
    if isinstance(opt, DistributedOptimizer):
        for g, group in enumerate(opt.optimizer.param_groups):
            # DistributedOptimizer._build_model_and_main_param_groups: [*fp32 shards, *fp32-from-16 shards]
            owners = [*opt.model_fp32_groups[g], *opt.model_float16_groups[g]]
            for owner, shard in zip(owners, group["params"], strict=True):
                r = opt._get_model_param_range_map(owner)["param"]
                out[id(shard)] = (owner, r.start, r.end)
        return out
    for chunk in model:  # FP32Optimizer: the parameters; Float16Optimizer: their fp32 main_param copies
        for p in chunk.parameters():
            out[id(p)] = (p, 0, p.numel())
            main = getattr(p, "main_param", None)
            if main is not None:
                out[id(main)] = (p, 0, p.numel())
    return out


def mask_statistics(opt: MegatronOptimizer, model: list) -> MaskStatistics:
    """The statistic groups of ``opt``'s parameters on this rank, indexed alike on every rank
    (the group names are gathered from all ranks)."""
    names = {id(p): n for chunk in model for n, p in chunk.named_parameters()}
    layout, ranges = _layout(model), _model_ranges(opt, model)
    local: dict[int, list[tuple[int, int, str | None]]] = {}
    device: torch.device | None = None
    for group in opt.optimizer.param_groups:
        for p in group["params"]:
            owner, start, end = ranges[id(p)]
            runs = clip_runs(param_runs(names[id(owner)], tuple(owner.shape), layout), start, end)
            if sum(e - s for s, e, _ in runs) != p.numel():
                raise RuntimeError(f"statistic groups of {names[id(owner)]} do not cover its {p.numel()} elements")
            local[id(p)] = runs
            device = device or p.device
    keys = {k for runs in local.values() for _, _, k in runs if k is not None}
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, sorted(keys))
        keys = set().union(*map(set, gathered))
    order = sorted(keys)
    index = {k: i for i, k in enumerate(order)}
    runs = {pid: tuple((s, e, -1 if k is None else index[k]) for s, e, k in r) for pid, r in local.items()}
    reduce = (lambda t: torch.distributed.all_reduce(t)) if world > 1 else None
    return MaskStatistics(runs=runs, num_groups=len(order), all_reduce=reduce,
                          device=device or torch.device("cpu"), names=tuple(order))
