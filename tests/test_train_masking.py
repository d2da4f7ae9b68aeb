"""Documents never attend across EOS boundaries (the batch the trainer builds, through the model)."""

from __future__ import annotations

import pytest
import torch
from helpers_train import SingleProcessMegatron, build_tiny_model

from megatron_soda.training.data import document_ids, make_batch, restarted_positions

VOCAB, EOS, BOS = 1000, 2, 1


@pytest.fixture(scope="module")
def model():
    with SingleProcessMegatron():
        m, _ = build_tiny_model(vocab_size=VOCAB)
        m.eval()
        yield m


def _doc(rng: torch.Generator, length: int) -> list[int]:
    return [BOS, *torch.randint(3, VOCAB, (length - 2,), generator=rng).tolist(), EOS]


def per_token_loss(model, tokens: list[int], reset_attention_mask: bool = True) -> torch.Tensor:
    seq = torch.tensor([tokens])
    raw = {"tokens": seq[:, :-1], "labels": seq[:, 1:], "loss_mask": torch.ones(1, len(tokens) - 1)}
    batch = make_batch(raw, EOS, torch.device("cpu"), reset_attention_mask=reset_attention_mask,
                       reset_position_ids=True, eod_mask_loss=False, packed=False)
    with torch.no_grad():
        return model(**batch.model_kwargs())[0, 0]  # cross-entropy per position


def test_a_tokens_loss_ignores_other_documents_in_the_sequence(model):
    g = torch.Generator().manual_seed(0)
    first, second, third = _doc(g, 20), _doc(g, 25), _doc(g, 30)
    other_first = _doc(g, 20)  # same length, different content
    base = per_token_loss(model, first + second + third)
    changed = per_token_loss(model, other_first + second + third)
    later = slice(len(first), None)  # every position of the second and third documents
    torch.testing.assert_close(changed[later], base[later], rtol=0, atol=1e-6)
    assert (changed[: len(first) - 1] - base[: len(first) - 1]).abs().max() > 1e-3  # the first did change

    # a later document changing leaves earlier ones alone too
    other_third = _doc(g, 30)
    changed = per_token_loss(model, first + second + other_third)
    early = slice(0, len(first) + len(second))
    torch.testing.assert_close(changed[early], base[early], rtol=0, atol=1e-6)


def test_shorter_previous_document_leaves_the_next_ones_loss_unchanged(model):
    g = torch.Generator().manual_seed(1)
    first, short_first, second = _doc(g, 24), _doc(g, 12), _doc(g, 30)
    base = per_token_loss(model, first + second)[len(first):]
    shifted = per_token_loss(model, short_first + second)[len(short_first):]
    # same document at another offset: equal up to float rounding of the RoPE rotation
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-5)


def test_without_document_masks_the_other_document_leaks_in(model):
    """Control: the check above can fail (attention crosses EOS when masks are off)."""
    g = torch.Generator().manual_seed(0)
    first, second, other_first = _doc(g, 20), _doc(g, 25), _doc(g, 20)
    base = per_token_loss(model, first + second, reset_attention_mask=False)
    changed = per_token_loss(model, other_first + second, reset_attention_mask=False)
    later = slice(len(first), None)
    assert (changed[later] - base[later]).abs().max() > 1e-4


def test_document_ids_positions_and_packed_boundaries():
    tokens = torch.tensor([[5, 6, EOS, 7, EOS, 8, 9, 9], [EOS, 5, 5, 5, 5, EOS, 6, 6]])
    assert document_ids(tokens, EOS).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 2]]
    assert restarted_positions(document_ids(tokens, EOS)).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2],
                                                                        [0, 0, 1, 2, 3, 4, 0, 1]]
    raw = {"tokens": tokens, "labels": tokens, "loss_mask": torch.ones(2, 8)}
    packed = make_batch(raw, EOS, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                        eod_mask_loss=True, packed=True)
    assert packed.tokens.shape == (1, 16)
    assert packed.packed_seq_params.cu_seqlens_q.tolist() == [0, 3, 5, 8, 9, 14, 16]
    assert packed.packed_seq_params.max_seqlen_q == 5
    assert packed.loss_mask.view(2, 8)[tokens == EOS].sum() == 0  # --eod-mask-loss
    assert packed.packed_seq_params.cu_seqlens_q.dtype == torch.int32
    per_sample = make_batch(raw, EOS, torch.device("cpu"), reset_attention_mask=False,
                            reset_position_ids=True, eod_mask_loss=False, packed=True)
    assert per_sample.packed_seq_params.cu_seqlens_q.tolist() == [0, 8, 16]
    assert per_sample.packed_seq_params.cu_seqlens_q.dtype == torch.int32
    assert per_sample.packed_seq_params.max_seqlen_q == 8
    dense = make_batch(raw, EOS, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                       eod_mask_loss=False, packed=False)
    allowed = ~dense.attention_mask[0, 0]
    assert allowed[4].tolist() == [False, False, False, True, True, False, False, False]
