"""The supervised fine-tuning (SFT) section, and the recipe ``finetune_soda.py`` defaults to.

With ``--sft`` the data must be SFT shards (``PREFIX.loss_start.npy`` beside each ``.bin/.idx``,
:mod:`megatron_soda.format.sft`): the loss covers each document's response (its tokens from the
loss start to ``<eos>``), not the prompt.  ``finetune_soda.py`` (``soda-finetune``) turns it on
and applies :data:`SFT_DEFAULTS` wherever the command line does not say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_soda.config.fields import option

# The authors' S2ST fine-tuning recipe: marin experiments/audio/audio_sft_cvss.py lines 30-31
# (SEQ_LEN 2048, BATCH_SIZE 64), 37 (LEARNING_RATE 2e-5), 65-77 (CautiousConfig: weight_decay
# 0.01, min_lr_ratio 0.1, warmup 0.03, decay 1.0, beta1 0.9, beta2 0.999, epsilon 1e-8,
# max_grad_norm 1, lr_schedule "cosine", adamc_weight_decay True) and 84 (z_loss_weight 1e-4).
# decay=1.0: the cosine runs over the whole run (megatron's --lr-decay-iters = --train-iters,
# the default); warmup=0.03 of it.  Keys are config field names (architecture fields included).
SFT_DEFAULTS: dict[str, Any] = {
    "seq_length": 2048,
    "global_batch_size": 64,
    "lr": 2e-5,
    "optimizer": "cautious",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_eps": 1e-8,
    "weight_decay": 0.01,
    "lr_decay_style": "cosine",
    "min_lr_ratio": 0.1,
    "lr_warmup_fraction": 0.03,
    "clip_grad": 1.0,
    "z_loss_weight": 1e-4,
}
# A default that a user's flag of the other spelling replaces (giving both is an error).
SFT_DEFAULT_ALTERNATIVES = {"min_lr_ratio": "min_lr", "lr_warmup_fraction": "lr_warmup_iters"}


@dataclass
class SftConfig:
    sft: bool = option(
        False, "supervised fine-tuning: train on the response tokens of SFT shards only "
        "(PREFIX.loss_start.npy, docs/finetuning.md); set by finetune_soda.py")
    sft_prompt_loss: bool = option(
        False, "with --sft: train on the prompt tokens too (the response loss is still reported "
        "apart); without --sft every token is trained anyway")
