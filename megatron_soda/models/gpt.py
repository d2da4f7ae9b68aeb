"""The SODA decoder on megatron-core's GPTModel: layer specs and model chunks (the
TransformerConfig is assembled from the run configuration in
:func:`megatron_soda.training.model_setup.transformer_config`).

Two layer specs give the same parameters and the same checkpoint keys:

* Transformer Engine's (fused norm+linear, fused/flash attention, FP8) when TE is importable
  and the run is on GPU;
* megatron-core's local spec otherwise, with :class:`SodaRMSNorm` (torch RMSNorm that also
  supports sequence parallelism) for every norm.  The local spec maps ``input_layernorm.*`` and
  ``pre_mlp_layernorm.*`` onto TE's fused names in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_soda.models.attention import TorchCoreAttention
from megatron_soda.models.chunked_head import chunked_head_ce_lse
from megatron_soda.models.config import SodaModelConfig
from megatron_soda.models.loss import cross_entropy_and_lse, mask_padded_vocab_


class SodaRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm with megatron's constructor signature.

    megatron's ``WrappedTorchNorm`` refuses sequence parallelism; the only thing sequence
    parallelism needs from a norm is that its weight is marked ``sequence_parallel`` so that
    ``finalize_model_grads`` sums its gradient over the tensor-parallel group."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **kwargs: Any):
        super().__init__(hidden_size, eps=eps, device=_param_device(config), dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel


def _param_device(config: TransformerConfig) -> torch.device:
    if config.use_cpu_initialization or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def local_layer_spec(attention: str = "local") -> ModuleSpec:
    """megatron-core's local spec with SODA's norms; ``attention`` ``sdpa``/``flex``: its core
    attention is :class:`~megatron_soda.models.attention.TorchCoreAttention` (no parameters, so
    the same checkpoint keys as ``local``'s DotProductAttention)."""
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    sub = spec.submodules
    if attention in ("sdpa", "flex"):
        sub.self_attention.submodules.core_attention = TorchCoreAttention
    sub.input_layernorm = SodaRMSNorm
    sub.pre_mlp_layernorm = SodaRMSNorm
    sub.self_attention.submodules.q_layernorm = SodaRMSNorm
    sub.self_attention.submodules.k_layernorm = SodaRMSNorm
    return spec


def te_layer_spec() -> ModuleSpec:
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_with_transformer_engine_spec,
    )

    return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)


def block_spec(config: TransformerConfig, use_te: bool, vp_stage: int | None,
               attention: str = "local") -> TransformerBlockSubmodules:
    """Layer specs for this pipeline stage plus the final norm (chosen here, not by megatron's
    import-time default, which would pick TE's norm on a CPU run when TE happens to be installed)."""
    if use_te:
        from megatron.core.extensions.transformer_engine import TENorm

        layer, final_norm = te_layer_spec(), TENorm
    else:
        layer, final_norm = local_layer_spec(attention), SodaRMSNorm
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=final_norm)


class SodaGPTModel(GPTModel):
    """GPTModel whose loss path returns per-token ``(cross-entropy, log-sum-exp)`` as a
    ``[2, b, s]`` tensor (the z-loss needs lse), and whose padded vocabulary rows are never
    predicted (logits masked to -inf, in the loss and in returned logits).

    ``head_chunk_tokens > 0``: with labels, the output layer and the loss run chunked
    (:mod:`megatron_soda.models.chunked_head`), never materialising the logits; same ``[2, b, s]``
    result.  Without labels (inference, eval of logits) megatron's output layer is used."""

    def __init__(self, *args: Any, unpadded_vocab_size: int, head_chunk_tokens: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unpadded_vocab_size = unpadded_vocab_size
        self.head_chunk_tokens = head_chunk_tokens
        self.head_compile_backend: str | None = None  # set by models/compile.py ("head")
        if head_chunk_tokens and (self.mtp_process or self.config.mtp_num_layers):
            raise ValueError("--head-chunk-tokens does not support multi-token prediction")
        if head_chunk_tokens and self.config.defer_embedding_wgrad_compute:
            raise ValueError("--head-chunk-tokens does not support defer_embedding_wgrad_compute")

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # labels [b, s], logits [s, b, v/tp]
        ce, lse = cross_entropy_and_lse(logits, labels.transpose(0, 1).contiguous(), self.unpadded_vocab_size)
        return torch.stack((ce, lse)).transpose(1, 2).contiguous()

    def _postprocess(self, hidden_states: torch.Tensor, input_ids: Any, position_ids: Any,
                     labels: torch.Tensor | None, *args: Any, **kwargs: Any) -> torch.Tensor:
        # megatron-core 0.16.1 GPTModel._postprocess (models/gpt/gpt_model.py:559-716): MTP, then
        # output_layer + compute_language_model_loss.  The chunked head replaces those two steps.
        inference = kwargs.get("inference_context") is not None and not self.training
        if not self.head_chunk_tokens or labels is None or not self.post_process or inference:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        weight = (self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights
                  else self.output_layer.weight)
        return chunked_head_ce_lse(
            hidden_states, weight, labels, self.unpadded_vocab_size, self.head_chunk_tokens,
            sequence_parallel=self.output_layer.sequence_parallel, group=self.output_layer.tp_group,
            compile_backend=self.head_compile_backend,
        )

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = super().forward(*args, **kwargs)
        if kwargs.get("labels") is None and self.post_process:
            width = out.size(-1)
            start = 0 if width == self.vocab_size else parallel_state.get_tensor_model_parallel_rank() * width
            mask_padded_vocab_(out, self.unpadded_vocab_size, start)
        return out


def build_model_chunk(
    cfg: SodaModelConfig,
    config: TransformerConfig,
    use_te: bool,
    pre_process: bool,
    post_process: bool,
    vp_stage: int | None = None,
    head_chunk_tokens: int = 0,
    attention: str = "local",
) -> SodaGPTModel:
    """One pipeline (virtual) stage of the SODA model (``head_chunk_tokens``: see
    :class:`SodaGPTModel`)."""
    cfg.check_tensor_parallel(config.tensor_model_parallel_size)
    return SodaGPTModel(
        config=config,
        transformer_layer_spec=block_spec(config, use_te, vp_stage, attention),
        vocab_size=cfg.padded_vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=cfg.rotary_base,
        rope_scaling=cfg.use_rope_scaling,
        rope_scaling_factor=cfg.rope_scaling_factor,
        vp_stage=vp_stage,
        unpadded_vocab_size=cfg.vocab_size,
        head_chunk_tokens=head_chunk_tokens,
    )
