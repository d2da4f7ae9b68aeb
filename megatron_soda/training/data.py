"""Training/validation data: megatron's BlendedMegatronDatasetBuilder + GPTDataset, a resumable
sampler, and the per-microbatch batch with document masks derived from EOS.

Every rank reads its data-parallel slice itself (tensor/pipeline peers read the same samples), so
no broadcast is needed.  Document structure (masks, restarted positions, packed-sequence
boundaries) is computed on the device from the tokens, one vectorised pass per micro-batch,
instead of megatron's per-sample Python loop in the DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import get_blend_from_list

from megatron_soda.config import DataConfig
from megatron_soda.config.data import DEFAULT_SPLIT
from megatron_soda.models.context_parallel import cp_layout, split_for_rank
from megatron_soda.tokenizer import SodaTokenizer


class _DatasetTokenizer:
    """What megatron's GPTDataset needs from a tokenizer.  ``pad`` is -1 (an id that never occurs)
    because SODA has no pad token and megatron would otherwise treat EOS as padding."""

    def __init__(self, tokenizer: SodaTokenizer) -> None:
        self.eod = tokenizer.eod
        self.vocab_size = tokenizer.vocab_size
        self.unique_identifiers = tokenizer.unique_identifiers
        self.pad = -1


def blends(data: DataConfig) -> dict:
    """``blend`` + ``split`` or ``blend_per_split``, in GPTDatasetConfig's terms."""
    if data.data_path:
        blend = get_blend_from_list(data.data_path)
        if data.valid_data_path or data.test_data_path:
            # held-out prefixes given separately: --data-path is all training data
            return {"blend_per_split": [blend, get_blend_from_list(data.valid_data_path),
                                        get_blend_from_list(data.test_data_path)]}
        return {"blend": blend, "split": data.split or DEFAULT_SPLIT}
    return {"blend_per_split": [get_blend_from_list(p) for p in
                                (data.train_data_path, data.valid_data_path, data.test_data_path)]}


def all_prefixes(data: DataConfig) -> list[str]:
    out: list[str] = []
    for flag in (data.data_path, data.train_data_path, data.valid_data_path, data.test_data_path):
        blend = get_blend_from_list(flag)
        if blend:
            out.extend(p for p in blend[0] if p not in out)
    return out


def build_datasets(data: DataConfig, seed: int, tokenizer: SodaTokenizer, seq_length: int,
                   train_samples: int, valid_samples: int, sft: bool = False) -> tuple:
    """Train and validation datasets; with ``sft`` their samples also carry ``response_mask``
    (:class:`megatron_soda.training.sft_data.SftGPTDataset`)."""
    from megatron_soda.training.sft_data import SftGPTDataset

    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        path_to_cache=data.data_cache_path,
        tokenizer=_DatasetTokenizer(tokenizer),
        # Masks and positions are built per batch on the device (see make_batch).
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
        **blends(data),
    )
    sizes = [train_samples, valid_samples, 0]
    cls = SftGPTDataset if sft else GPTDataset
    train, valid, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    return train, valid


class ResumableBatchSampler:
    """Megatron's pretraining order: global batch g holds samples [start_g, start_g + size_g);
    data-parallel rank r takes micro-batches ``r*mbs + k*mbs*dp``.  Restarting at
    ``consumed_samples`` continues exactly where a previous run stopped."""

    def __init__(self, total: int, consumed: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> None:
        self.total, self.consumed = total, consumed
        self.mbs, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[int]]:
        stride = self.mbs * self.dp_size
        start = self.consumed
        while start + stride <= self.total:
            first = start + self.dp_rank * self.mbs
            yield list(range(first, first + self.mbs))
            start += stride


def data_loader(dataset, consumed: int, micro_batch_size: int, num_workers: int) -> Iterator[dict]:
    sampler = ResumableBatchSampler(
        len(dataset), consumed, micro_batch_size,
        parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size(),
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    return iter(loader)


@dataclass
class Batch:
    tokens: torch.Tensor          # [b, s] (or [1, b*s] packed)
    labels: torch.Tensor          # like tokens
    loss_mask: torch.Tensor       # float, like tokens
    position_ids: torch.Tensor    # like tokens
    # local: [b, 1, s, s] bool, True = masked; sdpa/flex: None (causal) or [b, s] integer document
    # ids (flex; see models/attention.py for why ids travel in attention_mask); under context
    # parallelism the ids stay global [b, S] while the other tensors hold this rank's [b, S / CP]
    attention_mask: torch.Tensor | None = None
    packed_seq_params: object | None = None     # PackedSeqParams (Transformer Engine, THD)
    # SFT (float, like tokens): labels that are response tokens / prompt tokens (padding in neither)
    response_mask: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None

    def model_kwargs(self) -> dict:
        return dict(input_ids=self.tokens, position_ids=self.position_ids, attention_mask=self.attention_mask,
                    labels=self.labels, packed_seq_params=self.packed_seq_params)


def document_ids(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """Index of the document each position belongs to; an EOS ends (belongs to) its document."""
    is_eod = (tokens == eod).to(torch.int32)
    return torch.cumsum(is_eod, dim=-1) - is_eod


def document_starts(doc: torch.Tensor) -> torch.Tensor:
    """True where a document (or a sample) begins."""
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    return starts


def restarted_positions(doc: torch.Tensor) -> torch.Tensor:
    """Position of each token within its document."""
    s = doc.size(-1)
    ar = torch.arange(s, device=doc.device).expand_as(doc)
    starts = document_starts(doc)
    start_pos = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=-1).values
    return ar - start_pos


def document_causal_mask(doc: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] boolean mask, True where attention is *not* allowed."""
    s = doc.size(-1)
    causal = torch.ones(s, s, dtype=torch.bool, device=doc.device).triu(1)
    other_doc = doc.unsqueeze(-1) != doc.unsqueeze(-2)
    return (causal | other_doc).unsqueeze(1)


def make_batch(raw: dict, eod: int, device: torch.device, *, reset_attention_mask: bool,
               reset_position_ids: bool, eod_mask_loss: bool, packed: bool, prompt_loss: bool = False,
               attention: str = "local", context_parallel: tuple[int, int] | None = None) -> Batch:
    """Move one micro-batch from the DataLoader to ``device`` and add document structure.  An SFT
    micro-batch (``raw["response_mask"]``) trains the response tokens only, unless ``prompt_loss``.
    ``attention`` (``--attention-backend``): ``sdpa``/``flex`` batches carry no dense mask, only
    the document ids (flex) or nothing (causal); ``local`` batches the dense ``[b, 1, s, s]`` mask.
    ``context_parallel`` (rank, size), default megatron's CP group: with size > 1 every per-token
    tensor keeps this rank's 2 load-balanced chunks (models/context_parallel.py), the document ids
    (flex) stay global ``[b, s]``."""
    tokens = raw["tokens"].to(device, non_blocking=True)
    labels = raw["labels"].to(device, non_blocking=True)
    loss_mask = raw["loss_mask"].to(device, non_blocking=True).float()
    if eod_mask_loss:
        loss_mask = loss_mask * (tokens != eod)
    response = prompt = None
    if "response_mask" in raw:
        response = raw["response_mask"].to(device, non_blocking=True).float() * loss_mask
        prompt = loss_mask - response
        if not prompt_loss:
            loss_mask = response
    b, s = tokens.shape
    doc = document_ids(tokens, eod) if (reset_attention_mask or reset_position_ids) else None
    if reset_position_ids:
        position_ids = restarted_positions(doc)
    else:
        position_ids = torch.arange(s, device=device).expand(b, s).contiguous()
    cp_rank, cp_size = cp_layout() if context_parallel is None else context_parallel
    if packed:
        if cp_size > 1:
            raise ValueError("context parallelism of packed (THD, Transformer Engine) batches is not built")
        # boundaries from the host copy of the tokens: no device sync before the step
        params = packed_seq_params(raw["tokens"], eod if reset_attention_mask else None, device)
        flat = [None if t is None else t.reshape(1, -1) for t in (response, prompt)]
        return Batch(tokens.reshape(1, -1), labels.reshape(1, -1), loss_mask.reshape(1, -1),
                     position_ids.reshape(1, -1), attention_mask=None, packed_seq_params=params,
                     response_mask=flat[0], prompt_mask=flat[1])
    if cp_size > 1:
        if attention != "flex":
            raise ValueError(f"context parallelism runs on --attention-backend flex, not {attention}")
        tokens, labels, loss_mask, position_ids, response, prompt = (
            None if t is None else split_for_rank(t, cp_rank, cp_size)
            for t in (tokens, labels, loss_mask, position_ids, response, prompt))
    if attention in ("sdpa", "flex"):
        mask = doc if reset_attention_mask else None
    elif reset_attention_mask:
        mask = document_causal_mask(doc)
    else:
        mask = torch.ones(s, s, dtype=torch.bool, device=device).triu(1).expand(b, 1, s, s)
    return Batch(tokens, labels, loss_mask, position_ids, attention_mask=mask, response_mask=response,
                 prompt_mask=prompt)


def packed_seq_params(host_tokens: torch.Tensor, eod: int | None, device: torch.device):
    """THD layout for Transformer Engine (the micro-batch flattened to one row): ``cu_seqlens``
    at every sample and, with document masking (``eod`` given), every document boundary.
    Computed on the host tokens, so building it never waits for the device."""
    from megatron.core.packed_seq_params import PackedSeqParams

    b, s = host_tokens.shape
    if eod is None:
        cu = torch.arange(0, b * s + 1, s, dtype=torch.int32)
        max_len = s
    else:
        starts = document_starts(document_ids(host_tokens, eod))
        flat_starts = torch.nonzero(starts.reshape(-1)).squeeze(-1)
        cu = torch.cat([flat_starts, torch.tensor([b * s])]).to(torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
    cu = cu.to(device, non_blocking=True)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max_len, max_seqlen_kv=max_len)
