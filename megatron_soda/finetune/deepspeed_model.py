"""The HF ``Qwen3ForCausalLM`` side of the DeepSpeed fine-tuner: loading, the optimizer's
parameter groups and cautious-statistic groups, the masked loss, and the final HF directory.

Everything mirrors the megatron trainer so that the two paths compute the same thing:

* weight decay (one param group per statistic group): none on 1-D weights (norms, biases) and the input embedding, decay on the untied
  head (``training/optimizer.py`` ``_no_weight_decay``, Levanter's ``build_weight_decay_mask``);
* cautious statistics: one group per Levanter array, i.e. per parameter name with the layer index
  dropped (``optim/groups.py``: layers are scanned, q/k/v and gate/up are separate arrays);
  embedding/head rows beyond the tokenizer's vocabulary are left out, as megatron's padded rows;
* the loss: ``sum(mask * (ce + z_loss_weight * lse**2))`` over the global batch divided by its
  trained-token count (``training/step.py`` ``_loss_func`` + ``finalize_model_grads``), with
  vocabulary rows beyond the tokenizer's at ``-inf`` (``models/loss.py`` ``mask_padded_vocab_``);
* attention within documents and positions restarting at each document (the trainer's default
  ``--reset-attention-mask --reset-position-ids``): each window row is cut into its documents
  (a document ends with its ``<eos>``) and the documents are run as separate, right-padded rows
  of one batch with a padding mask (*per-document forward*), which is exact with any attention
  kernel HF offers: the causal mask never lets a token see the padding after it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from megatron_soda.finetune.deepspeed_data import MicroBatch, document_spans
from megatron_soda.tokenizer import SodaTokenizer

_LAYER = re.compile(r"\.layers\.\d+\.")
EMBEDDING = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def load_hf_model(path: str, dtype: str = "fp32") -> tuple[torch.nn.Module, SodaTokenizer]:
    """An HF export (or SODA's release, a warm start) or a megatron_soda checkpoint, as an HF
    ``Qwen3ForCausalLM`` in train mode, and its SODA tokenizer
    (:func:`megatron_soda.convert.in_memory.load_model`)."""
    from megatron_soda.convert.in_memory import load_model

    loaded = load_model(path, device="cpu", dtype=dtype)
    if getattr(loaded.model.config, "tie_word_embeddings", False):
        raise ValueError(f"{path}: tied embeddings; SODA's models have an untied head")
    loaded.model.config.use_cache = False
    return loaded.model.train(), loaded.tokenizer


def statistic_group(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.*.mlp.up_proj.weight``."""
    return _LAYER.sub(".layers.*.", name)


def decays(name: str, param: torch.Tensor) -> bool:
    return not (param.dim() == 1 or name.endswith(".bias") or name == EMBEDDING)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """One torch param group per cautious-statistic group (per Levanter array: a projection of
    every layer, the embedding, the head, ...), in ``named_parameters`` order, each with its weight
    decay.  Small groups keep ZeRO's flat partitions small: the optimizer's temporaries (Adam's
    direction, the mask) are the size of one group, not of the model (about 12 bytes per element
    of the largest group on the CPU with offload; SODA-4B's largest, a stacked MLP projection, has
    0.9e9 elements)."""
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            group = groups.setdefault(
                statistic_group(name),
                {"params": [], "weight_decay": weight_decay if decays(name, p) else 0.0},
            )
            group["params"].append(p)
    return list(groups.values())


def element_runs(
    name: str, shape: tuple[int, ...], vocab_size: int, groups: dict[str, int]
) -> list[tuple[int, int, int]]:
    """``(start, end, group)`` runs over the flattened parameter ``name``; ``groups`` maps statistic
    group names to indices (filled as new names appear).  Rows of the embedding/head beyond the
    tokenizer's vocabulary: group -1 (left out)."""
    numel = int(np.prod(shape)) if shape else 1
    g = groups.setdefault(statistic_group(name), len(groups))
    if name in (EMBEDDING, HEAD) and shape[0] > vocab_size:
        used = vocab_size * shape[1]
        return [(0, used, g), (used, numel, -1)]
    return [(0, numel, g)]


def document_rows(batch: MicroBatch, eod: int) -> tuple[np.ndarray, ...]:
    """The micro-batch's documents as right-padded rows (module docstring): ``(ids, keep, labels,
    mask)``, each ``[documents, longest]``; ``keep`` marks real tokens, ``mask`` trained labels."""
    spans = [
        (r, a, e) for r in range(len(batch.tokens)) for a, e in document_spans(batch.tokens[r], eod)
    ]
    longest = max(e - a for _, a, e in spans)
    ids = np.zeros((len(spans), longest), dtype=np.int64)
    labels, keep = np.zeros_like(ids), np.zeros_like(ids)
    mask = np.zeros((len(spans), longest), dtype=np.float32)
    for k, (r, a, e) in enumerate(spans):
        ids[k, : e - a], labels[k, : e - a] = batch.tokens[r, a:e], batch.labels[r, a:e]
        keep[k, : e - a], mask[k, : e - a] = 1, batch.loss_mask[r, a:e]
    return ids, keep, labels, mask


def masked_loss_sums(
    model: torch.nn.Module,
    batch: MicroBatch,
    eod: int,
    vocab_size: int,
    z_loss_weight: float,
    device: torch.device | str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``(loss_sum, report)``: the micro-batch's ``sum(mask * (ce + z * lse**2))`` (to be divided
    by the global batch's trained tokens) and float sums for logging (``ce``, ``z``, ``tokens``,
    ``prompt_tokens``: inputs whose label is not trained)."""
    ids, keep, labels, mask = (torch.as_tensor(a, device=device) for a in document_rows(batch, eod))
    position_ids = torch.arange(ids.size(1), device=device).expand_as(ids)
    logits = model(
        input_ids=ids, attention_mask=keep, position_ids=position_ids, use_cache=False
    ).logits.float()
    if logits.size(-1) > vocab_size:
        logits[..., vocab_size:] = float("-inf")
    lse = torch.logsumexp(logits, dim=-1)
    ce = lse - torch.gather(logits, -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    loss_sum = ((ce + z_loss_weight * lse.square()) * mask).sum()
    with torch.no_grad():
        report = {
            "ce": float((ce.double() * mask).sum()),
            "z": float((lse.double().square() * mask).sum()),
            "tokens": float(batch.loss_mask.sum()),
            "prompt_tokens": float((1 - batch.loss_mask).sum()),
        }
    return loss_sum, report


def save_hf_directory(
    state: dict[str, torch.Tensor],
    config: Any,
    tokenizer: SodaTokenizer,
    save: str,
    source: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write an HF ``Qwen3ForCausalLM`` directory at ``save`` (swapped in when complete): weights
    as safetensors, ``config.json``, the SODA tokenizer files exactly as ``convert/to_hf.py``
    ``_write_hf_dir`` writes them, and ``soda_finetune.json`` (where it came from)."""
    from safetensors.torch import save_file

    from megatron_soda.atomic_files import replacing_dir, write_json_atomic
    from megatron_soda.convert.hf_tokenizer import SODA_TOKENIZER_DIR
    from megatron_soda.tokenizer.hf_export import export_hf_tokenizer

    dtypes = {t.dtype for t in state.values()}
    with replacing_dir(save) as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            os.path.join(tmp, "model.safetensors"),
            metadata={"format": "pt", "source": "megatron_soda.finetune"},
        )
        cfg = config.to_dict()
        cfg["dtype"] = "bfloat16" if dtypes == {torch.bfloat16} else "float32"
        cfg.pop("torch_dtype", None)
        cfg["use_cache"] = True
        write_json_atomic(os.path.join(tmp, "config.json"), cfg, indent=2, end="\n")
        export_hf_tokenizer(
            tokenizer, tmp, model_max_length=int(cfg.get("max_position_embeddings", 4096))
        )
        tokenizer.save(os.path.join(tmp, SODA_TOKENIZER_DIR))
        write_json_atomic(
            os.path.join(tmp, "soda_finetune.json"),
            {"source": os.path.abspath(source) if source else None, **(extra or {})},
            indent=2,
            end="\n",
        )
