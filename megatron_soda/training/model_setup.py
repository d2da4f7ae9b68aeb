"""Model chunks (pipeline/virtual stages), precision wrapper, megatron DDP, optimizer, scheduler."""

from __future__ import annotations

import argparse

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.enums import ModelType
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer_config import ParamKey, ParamPredicate
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_soda.models.config import SodaModelConfig
from megatron_soda.models.gpt import build_model_chunk, make_transformer_config
from megatron_soda.models.init import initialize_parameters


def params_dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def transformer_config(args: argparse.Namespace, cfg: SodaModelConfig) -> TransformerConfig:
    use_te = args.transformer_impl == "transformer_engine"
    dtype = params_dtype(args)
    extra = dict(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=args.bf16,
        fp16=args.fp16,
        use_cpu_initialization=args.device == "cpu",
        deallocate_pipeline_outputs=True,
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
    )
    if args.virtual_pipeline_model_parallel_size:
        # The interleaved schedule must not batch p2p: a batch mixes up the two directions when
        # the previous and next stage are the same rank (PP=2).  On GPU it overlaps p2p with
        # compute (Megatron-LM's default); over gloo the overlapped sends race with megatron
        # freeing the sent activations (measured: wrong losses), so CPU runs do not overlap.
        extra.update(overlap_p2p_comm=args.device == "cuda", batch_p2p_comm=False)
    if args.recompute_modules:
        extra["recompute_modules"] = args.recompute_modules
    if args.microbatch_group_size_per_virtual_pipeline_stage:
        extra["microbatch_group_size_per_vp_stage"] = args.microbatch_group_size_per_virtual_pipeline_stage
    if args.attention_backend != "auto":
        extra["attention_backend"] = AttnBackend[args.attention_backend]
    if args.fp8_format:
        extra.update(fp8=args.fp8_format, fp8_recipe=args.fp8_recipe, fp8_amax_history_len=args.fp8_amax_history_len,
                     fp8_amax_compute_algo=args.fp8_amax_compute_algo, fp8_param=args.fp8_param_gather)
    return make_transformer_config(cfg, use_te, **extra)


def build_model(args: argparse.Namespace, cfg: SodaModelConfig, config: TransformerConfig) -> list[DistributedDataParallel]:
    """This rank's model chunks, initialised (layout-invariantly from ``--seed``) and wrapped."""
    use_te = args.transformer_impl == "transformer_engine"
    vpp = args.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    chunks = []
    for vp in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vp is None, vp_stage=vp)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=vp is None, vp_stage=vp)
        chunk = build_model_chunk(cfg, config, use_te, pre, post, vp_stage=vp)
        chunk.model_type = ModelType.encoder_or_decoder
        for p in chunk.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(p)
        chunks.append(chunk)
    initialize_parameters(chunks, args.seed, cfg.init_method_std, cfg.num_layers)
    if args.device == "cuda":
        chunks = [c.cuda(torch.cuda.current_device()) for c in chunks]
    if args.bf16 or args.fp16:
        chunks = [Float16Module(config, c) for c in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.bf16 or args.fp16,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        check_for_nan_in_grad=False,
        average_in_collective=False,
        fp8_param_gather=args.fp8_param_gather,
    )
    return [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
        for i, c in enumerate(chunks)
    ]


def connect_schedule_hooks(config: TransformerConfig, model: list, optimizer, args: argparse.Namespace) -> None:
    """What the pipeline schedules call back into (as Megatron-LM's train() sets them up)."""
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    one = len(model) == 1
    if args.overlap_grad_reduce:
        sync = [m.no_sync for m in model]
        grad = [m.start_grad_sync for m in model]
        config.no_sync_func = sync[0] if one else sync
        config.grad_sync_func = grad[0] if one else grad
    if args.overlap_param_gather:
        param = [m.start_param_sync for m in model]
        config.param_sync_func = param[0] if one else param


def _no_weight_decay() -> dict:
    """SODA: no weight decay on norms (1-D weights), biases and the input embedding; the untied
    output head is a linear layer and is decayed."""
    key = ParamKey(
        name=("*.bias", "*embedding.word_embeddings.weight"),
        predicate=ParamPredicate(name="norm_1d", fn=lambda p: p.dim() == 1),
    )
    return {key: {"wd_mult": 0.0}}


def build_optimizer(args: argparse.Namespace, model: list, lr: float):
    config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        clip_grad=args.clip_grad,
        bf16=args.bf16,
        fp16=args.fp16,
        params_dtype=params_dtype(args),
        use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_param_gather=args.overlap_param_gather,
    )
    return get_megatron_optimizer(config, model, config_overrides=_no_weight_decay())


def build_scheduler(args: argparse.Namespace, optimizer, lr: float) -> OptimizerParamScheduler:
    """Steps are iterations: warmup/decay horizons are the --lr-*-iters values."""
    wsd = args.lr_decay_style == "WSD"
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=lr,
        min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters,
        lr_decay_steps=args.lr_decay_iters,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=args.lr_wsd_decay_iters if wsd else None,
        lr_wsd_decay_style=args.lr_wsd_decay_style if wsd else None,
    )
