"""The DeepSpeed / plain-torch fine-tuner (megatron_soda/finetune/deepspeed_*.py): its windows
against megatron's GPTDataset and an independent packing, its masked loss against a per-document
recomputation, its first losses against the megatron trainer (finetune_soda.py) on the same
windows, and DeepSpeed ZeRO-3 with CPU offload (on the CPU, gloo) against the plain engine,
resumed, exported and converted back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
import torch
from helpers_train import REPO, _free_port, read_metrics, write_shard

from megatron_soda.format.sft import write_loss_starts
from megatron_soda.format.shards import read_document, read_index
from megatron_soda.tokenizer import SodaTokenizer

SEQ = 64
# megatron's forward vs transformers' Qwen3, fp32 on the CPU, the same Cautious updates:
# measured |diff| <= 6e-8 on iterations 1-3 (the export is exact)
PARITY_ATOL = 1e-6
RUN = [
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--seq-length",
    str(SEQ),
    "--train-iters",
    "3",
    "--lr",
    "1e-3",
]
MEGATRON_RUN = [
    *RUN,
    "--device",
    "cpu",
    "--split",
    "80,20,0",
    "--log-interval",
    "1",
    "--eval-iters",
    "1",
    "--data-check",
    "quick",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_bpe_path):
    from megatron_soda.testing.eval_models import make_tiny_soda

    root = tmp_path_factory.mktemp("ftds")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    prefix = str(root / "data" / "sft")
    write_shard(prefix, tok, "speech", 60, seed=5)
    lengths = np.asarray(read_index(prefix + ".idx").lengths, dtype=np.int64)
    starts = np.random.default_rng(5).integers(1, lengths - 1)
    write_loss_starts(prefix, starts)
    docs = [read_document(prefix, i) for i in range(len(starts))]
    tiny = make_tiny_soda(str(root / "model"), small_bpe_path)
    return {
        "root": root,
        "tok": tok,
        "prefix": prefix,
        "starts": starts,
        "docs": docs,
        "hf": tiny.hf,
    }


def _trained(doc_ids: list[int], offsets: list[int], starts: np.ndarray) -> np.ndarray:
    return np.array([o >= starts[d] for d, o in zip(doc_ids, offsets)])


def test_sequential_windows_pack_the_permuted_documents(work):
    """Window i is stream tokens [i*SEQ, (i+1)*SEQ] of the documents concatenated epoch by epoch in
    the seeded order; trained iff offset >= the document's loss start (recomputed here)."""
    from megatron_soda.finetune.deepspeed_data import SftShards, sequential_windows

    shards = SftShards([work["prefix"]], work["tok"].layout)
    docs, starts = work["docs"], work["starts"]
    stream, owner, offset = [], [], []
    for epoch in range(2):
        for d in np.random.default_rng([7, epoch]).permutation(len(docs)):
            stream.append(docs[d])
            owner += [d] * len(docs[d])
            offset += list(range(len(docs[d])))
    stream = np.concatenate(stream)
    n = len(stream) // SEQ - 1  # every window of the first two epochs, crossing into the second
    for i, w in enumerate(islice(sequential_windows(shards.lengths, SEQ, 7), n)):
        tokens, trained = shards.window(w, SEQ, work["tok"].eod)
        span = slice(i * SEQ, (i + 1) * SEQ + 1)
        assert np.array_equal(tokens, stream[span])
        assert np.array_equal(trained, _trained(owner[span], offset[span], starts))


def test_megatron_windows_are_gptdatasets_samples(work):
    """The windows built from megatron's indices hold GPTDataset's tokens, and their trained
    targets are the trainer's response mask (training/sft_data.py)."""
    from megatron_soda.finetune.deepspeed_data import SftShards, megatron_windows

    ds, arrays = _megatron_train_dataset(work)
    shards = SftShards([work["prefix"]], check=False)
    for i, w in enumerate(megatron_windows(*arrays, shards.lengths)):
        tokens, trained = shards.window(w, SEQ, work["tok"].eod)
        sample = ds[i]
        assert np.array_equal(tokens[:-1], sample["tokens"].numpy())
        assert np.array_equal(tokens[1:], sample["labels"].numpy())
        assert np.array_equal(trained[1:], sample["response_mask"].numpy() > 0)


def _megatron_train_dataset(work):
    """The training split the trainer builds for MEGATRON_RUN (its seed, split and sizes: 3
    iterations x 4 samples, one validation pass of 4) and its index arrays."""
    from megatron_soda.config import DataConfig
    from megatron_soda.training.data import build_datasets

    class _Tok:  # what build_datasets reads of a tokenizer
        eod, vocab_size, unique_identifiers = (
            work["tok"].eod,
            work["tok"].vocab_size,
            work["tok"].unique_identifiers,
        )

    data = DataConfig(data_path=[work["prefix"]], split="80,20,0")
    train, _ = build_datasets(data, 1234, _Tok(), SEQ, 12, 4, sft=True)
    train[0]  # megatron memory-maps its indices on first use
    return train, (train.document_index, train.sample_index, train.shuffle_index)


def test_loss_sums_match_a_per_document_recomputation(work, one_torch_thread):
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.finetune.deepspeed_data import SftShards, micro_batch, sequential_windows
    from megatron_soda.finetune.deepspeed_model import masked_loss_sums

    tok, z = work["tok"], 1e-2
    model = load_model(work["hf"]).model
    shards = SftShards([work["prefix"]], tok.layout)
    seq = 4 * SEQ  # windows holding several documents each
    batch = micro_batch(
        shards, list(islice(sequential_windows(shards.lengths, seq, 3), 3)), seq, tok.eod
    )
    assert all((row[:-1] == tok.eod).any() for row in batch.tokens)
    with torch.no_grad():
        got, report = masked_loss_sums(model, batch, tok.eod, tok.vocab_size, z, "cpu")
        want, ce_sum = 0.0, 0.0
        for row in range(3):
            tokens, labels, mask = batch.tokens[row], batch.labels[row], batch.loss_mask[row]
            cuts = [0, *(np.flatnonzero(tokens == tok.eod) + 1).tolist(), seq]
            for a, b in zip(cuts[:-1], cuts[1:]):
                if b <= a:
                    continue
                logits = model(input_ids=torch.from_numpy(tokens[a:b])[None]).logits[0].double()
                target = torch.from_numpy(labels[a:b])
                ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
                lse = torch.logsumexp(logits, -1)
                keep = torch.from_numpy(mask[a:b]).double()
                want += float(((ce + z * lse**2) * keep).sum())
                ce_sum += float((ce * keep).sum())
    assert report["tokens"] == batch.loss_mask.sum() > 0 and report["prompt_tokens"] > 0
    assert abs(float(got) - want) <= 1e-4 * abs(want), (float(got), want)
    assert abs(report["ce"] - ce_sum) <= 1e-4 * ce_sum


@pytest.mark.torchrun
def test_first_losses_match_the_megatron_trainer(work, one_torch_thread, tmp_path):
    """finetune_soda.py (megatron-core, torchrun, 1 process) and the plain-torch engine, from the
    same HF export on the same windows: iterations 1-3 agree within PARITY_ATOL."""
    from megatron_soda.finetune.deepspeed_data import megatron_windows
    from megatron_soda.finetune.deepspeed_main import build_parser, train

    metrics = str(tmp_path / "megatron.jsonl")
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "--nproc_per_node",
        "1",
        "--master_port",
        str(_free_port()),
        os.path.join(REPO, "finetune_soda.py"),
        "--load",
        work["hf"],
        "--save",
        str(tmp_path / "mg"),
        "--data-path",
        work["prefix"],
        "--metrics-jsonl",
        metrics,
        *MEGATRON_RUN,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    megatron = read_metrics(metrics)

    _, arrays = _megatron_train_dataset(work)
    args = build_parser().parse_args(
        [
            "--engine",
            "torch",
            "--load",
            work["hf"],
            "--data-path",
            work["prefix"],
            "--save",
            str(tmp_path / "ds"),
            "--device",
            "cpu",
            *RUN,
        ]
    )
    ours = train(
        args,
        windows=megatron_windows(*arrays, np.asarray(read_index(work["prefix"] + ".idx").lengths)),
    )
    assert [r["iteration"] for r in megatron] == [r["iteration"] for r in ours] == [1, 2, 3]
    for m, o in zip(megatron, ours):
        assert (m["response_tokens"], m["prompt_tokens"]) == (
            o["response_tokens"],
            o["prompt_tokens"],
        )
        assert abs(m["lm_loss"] - o["lm_loss"]) <= PARITY_ATOL, (m, o)
    # the updates matter: later losses move by much more than the tolerance
    assert abs(ours[2]["lm_loss"] - ours[0]["lm_loss"]) > 100 * PARITY_ATOL


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "finetune", "finetune_deepspeed.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


COMMON = [*RUN, "--save-hf-dtype", "fp32", "--lr-warmup-iters", "1"]
DS_ENV = dict(
    os.environ,
    DS_ACCELERATOR="cpu",
    OMP_NUM_THREADS="1",
    CUDA_VISIBLE_DEVICES="",
    PYTHONWARNINGS="ignore",
)


def _plain_run(work, save: str, hf: str, *extra: str) -> list[dict]:
    from megatron_soda.finetune.deepspeed_main import build_parser, train

    return train(
        build_parser().parse_args(
            [
                "--engine",
                "torch",
                "--device",
                "cpu",
                "--load",
                work["hf"],
                "--data-path",
                work["prefix"],
                "--save",
                save,
                "--save-hf",
                hf,
                "--save-interval",
                "1",
                *COMMON,
                *extra,
            ]
        )
    )


@pytest.fixture(scope="module")
def plain(work, tmp_path_factory):
    """The plain engine's 3 updates (checkpoint after each) and its HF directory."""
    root = tmp_path_factory.mktemp("plain")
    return {
        "root": root,
        "records": _plain_run(work, str(root / "t"), str(root / "t_hf")),
        "hf": str(root / "t_hf"),
    }


def _same_updates(work, plain, records: list[dict], hf: str) -> None:
    """Losses and gradient norms as the plain engine's; every tensor where the plain engine put it,
    to 1e-3 of how far it moved (a cautious statistic over a whole flat partition instead of per
    Levanter array moves tensors by a good fraction of that)."""
    for a, b in zip(plain["records"], records, strict=True):
        assert (
            abs(a["lm_loss"] - b["lm_loss"]) <= 1e-5
            and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-3 * a["grad_norm"]
        )
    base, t, d = _weights(work["hf"]), _weights(plain["hf"]), _weights(hf)
    for name in base:
        moved = float((t[name] - base[name]).abs().max())
        assert moved > 0 and float((d[name] - t[name]).abs().max()) <= 1e-3 * moved, name


def test_plain_engine_resumes_exactly(work, plain, tmp_path, one_torch_thread):
    """From its safetensors checkpoint of update 2, update 3 gives the same loss and weights; a
    run with another data order refuses the checkpoint."""
    shutil.copytree(plain["root"] / "t", tmp_path / "t", ignore=shutil.ignore_patterns("step_3"))
    (tmp_path / "t" / "latest").write_text("step_2")
    (again,) = _plain_run(work, str(tmp_path / "t"), str(tmp_path / "t_hf"))
    assert again["iteration"] == 3 and again["lm_loss"] == plain["records"][2]["lm_loss"]
    want = _weights(plain["hf"])
    assert all(torch.equal(v, want[k]) for k, v in _weights(str(tmp_path / "t_hf")).items())
    (tmp_path / "t" / "latest").write_text("step_2")
    with pytest.raises(ValueError, match="data order"):  # another seed would continue another order
        _plain_run(work, str(tmp_path / "t"), str(tmp_path / "t_hf"), "--seed", "9")


def test_zero2_optimizer_offload_on_cpu_matches_the_torch_engine(work, plain, tmp_path):
    pytest.importorskip("deepspeed")
    _cli(
        [
            "--load",
            work["hf"],
            "--data-path",
            work["prefix"],
            *COMMON,
            "--engine",
            "deepspeed",
            "--zero-stage",
            "2",
            "--offload-optimizer",
            "--save",
            str(tmp_path / "d"),
            "--save-hf",
            str(tmp_path / "d_hf"),
            "--metrics-jsonl",
            str(tmp_path / "d.jsonl"),
        ],
        DS_ENV,
    )
    _same_updates(
        work,
        plain,
        [json.loads(line) for line in open(tmp_path / "d.jsonl")],
        str(tmp_path / "d_hf"),
    )


def test_zero3_offload_on_cpu_matches_the_torch_engine_resumes_and_exports(work, plain, tmp_path):
    """DeepSpeed ZeRO-3, optimizer and parameter offload, gradient accumulation 2, recomputed
    activations, DS_ACCELERATOR=cpu (gloo): the plain engine's updates; resumed from update 2 it ends where the straight run ends;
    its HF directory converts into a megatron_soda checkpoint."""
    pytest.importorskip("deepspeed")
    from megatron_soda.convert.from_hf import convert_from_hf

    ds = [
        "--load",
        work["hf"],
        "--data-path",
        work["prefix"],
        *COMMON,
        "--engine",
        "deepspeed",
        "--zero-stage",
        "3",
        "--offload-optimizer",
        "--offload-param",
        "--recompute-activations",
    ]
    _cli(
        [
            *ds,
            "--save",
            str(tmp_path / "d"),
            "--save-hf",
            str(tmp_path / "d_hf"),
            "--save-interval",
            "1",
            "--metrics-jsonl",
            str(tmp_path / "d.jsonl"),
        ],
        DS_ENV,
    )
    zero = [json.loads(line) for line in open(tmp_path / "d.jsonl")]
    _same_updates(work, plain, zero, str(tmp_path / "d_hf"))

    # resume: the checkpoint of update 2, then update 3
    shutil.copytree(tmp_path / "d", tmp_path / "r", ignore=shutil.ignore_patterns("step_3"))
    (tmp_path / "r" / "latest").write_text("step_2")
    proc = _cli(
        [
            *ds,
            "--save",
            str(tmp_path / "r"),
            "--save-hf",
            str(tmp_path / "r_hf"),
            "--metrics-jsonl",
            str(tmp_path / "r.jsonl"),
        ],
        DS_ENV,
    )
    assert "resumed from" in proc.stdout and "at update 2" in proc.stdout
    (resumed,) = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert resumed["iteration"] == 3 and abs(resumed["lm_loss"] - zero[2]["lm_loss"]) <= 1e-6
    r, d = _weights(str(tmp_path / "r_hf")), _weights(str(tmp_path / "d_hf"))
    assert all(torch.allclose(r[k], d[k], rtol=0, atol=1e-6) for k in d)

    out = convert_from_hf(str(tmp_path / "d_hf"), str(tmp_path / "ckpt"), log=lambda *a, **k: None)
    assert os.path.isdir(out["checkpoint"])
