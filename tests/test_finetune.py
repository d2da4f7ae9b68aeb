"""finetune_soda.py (megatron-core SFT): prompt-loss masking of packed windows, the reported
response loss against an independent plain-torch computation from an HF model's logits, fine-tuning
from an HF export, and TP=2 parity.

The independent mask (:func:`expected_trained`) never reads megatron's indices: it cuts a window's
tokens at each ``<eos>`` and finds every piece in the shard's documents by content (a piece that
starts the window is a document's tail, the others its head or the whole document), then takes
``offset >= loss start`` per token: a per-document Python loop.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from helpers_train import REPO, _free_port, read_metrics, write_shard

from megatron_soda.checkpointing import CheckpointError
from megatron_soda.config import DataConfig
from megatron_soda.format.sft import write_loss_starts
from megatron_soda.format.shards import read_document, read_index
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.training.data import build_datasets, make_batch
from megatron_soda.training.sft_data import check_sft_prefixes, check_sft_resume

PARITY_ATOL = 1e-5  # as tests/test_train_torchrun.py: fp32, Cautious exact for the first 3 iterations
LOSS_ATOL = 1e-5    # megatron's forward vs transformers' Qwen3 in fp32 (measured 6e-8)
SEQ = 64
RUN = ["--device", "cpu", "--micro-batch-size", "2", "--global-batch-size", "4", "--seq-length", str(SEQ),
       "--train-iters", "3", "--lr", "1e-3", "--split", "80,20,0", "--log-interval", "1", "--eval-iters", "1",
       "--data-check", "quick"]


def sft_shard(prefix: str, tok: SodaTokenizer, num_docs: int, seed: int) -> tuple[str, np.ndarray]:
    """A speech shard (helpers_train) plus random loss starts in 1..len-2."""
    write_shard(prefix, tok, "speech", num_docs, seed=seed)
    lengths = np.asarray(read_index(prefix + ".idx").lengths, dtype=np.int64)
    starts = np.random.default_rng(seed).integers(1, lengths - 1)
    write_loss_starts(prefix, starts)
    return prefix, starts


def expected_trained(window: np.ndarray, docs: list[np.ndarray], starts: np.ndarray, eos: int) -> np.ndarray:
    """Per token of ``window`` (seq + 1 tokens): True if it is a response token of its document."""
    cut = [i + 1 for i in np.flatnonzero(window == eos)]
    pieces = [p for p in np.split(window, cut) if len(p)]
    flags: list[bool] = []
    for j, piece in enumerate(pieces):
        n = len(piece)
        found = set()
        for d, doc in enumerate(docs):
            offsets = range(len(doc) - n + 1) if (j == 0 and piece[-1] != eos) else (
                [len(doc) - n] if j == 0 else [0])
            for o in offsets:
                if 0 <= o <= len(doc) - n and np.array_equal(doc[o:o + n], piece):
                    # the first token of the window is never a target: only the rest must agree
                    found.add(tuple((np.arange(o, o + n) >= starts[d])[1 if j == 0 else 0:]))
        assert len(found) == 1, f"piece {j} of the window matched {len(found)} ways"
        got = list(found.pop())
        flags += ([False] if j == 0 else []) + got
    return np.asarray(flags)


class _Tok:  # what build_datasets reads of a tokenizer
    def __init__(self, tok: SodaTokenizer) -> None:
        self.eod, self.vocab_size, self.unique_identifiers = tok.eod, tok.vocab_size, tok.unique_identifiers


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_bpe_path):
    root = tmp_path_factory.mktemp("sft")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    prefix, starts = sft_shard(str(root / "data" / "sft"), tok, 60, seed=5)
    docs = [read_document(prefix, i) for i in range(len(starts))]
    return {"root": root, "tok": tok, "bpe": small_bpe_path, "prefix": prefix, "starts": starts, "docs": docs}


def test_window_mask_matches_a_per_document_loop(work, one_torch_thread):
    """Windows of 32 tokens over documents of ~100-200: most documents are cut across windows."""
    data = DataConfig(data_path=[work["prefix"]], split="100,0,0", data_cache_path=str(work["root"] / "cache4"))
    ds, _ = build_datasets(data, 7, _Tok(work["tok"]), 32, 40, 0, sft=True)
    eos, cut_first = work["tok"].eod, 0
    for i in range(len(ds)):
        s = ds[i]
        window = np.concatenate([s["tokens"].numpy(), s["labels"].numpy()[-1:]])
        want = expected_trained(window, work["docs"], work["starts"], eos)[1:]
        assert np.array_equal(s["response_mask"].numpy().astype(bool), want), f"sample {i}"
        cut_first += int(window[0] != work["tok"].layout.bos_id)
    assert cut_first > len(ds) // 2  # windows starting inside a document were covered
    raw = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("tokens", "labels", "loss_mask", "response_mask")}
    batch = make_batch(raw, eos, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                       eod_mask_loss=False, packed=False)
    assert torch.equal(batch.loss_mask, raw["response_mask"]) and torch.equal(batch.prompt_mask, 1 - raw["response_mask"])
    both = make_batch(raw, eos, torch.device("cpu"), reset_attention_mask=True, reset_position_ids=True,
                      eod_mask_loss=False, packed=True, prompt_loss=True)
    assert torch.equal(both.loss_mask, torch.ones(1, 4 * 32)) and torch.equal(both.response_mask, raw["response_mask"].reshape(1, -1))


def test_sft_needs_sft_shards(work, tmp_path):
    plain = write_shard(str(tmp_path / "plain" / "shard"), work["tok"], "speech", 5, seed=1)
    with pytest.raises(ValueError, match=r"--sft needs SFT shards .*plain/shard has none"):
        check_sft_prefixes([work["prefix"], plain], sft=True)
    assert check_sft_prefixes([work["prefix"]], sft=True) is None
    assert "are SFT shards" in check_sft_prefixes([work["prefix"], plain], sft=False)
    assert check_sft_prefixes([plain], sft=False) is None


def test_recipe_defaults_and_user_flags(tmp_path, capsys):
    from megatron_soda.config.sft import SFT_DEFAULTS
    from megatron_soda.finetune.megatron_sft import finetune_config

    base = ["--model-size", "tiny", "--tokenizer", "tok.json", "--data-path", "x", "--micro-batch-size", "1",
            "--train-iters", "100"]
    cfg = finetune_config(base)
    flat = {**cfg.to_dict(), "seq_length": cfg.model.architecture_for(0).seq_length}
    resolved = {k: v for k, v in SFT_DEFAULTS.items() if k != "lr_warmup_fraction"}  # said in iterations:
    assert cfg.sft.sft and {k: flat[k] for k in resolved} == resolved
    assert cfg.optim.lr_warmup_iters == 3 and cfg.optim.lr_decay_iters == 100  # 3% warmup, decay over the run
    mine = finetune_config([*base, "--lr", "1e-4", "--min-lr", "0", "--lr-warmup-iters", "5", "--seq-length", "512",
                            "--sft-prompt-loss"])
    assert (mine.optim.lr, mine.optim.min_lr, mine.optim.min_lr_ratio, mine.optim.lr_warmup_iters) == (1e-4, 0, None, 5)
    assert mine.model.architecture_for(0).seq_length == 512 and mine.sft.sft_prompt_loss
    with pytest.raises(SystemExit):
        finetune_config(base[4:])
    assert "give --load" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune_config(["--load", str(tmp_path), *base[4:]])  # not a checkpoint: an HF model needs --save
    assert "give --save DIR" in capsys.readouterr().err


def finetune(nproc: int, args: list[str], timeout: float = 300):
    import subprocess

    cmd = [os.path.join(os.path.dirname(__import__("sys").executable), "torchrun"), "--nproc_per_node", str(nproc),
           "--master_port", str(_free_port()), os.path.join(REPO, "finetune_soda.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"finetune failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def reference_losses(model_dir: str, ds, n: int, work) -> tuple[float, int, int]:
    """(mean CE over the trained targets, their count, prompt targets) of samples 0..n-1 from an
    HF model: each document piece of a window run on its own (positions from 0), as the
    trainer's document masking does; targets crossing a document boundary are never trained."""
    from megatron_soda.convert.in_memory import load_model

    model = load_model(model_dir).model
    eos = work["tok"].eod
    ce_sum, trained_n, prompt_n = 0.0, 0, 0
    for i in range(n):
        s = ds[i]
        window = np.concatenate([s["tokens"].numpy(), s["labels"].numpy()[-1:]])
        trained = expected_trained(window, work["docs"], work["starts"], eos)
        prompt_n += int((~trained[1:]).sum())
        begin = 0
        for end in [*(int(j) + 1 for j in np.flatnonzero(window[:-1] == eos)), SEQ]:
            piece = torch.from_numpy(window[begin:end]).long()[None]
            with torch.no_grad():
                logits = model(input_ids=piece).logits[0].double()
            targets = torch.from_numpy(window[begin + 1:end + 1]).long()
            ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            keep = torch.from_numpy(trained[begin + 1:end + 1])
            assert not (end < SEQ and keep[-1]), "a target across documents is never trained"
            ce_sum += float(ce[keep].sum())
            trained_n += int(keep.sum())
            begin = end
    return ce_sum / trained_n, trained_n, prompt_n


@pytest.mark.torchrun
def test_finetune_from_hf_export_reports_the_masked_loss_and_tp2_matches(work, one_torch_thread):
    from megatron_soda.testing.eval_models import make_tiny_soda

    root = work["root"]
    tiny = make_tiny_soda(str(root / "model"), work["bpe"])
    save, metrics = str(root / "ck_tp1"), str(root / "tp1.jsonl")
    flags = ["--load", tiny.hf, "--save", save, "--data-path", work["prefix"], "--metrics-jsonl", metrics, *RUN]
    proc = finetune(1, flags)  # (a requeue resuming from its own --save: test_train_torchrun.py)
    assert "weights only" in proc.stdout and "from iteration 0" in proc.stdout
    train, (valid,) = read_metrics(metrics), read_metrics(metrics, "valid")
    for r in [*train, valid]:
        assert r["response_loss"] == r["lm_loss"] and r["response_tokens"] == r["tokens"] > 0
        assert r["prompt_tokens"] > 0 and math.isfinite(r["lm_loss"])
    # the recipe's schedule: cosine from --lr to 0.1x over the run, 3% warmup (0 iterations of 3)
    cosine = [1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * i / 3)) for i in range(3)]
    assert [r["lr"] for r in train] == pytest.approx(cosine)
    with open(os.path.join(save, "iter_0000003", "run_args.json")) as f:
        record = json.load(f)
    assert record["sft"] and record["lr_decay_style"] == "cosine" and record["min_lr_ratio"] == 0.1
    assert (record["adam_beta1"], record["adam_beta2"], record["adam_eps"], record["weight_decay"]) == (
        0.9, 0.999, 1e-8, 0.01)

    check_sft_resume(save, sft=True, prompt_loss=False)  # the objective a resume must keep
    for other in ((False, False), (True, True)):
        with pytest.raises(CheckpointError, match="resuming would change what the loss covers"):
            check_sft_resume(save, *other)

    # the same windows, rebuilt as the trainer built them (same seed, split, sizes)
    data = DataConfig(data_path=[work["prefix"]], split="80,20,0")
    train_ds, valid_ds = build_datasets(data, 1234, _Tok(work["tok"]), SEQ, 12, 4, sft=True)
    # iteration 1 trains on samples 0..3 with the exported weights; validation after iteration 3
    want, n, prompt = reference_losses(tiny.hf, train_ds, 4, work)
    assert (train[0]["response_tokens"], train[0]["prompt_tokens"]) == (n, prompt)
    assert abs(train[0]["response_loss"] - want) <= LOSS_ATOL, (train[0]["response_loss"], want)
    want, n, prompt = reference_losses(save, valid_ds, 4, work)
    assert (valid["response_tokens"], valid["prompt_tokens"]) == (n, prompt)
    assert abs(valid["response_loss"] - want) <= LOSS_ATOL, (valid["response_loss"], want)

    # TP=2 from the converted checkpoint (a megatron_soda checkpoint as --load): every iteration
    # and the validation match (data order, masks, optimizer state)
    metrics2 = str(root / "tp2.jsonl")
    finetune(2, ["--load", os.path.join(save, "init_from_hf"), "--data-path", work["prefix"],
                 "--metrics-jsonl", metrics2, "--tensor-model-parallel-size", "2", *RUN])
    for a, b in zip([*train, valid], [*read_metrics(metrics2), *read_metrics(metrics2, "valid")], strict=True):
        assert abs(a["response_loss"] - b["response_loss"]) <= PARITY_ATOL, (a, b)
        assert a["prompt_tokens"] == b["prompt_tokens"]
