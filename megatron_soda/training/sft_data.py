"""Prompt-loss masking for supervised fine-tuning: which targets of a packed window are trained.

An SFT shard carries one loss start per document (``PREFIX.loss_start.npy``,
:mod:`megatron_soda.format.sft`): the trained targets of a document are its tokens from the loss
start to its ``<eos>``.  megatron's GPTDataset packs documents into windows of ``seq_length + 1``
tokens: sample ``i`` runs from ``(document_index[b], offset o_b)`` to ``(document_index[e],
offset o_e)`` inclusive (``sample_index[i]`` and ``sample_index[i + 1]``), so a document may be
cut across windows.  The mask is derived per token from (document, offset in the document), in
one vectorised pass per sample (:func:`window_response_mask`); targets that cross a document
boundary (an ``<eos>`` predicting the next ``<bos>``) are never trained, since a ``<bos>`` sits at
offset 0, before every loss start.
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset

from megatron_soda.format.sft import is_sft_shard, read_loss_starts
from megatron_soda.format.shards import ShardError


def window_response_mask(docs: np.ndarray, first_offset: int, last_offset: int, doc_lengths: np.ndarray,
                         loss_starts: np.ndarray, seq_length: int) -> np.ndarray:
    """Bool ``[seq_length]``: whether the target (label) at each position of the window is a
    response token.  The window's tokens are documents ``docs`` (ids into ``doc_lengths`` /
    ``loss_starts``) from offset ``first_offset`` of the first to offset ``last_offset`` of the
    last, inclusive (megatron's extra token); a short window is padded (never trained)."""
    docs = np.asarray(docs, dtype=np.int64)
    begins = np.zeros(len(docs), dtype=np.int64)
    ends = np.asarray(doc_lengths, dtype=np.int64)[docs].copy()  # exclusive
    begins[0] = first_offset
    ends[-1] = last_offset + 1
    spans = ends - begins
    total = int(spans.sum())
    part_start = np.cumsum(spans) - spans  # where each part begins in the window
    offsets = np.arange(total, dtype=np.int64) + np.repeat(begins - part_start, spans)
    trained = offsets >= np.repeat(np.asarray(loss_starts, dtype=np.int64)[docs], spans)
    out = np.zeros(seq_length + 1, dtype=bool)
    out[: min(total, seq_length + 1)] = trained[: seq_length + 1]
    return out[1:]  # the label at position t is token t + 1


class SftGPTDataset(GPTDataset):
    """megatron's GPTDataset over an SFT shard; each sample also holds ``response_mask`` (float,
    like ``loss_mask``): 1 where the label is a response token."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        prefix = self.dataset.path_prefix
        docs = np.asarray(self.dataset.document_indices)
        if len(docs) - 1 != len(self.dataset.sequence_lengths):
            raise ShardError(f"{prefix}.idx: an SFT shard holds one sequence per document "
                             f"({len(docs) - 1} documents, {len(self.dataset.sequence_lengths)} sequences)")
        self.loss_starts = read_loss_starts(prefix)
        self.doc_lengths = np.asarray(self.dataset.sequence_lengths, dtype=np.int64)

    def response_mask(self, idx: int) -> np.ndarray:
        if self.shuffle_index is None:
            self._query_document_sample_shuffle_indices(0)  # megatron memory-maps its indices lazily
        i = self.shuffle_index[idx]
        beg, beg_offset = self.sample_index[i]
        end, end_offset = self.sample_index[i + 1]
        extra = int(self.config.add_extra_token_to_sequence)
        if not extra:
            raise ValueError("SFT masking needs megatron's extra token (add_extra_token_to_sequence)")
        return window_response_mask(self.document_index[beg:end + 1], int(beg_offset), int(end_offset),
                                    self.doc_lengths, self.loss_starts, self.config.sequence_length)

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        out = super().__getitem__(idx)
        if idx is None:
            out["response_mask"] = torch.zeros_like(out["loss_mask"])
        else:
            out["response_mask"] = torch.from_numpy(self.response_mask(idx)).to(out["loss_mask"].dtype)
        return out


def check_sft_prefixes(prefixes: list[str], sft: bool) -> str | None:
    """With ``sft``: every prefix must be an SFT shard (else a :class:`ShardError` naming them).
    Without: a warning (returned) if some are, since their prompts would then be trained too."""
    marked = [p for p in prefixes if is_sft_shard(p)]
    if sft:
        missing = [p for p in prefixes if p not in marked]
        if missing:
            raise ShardError(
                f"--sft needs SFT shards (a PREFIX.loss_start.npy per shard, made by preprocess_data.py "
                f"--input-format cvss|s2st-jsonl): {', '.join(missing)} has none (pretraining shards "
                "carry no prompt/response split; train on them with pretrain_soda.py)")
        return None
    if marked:
        return (f"warning: {', '.join(marked)} are SFT shards (PREFIX.loss_start.npy), trained here on "
                "every token, prompts included; use finetune_soda.py (or --sft) for prompt-loss masking")
    return None


def check_sft_resume(ckpt: str, sft: bool, prompt_loss: bool) -> None:
    """Resuming (not ``--finetune``) a run whose record says it trained with another objective
    (``--sft``, ``--sft-prompt-loss``) would change what the loss covers mid-run: refused.
    Checkpoints without the record (converted, or older) are not checked."""
    import json
    import os

    from megatron_soda.checkpointing import CheckpointError, layout

    found = layout.find_checkpoint(ckpt)
    path = os.path.join(found or ckpt, "run_args.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or "sft" not in record:
        return
    was = (bool(record.get("sft")), bool(record.get("sft_prompt_loss")))
    if was != (sft, prompt_loss):
        def spell(s: bool, p: bool) -> str:
            return ("--sft" + (" --sft-prompt-loss" if p else "")) if s else "no --sft"

        raise CheckpointError(f"{found or ckpt}: trained with {spell(*was)}, this run has {spell(sft, prompt_loss)}: "
                              "resuming would change what the loss covers mid-run (start a new run from it with "
                              "--load and --finetune)")
