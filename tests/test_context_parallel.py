"""Context parallelism without Transformer Engine (models/context_parallel.py, docs/context_parallel.md):
the split against megatron's own rotary split, the batch each rank gets, one rank's attention
against the rows of global attention, the block masks' load balance, the refusals, and (torchrun,
tests/context_parallel_worker.py) the tiny model at CP=2 against CP=1: loss and every gradient."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from helpers_train import torchrun

from megatron_soda.config import ConfigError, ParallelConfig, PrecisionConfig
from megatron_soda.models import context_parallel as cp
from megatron_soda.models import te
from megatron_soda.models.attention import _flex
from megatron_soda.training.data import document_causal_mask, document_ids, make_batch

EOD = 7


class _Group:
    """What megatron's get_pos_emb_on_this_cp_rank asks of a process group."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def documents_raw(seq: int = 64, rows: int = 3) -> dict:
    g = torch.Generator().manual_seed(seq)
    tokens = torch.randint(8, 200, (rows, seq + 1), generator=g)
    tokens[0, [3, 4, seq // 4, seq // 2 + 1, seq - 1]] = EOD
    tokens[2, [0, seq // 2 - 1]] = EOD  # row 1: no EOS
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
            "loss_mask": (torch.rand(rows, seq, generator=g) > 0.2).float(),
            "response_mask": (torch.rand(rows, seq, generator=g) > 0.5).long()}


@pytest.mark.parametrize("seq,size", [(8, 2), (24, 3), (64, 4)])
def test_split_is_megatrons_rotary_split_and_reassembles(seq, size):
    from megatron.core.models.common.embeddings.rope_utils import get_pos_emb_on_this_cp_rank

    from megatron_soda.compat import cpu_compat

    full = torch.randn(2, seq, 3)
    back = torch.zeros_like(full)
    for rank in range(size):
        pos = cp.chunk_positions(seq, rank, size)
        with cpu_compat():  # megatron's rotary table split: the positions our tokens must have
            table = get_pos_emb_on_this_cp_rank(torch.arange(seq).view(seq, 1), 0, _Group(rank, size))
        assert torch.equal(pos, table.view(-1))
        part = cp.split_for_rank(full, rank, size)
        assert part.shape == (2, seq // size, 3)
        back[:, pos] = part
    assert torch.equal(back, full)  # every token on exactly one rank
    assert torch.equal(cp.gathered_positions(seq, size).sort().values, torch.arange(seq))
    with pytest.raises(ValueError, match="not a multiple of 2 x"):
        cp.chunk_positions(seq + 2, 0, size)


def test_make_batch_gives_each_rank_its_chunks_and_the_global_document_ids():
    raw = documents_raw()
    kw = dict(reset_attention_mask=True, reset_position_ids=True, eod_mask_loss=True, packed=False, attention="flex")
    full = make_batch(raw, EOD, torch.device("cpu"), context_parallel=(0, 1), **kw)
    assert full.attention_mask.shape == (3, 64)
    for rank in range(2):
        part = make_batch(raw, EOD, torch.device("cpu"), context_parallel=(rank, 2), **kw)
        pos = cp.chunk_positions(64, rank, 2)
        for name in ("tokens", "labels", "loss_mask", "position_ids", "response_mask", "prompt_mask"):
            assert torch.equal(getattr(part, name), getattr(full, name)[:, pos]), name
        assert torch.equal(part.attention_mask, full.attention_mask)  # global [b, S]
    with pytest.raises(ValueError, match="flex, not local"):
        make_batch(raw, EOD, torch.device("cpu"), context_parallel=(0, 2), **{**kw, "attention": "local"})
    with pytest.raises(ValueError, match="packed"):
        make_batch(raw, EOD, torch.device("cpu"), context_parallel=(0, 2), **{**kw, "packed": True})


@pytest.mark.parametrize("documents", [True, False], ids=["documents", "causal"])
def test_one_ranks_attention_is_the_rows_of_global_attention(documents):
    """Without processes: rank r's queries against the keys in gathered (rank-major) order, through
    the CP block mask, equal rows ``chunk_positions(r)`` of dense global attention (SDPA)."""
    seq, size, b, h, d = 64, 2, 3, 2, 8
    doc = document_ids(documents_raw(seq)["tokens"], EOD)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, seq, d, generator=g) for _ in range(3))
    dense = ~document_causal_mask(doc if documents else torch.zeros_like(doc))  # True = attend
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    kv_pos = cp.gathered_positions(seq, size)
    for rank in range(size):
        pos = cp.chunk_positions(seq, rank, size)
        mask = cp.cp_block_mask(doc if documents else None, b, seq // size, rank, size, torch.device("cpu"))
        got = _flex(q[:, :, pos], k[:, :, kv_pos], v[:, :, kv_pos], mask, d ** -0.5)
        torch.testing.assert_close(got, want[:, :, pos], atol=1e-5, rtol=1e-5)


def test_block_masks_are_balanced_and_as_sparse_as_the_global_one():
    """Chunks of 128 tokens (flex's block): the ranks' causal masks together compute exactly the
    global mask's blocks, and each rank the same number (megatron's 2 x CP load balance)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def blocks(mask) -> int:
        return int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())

    seq, size = 1024, 4
    glob = create_block_mask(lambda b, h, q, kv: q >= kv, None, None, seq, seq, device="cpu", BLOCK_SIZE=128)
    per_rank = [blocks(cp.cp_block_mask(None, 1, seq // size, r, size, torch.device("cpu"))) for r in range(size)]
    assert sum(per_rank) == blocks(glob) and len(set(per_rank)) == 1, (per_rank, blocks(glob))


def test_block_mask_is_cached_per_micro_batch():
    doc = document_ids(documents_raw()["tokens"], EOD)
    first = cp.cp_block_mask(doc, 3, 32, 0, 2, torch.device("cpu"))
    assert cp.cp_block_mask(doc.detach(), 3, 32, 0, 2, torch.device("cpu")) is first
    assert cp.cp_block_mask(doc, 3, 32, 1, 2, torch.device("cpu")) is not first  # another rank's rows
    assert cp.cp_block_mask(doc.clone(), 3, 32, 0, 2, torch.device("cpu")) is not first


# ---------------------------------------------------------------------- the flags
def validated(backend: str, device: str = "cpu", documents: bool = True, size: int = 2, **kw) -> PrecisionConfig:
    p = PrecisionConfig(attention_backend=backend, **kw)
    p.validate(ParallelConfig(device=device, context_parallel_size=size), documents)
    return p


def test_flex_is_accepted_and_other_kernels_are_refused(monkeypatch):
    monkeypatch.setattr(te, "te_available", lambda: False)
    assert validated("flex").transformer_impl == "local"
    assert validated("flex", documents=False).attention_backend == "flex"
    with pytest.raises(ConfigError, match="needs --attention-backend flex, not sdpa"):
        validated("sdpa", documents=False)  # causal only: fine at CP=1, refused at CP=2
    validated("sdpa", documents=False, size=1)
    with pytest.raises(ConfigError, match="needs --attention-backend flex, not local"):
        validated("local")
    assert validated("auto").attention_backend == "flex"  # under CP auto picks flex, CPU included
    monkeypatch.setattr(te, "te_available", lambda: True)
    auto = validated("auto", device="cuda", bf16=True)  # TE installed: auto still takes flex
    assert (auto.transformer_impl, auto.attention_backend) == ("local", "flex")
    with pytest.raises(ConfigError, match="not implemented yet with Transformer Engine"):
        validated("auto", device="cuda", bf16=True, transformer_impl="transformer_engine")
    with pytest.raises(ConfigError, match="not implemented yet with Transformer Engine"):
        validated("te", device="cuda", bf16=True)
    assert validated("flex", device="cuda", bf16=True).transformer_impl == "local"


def test_sequence_length_must_split_into_2_cp_chunks():
    ParallelConfig(context_parallel_size=2).check_world_size(4, 256)
    with pytest.raises(ConfigError, match="does not divide --seq-length 258 into 2 x 2 = 4 equal chunks"):
        ParallelConfig(context_parallel_size=2).check_world_size(4, 258)
    with pytest.raises(ConfigError, match="does not divide --seq-length 260 / --context-parallel-size 2"):
        ParallelConfig(context_parallel_size=2, tensor_model_parallel_size=4,
                       sequence_parallel=True).check_world_size(8, 260)


@pytest.mark.torchrun
def test_cp2_matches_cp1_loss_and_gradients():
    proc = torchrun(2, [], timeout=240, script=os.path.join("tests", "context_parallel_worker.py"))
    assert proc.stdout.count(": ok") == 4, proc.stdout
