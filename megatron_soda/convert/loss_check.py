"""Score the trainer's held-out samples with a converted HF model and compare with the
validation loss the trainer reported.

Apples to apples: the samples are the ones the trainer evaluated (its validation split rebuilt
from the checkpoint's ``run_args.json`` with megatron's dataset builder: the first
``eval_iters x global_batch_size`` samples, which is what every evaluation scores); documents
inside a packed window are scored separately with restarted positions, exactly the trainer's
default document masking (``--reset-attention-mask``/``--reset-position-ids``); the loss is the
token-mean cross-entropy over every position (``--eod-mask-loss`` honoured), accumulated in
float64.  The reference is the ``split="valid"`` record of the checkpoint's iteration in the
metrics JSONL, which must also have counted the same number of tokens.

Tolerance (absolute, on the mean loss): 1e-4 when the trainer ran in fp32 and the HF weights
are fp32 (measured differences are ~1e-6: only the order of float operations differs);
5e-2 when either side is bf16/fp16 (the trainer evaluated with bf16 activations, or the HF copy
holds rounded weights), while the HF model itself is always run in fp32.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
import torch.nn.functional as F

from megatron_soda.checkpointing import layout
from megatron_soda.config import ConfigError, TrainConfig
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_config import read_json
from megatron_soda.convert.to_hf import PROVENANCE_FILE
from megatron_soda.tokenizer import SodaTokenizer

ATOL_FP32 = 1e-4
ATOL_LOW_PRECISION = 5e-2


def heldout_samples(config: TrainConfig, tokenizer: SodaTokenizer, seq_length: int) -> list[dict]:
    """The samples the trainer's evaluations scored (tokens/labels/loss_mask per sample)."""
    from megatron_soda.training.data import build_datasets

    optim, eval_iters = config.optim, config.checkpoint.eval_iters
    gbs = optim.global_batch_size
    own_group = not torch.distributed.is_initialized()
    with tempfile.TemporaryDirectory() as tmp:
        if own_group:
            torch.distributed.init_process_group(
                "gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1
            )
        try:
            _, valid = build_datasets(
                config.data, optim.seed, tokenizer, seq_length, optim.train_iters * gbs, eval_iters * gbs
            )
        finally:
            if own_group:
                torch.distributed.destroy_process_group()
    if valid is None:
        raise ConversionError("the training run had no validation data")
    return [valid[i] for i in range(eval_iters * gbs)]


@torch.no_grad()
def hf_loss(
    model,
    samples: list[dict],
    eod: int,
    *,
    reset_attention_mask: bool,
    reset_position_ids: bool,
    eod_mask_loss: bool,
) -> tuple[float, int]:
    """(sum of cross-entropy, number of scored tokens) of ``model`` on ``samples``."""
    if reset_attention_mask != reset_position_ids:
        raise ConversionError(
            "only runs with both or neither of --reset-attention-mask/--reset-position-ids "
            "can be rescored"
        )
    total, count = 0.0, 0
    for sample in samples:
        tokens = torch.as_tensor(sample["tokens"], dtype=torch.long)
        labels = torch.as_tensor(sample["labels"], dtype=torch.long)
        mask = torch.as_tensor(sample["loss_mask"], dtype=torch.float64)
        if eod_mask_loss:
            mask = mask * (tokens != eod)
        if reset_attention_mask:  # one forward per document (an EOS ends its document)
            ends = (torch.nonzero(tokens == eod).flatten() + 1).tolist()
            cuts = [0] + [e for e in ends if e < len(tokens)] + [len(tokens)]
        else:
            cuts = [0, len(tokens)]
        logits = torch.cat(
            [
                model(input_ids=tokens[a:b][None]).logits[0].float()
                for a, b in zip(cuts[:-1], cuts[1:])
                if b > a
            ]
        )
        ce = F.cross_entropy(logits.double(), labels, reduction="none")
        total += float((ce * mask).sum())
        count += int(mask.sum())
    return total, count


def _eval_record(metrics: str, iteration: int) -> dict[str, Any]:
    if not os.path.isfile(metrics):
        raise ConversionError(f"{metrics}: no such metrics file")
    with open(metrics) as f:
        records = [
            r
            for r in map(json.loads, filter(str.strip, f))
            if r.get("split") == "valid" and r.get("iteration") == iteration
        ]
    if not records:
        raise ConversionError(
            f"{metrics}: no validation record at iteration {iteration} (the checkpoint's); "
            "evaluate at that iteration (--eval-interval) or convert a checkpoint that was evaluated"
        )
    return records[-1]


def check_hf_loss(
    hf_dir: str,
    load: str | None = None,
    metrics: str | None = None,
    data_path: list[str] | None = None,
    atol: float | None = None,
) -> dict[str, Any]:
    """Compare; returns a dict with ``passed``, both losses, the difference and the tolerance."""
    from transformers import AutoModelForCausalLM

    if load is None:
        load = read_json(os.path.join(hf_dir, PROVENANCE_FILE)).get("source_checkpoint")
    try:
        ckpt = layout.find_checkpoint(load) if load and os.path.isdir(load) else None
    except layout.CheckpointError as e:  # the tracker names a missing/incomplete iteration
        raise ConversionError(str(e)) from None
    if ckpt is None:
        raise ConversionError(f"{load}: no megatron_soda checkpoint (pass --load CKPT_DIR)")
    meta = layout.read_meta(ckpt)
    try:
        run = TrainConfig.from_dict(read_json(os.path.join(ckpt, "run_args.json")))
    except ConfigError as e:
        raise ConversionError(f"{ckpt}/run_args.json: {e}") from None
    if data_path:
        run.data.data_path = list(data_path)
        run.data.train_data_path = run.data.valid_data_path = run.data.test_data_path = None
    metrics = metrics or run.logging.metrics_jsonl
    if not metrics:
        raise ConversionError("the run wrote no metrics JSONL; pass --metrics-jsonl")
    iteration = meta["train_state"]["iteration"]
    record = _eval_record(metrics, iteration)
    tok = SodaTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
    samples = heldout_samples(run, tok, meta["model"]["seq_length"])
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, local_files_only=True, use_safetensors=True
    ).eval()
    total, count = hf_loss(
        model,
        samples,
        tok.eod,
        reset_attention_mask=run.data.reset_attention_mask,
        reset_position_ids=run.data.reset_position_ids,
        eod_mask_loss=run.data.eod_mask_loss,
    )
    config = read_json(os.path.join(hf_dir, "config.json"))
    hf_dtype = config.get("dtype") or config.get("torch_dtype", "float32")
    low = run.precision.bf16 or run.precision.fp16 or hf_dtype != "float32"
    atol = atol if atol is not None else (ATOL_LOW_PRECISION if low else ATOL_FP32)
    loss = total / count if count else float("nan")
    diff = abs(loss - record["lm_loss"])
    same_tokens = count == record.get("tokens", count)
    return {
        "passed": bool(diff <= atol and same_tokens),
        "hf_loss": loss,
        "trainer_loss": record["lm_loss"],
        "abs_diff": diff,
        "atol": atol,
        "tokens": count,
        "trainer_tokens": record.get("tokens"),
        "iteration": iteration,
        "checkpoint": ckpt,
        "metrics": metrics,
    }
