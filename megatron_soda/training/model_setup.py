"""TransformerConfig, model chunks (pipeline/virtual stages), precision wrapper, megatron DDP:
the model built from the typed run configuration (its optimizer and schedule:
:mod:`megatron_soda.training.optimizer`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.enums import ModelType
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_soda.config import ParallelConfig, PrecisionConfig, TrainConfig
from megatron_soda.models.compile import compile_model_chunk, parse_compile_targets
from megatron_soda.models.config import SodaModelConfig
from megatron_soda.models.gpt import build_model_chunk
from megatron_soda.models.init import initialize_parameters


def attention_fallback_warning(device_type: str, transformer_impl: str, te_importable: bool | None = None,
                               attention_backend: str = "local") -> str | None:
    """The warning a GPU run gets, once, when its attention is megatron-core's local one: it
    computes attention unfused (the whole ``[batch, heads, seq, seq]`` score matrix in memory,
    softmax and mask as separate kernels).  None on CPU, where the local path is the reference,
    with TE, and with the torch kernels (``--attention-backend sdpa|flex``).  ``te_importable``:
    default, whether TE can be imported."""
    if device_type != "cuda" or transformer_impl == "transformer_engine" or attention_backend != "local":
        return None
    if te_importable is None:
        from megatron_soda.models.te import te_available

        te_importable = te_available()
    why, fix = (("--transformer-impl local", "leave --transformer-impl at auto to use it") if te_importable else
                ("Transformer Engine is not installed", "install it: see docs/install.md (NGC PyTorch containers ship it)"))
    return (f"warning: {why}: attention falls back to megatron-core's unfused local implementation "
            "(the full [batch, heads, seq, seq] score matrix in memory), several times slower than "
            "Transformer Engine's fused/flash attention at long sequences (no GPU measurement in "
            f"docs/benchmarks.md yet); {fix}, or use torch's kernels: --attention-backend flex (document "
            "masking) or sdpa (docs/gpu.md)")


def params_dtype(precision: PrecisionConfig) -> torch.dtype:
    return torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else torch.float32


def transformer_config(arch: SodaModelConfig, parallel: ParallelConfig, precision: PrecisionConfig, *,
                       initialize: bool = True) -> TransformerConfig:
    """The one place a megatron ``TransformerConfig`` is assembled: the architecture (Qwen3
    blocks: RMSNorm, QK-norm, SwiGLU, no biases) with the parallel, precision and recompute
    settings.  ``initialize=False`` (converters) leaves parameters uninitialised."""
    use_te = precision.use_te
    dtype = params_dtype(precision)
    fields: dict[str, Any] = dict(
        **arch.shape_dict(),
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_epsilon,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_method_std,
        # megatron initialises (and, only when it does, tags tensor-parallel parameters, which the
        # grad norm and DDP rely on); megatron_soda.models.init then overwrites the values.
        perform_initialization=initialize,
        calculate_per_token_loss=True,
        attention_backend=AttnBackend.auto if use_te else AttnBackend.local,
        bias_activation_fusion=use_te,
        bias_dropout_fusion=use_te,
        apply_rope_fusion=use_te,
        masked_softmax_fusion=use_te,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        transformer_impl="transformer_engine" if use_te else "local",
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu_initialization=parallel.device == "cpu",
        deallocate_pipeline_outputs=True,
        recompute_granularity=precision.recompute_granularity,
        recompute_method=precision.recompute_method,
        recompute_num_layers=precision.recompute_num_layers,
    )
    if parallel.virtual_pipeline_model_parallel_size:
        # The interleaved schedule must not batch p2p: a batch mixes up the two directions when
        # the previous and next stage are the same rank (PP=2).  On GPU it overlaps p2p with
        # compute (Megatron-LM's default); over gloo the overlapped sends race with megatron
        # freeing the sent activations (measured: wrong losses), so CPU runs do not overlap.
        fields.update(overlap_p2p_comm=parallel.device == "cuda", batch_p2p_comm=False)
    if precision.recompute_modules:
        fields["recompute_modules"] = precision.recompute_modules
    if parallel.microbatch_group_size_per_virtual_pipeline_stage:
        fields["microbatch_group_size_per_vp_stage"] = parallel.microbatch_group_size_per_virtual_pipeline_stage
    if precision.attention_backend in ("flash", "fused", "unfused"):  # Transformer Engine's kernel, pinned
        fields["attention_backend"] = AttnBackend[precision.attention_backend]
    elif precision.attention_backend in ("local", "sdpa", "flex"):
        # megatron's enum has no torch kernels: they are the local spec's core_attention
        # (models/gpt.py local_layer_spec), and "local" keeps TE's NVTE_* switches off
        fields["attention_backend"] = AttnBackend.local
    if precision.fp8_format:
        fields.update(fp8=precision.fp8_format, fp8_recipe=precision.fp8_recipe,
                      fp8_amax_history_len=precision.fp8_amax_history_len,
                      fp8_amax_compute_algo=precision.fp8_amax_compute_algo, fp8_param=precision.fp8_param_gather)
    return TransformerConfig(**fields)


def build_model(config: TrainConfig, arch: SodaModelConfig, tc: TransformerConfig) -> list[DistributedDataParallel]:
    """This rank's model chunks, initialised (layout-invariantly from ``--seed``) and wrapped."""
    parallel, precision = config.parallel, config.precision
    vpp = parallel.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    chunks = []
    for vp in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vp is None, vp_stage=vp)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=vp is None, vp_stage=vp)
        chunk = build_model_chunk(arch, tc, precision.use_te, pre, post, vp_stage=vp,
                                  head_chunk_tokens=config.model.head_chunk_tokens,
                                  attention=precision.attention_backend)
        chunk.model_type = ModelType.encoder_or_decoder
        compile_model_chunk(chunk, parse_compile_targets(config.model.torch_compile),
                            config.model.torch_compile_backend)
        for p in chunk.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(p)
        chunks.append(chunk)
    initialize_parameters(chunks, config.optim.seed, arch)
    if parallel.device == "cuda":
        chunks = [c.cuda(torch.cuda.current_device()) for c in chunks]
    low_precision = precision.bf16 or precision.fp16
    if low_precision:
        chunks = [Float16Module(tc, c) for c in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=low_precision,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        check_for_nan_in_grad=False,
        average_in_collective=False,
        fp8_param_gather=precision.fp8_param_gather,
    )
    return [
        DistributedDataParallel(config=tc, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
        for i, c in enumerate(chunks)
    ]


def connect_schedule_hooks(tc: TransformerConfig, model: list, optimizer, parallel: ParallelConfig) -> None:
    """What the pipeline schedules call back into (as Megatron-LM's train() sets them up)."""
    tc.finalize_model_grads_func = finalize_model_grads
    tc.grad_scale_func = optimizer.scale_loss
    one = len(model) == 1
    if parallel.overlap_grad_reduce:
        sync = [m.no_sync for m in model]
        grad = [m.start_grad_sync for m in model]
        tc.no_sync_func = sync[0] if one else sync
        tc.grad_sync_func = grad[0] if one else grad
    if parallel.overlap_param_gather:
        param = [m.start_param_sync for m in model]
        tc.param_sync_func = param[0] if one else param
