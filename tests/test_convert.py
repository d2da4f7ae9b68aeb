"""Checkpoint conversion megatron_soda <-> Hugging Face, end to end on CPU (fp32).

One chain shared by every test (module fixture):

    A  random megatron_soda checkpoint (TP=1, trainer's save path; random norms too)
    -> HF_A (convert_to_hf) -> B (convert_from_hf at TP=2/PP=2, four processes)
    -> pretrain_soda.py --load B at TP=2/PP=2 (plain --load of a weights-only checkpoint),
       two iterations + evaluation, saves C -> HF_C (convert_to_hf)

Tolerances: logits of the megatron_soda model and of transformers' Qwen3ForCausalLM on the
same ids agree to PARITY_ATOL = 1e-5 in fp32 (measured ~1e-6 with logits of magnitude ~2: the
two implementations differ only in the order of float operations); weights after a round
trip are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers_train import (
    base_args,
    make_dataset,
    read_metrics,
    speech_document,
    text_document,
    torchrun,
)

from megatron_soda.checkpointing import layout
from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.from_hf import convert_from_hf
from megatron_soda.convert.loss_check import check_hf_loss
from megatron_soda.convert.to_hf import convert_to_hf
from megatron_soda.models import preset
from megatron_soda.testing.checkpoints import checkpoint_logits, save_random_checkpoint
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.tokenizer.hf_export import to_hf_string

pytestmark = [pytest.mark.torchrun, pytest.mark.usefixtures("one_torch_thread")]

PARITY_ATOL = 1e-5
QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_bpe_path):
    root = tmp_path_factory.mktemp("convert")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    cfg = preset("tiny").with_overrides(vocab_size=tok.vocab_size)
    a = save_random_checkpoint(str(root / "a"), cfg, tok, seed=3, iteration=5)
    hf_a = str(root / "hf_a")
    convert_to_hf(str(root / "a"), hf_a, **QUIET)
    b = convert_from_hf(hf_a, str(root / "b"), 2, 2, **QUIET)["checkpoint"]

    speech, text = make_dataset(str(root / "data"), tok)
    metrics, ckpt_c = str(root / "c.jsonl"), str(root / "c")
    proc = torchrun(
        4,
        base_args(
            small_bpe_path,
            speech,
            text,
            metrics,
            "--tensor-model-parallel-size",
            "2",
            "--pipeline-model-parallel-size",
            "2",
            "--train-iters",
            "2",
            "--eval-interval",
            "2",
            # plain Adam (not SODA's Cautious, whose per-tensor mask rescaling moves the few
            # embedding rows a batch uses by up to 1/(fraction used) x lr): C stays within
            # 2 x lr of A, see test_trainer_fine_tunes_from_converted_checkpoint
            "--optimizer",
            "adam",
            "--load",
            str(root / "b"),
            "--save",
            ckpt_c,
        ),
    )
    hf_c = str(root / "hf_c")
    convert_to_hf(ckpt_c, hf_c, **QUIET)
    return {
        "root": root,
        "tok": tok,
        "cfg": cfg,
        "a": a,
        "hf_a": hf_a,
        "b": b,
        "c": layout.find_checkpoint(ckpt_c),
        "hf_c": hf_c,
        "metrics": metrics,
        "trainer_stdout": proc.stdout,
    }


def interleaved_ids(tok: SodaTokenizer, length: int, seed: int = 0) -> torch.Tensor:
    """Two rows of ``length`` ids: interleaved speech documents (text, markers, audio) and text
    documents, concatenated (one causal sequence per row: positions 0 .. length-1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for make in (lambda: speech_document(tok, rng, utterances=4), lambda: text_document(tok, rng)):
        row: list[int] = []
        while len(row) < length:
            row += make()
        rows.append(row[:length])
    return torch.tensor(rows)


def hf_logits(hf_dir: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, local_files_only=True
    ).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def reference_logits(chain):
    """megatron_soda's logits of A and C on two rows covering every position up to the
    training sequence length (the model config's seq_length: 256 for the tiny preset)."""
    cfg = chain["cfg"]
    assert cfg.use_rope_scaling and cfg.rope_scaling_factor == 8 and cfg.rotary_base == 500_000
    ids = interleaved_ids(chain["tok"], cfg.seq_length)
    lay = chain["tok"].layout
    assert (ids >= lay.audio_offset).any() and (ids < lay.base_vocab_size).any()
    return ids, {w: checkpoint_logits(chain[w], ids) for w in ("a", "c")}


@pytest.mark.parametrize("which", ["a", "c"])
def test_logits_match_transformers(chain, reference_logits, which):
    """a: TP=1 random model; c: the checkpoint the real trainer saved at TP=2/PP=2.  Llama-3
    RoPE (tiny preset: head_dim 32, base 500000, factor 8: 7 of the 16 frequencies divided by 8,
    one smoothed) at every position 0 .. seq_length-1."""
    ids, refs = reference_logits
    ref = refs[which]
    got = hf_logits(chain["hf_" + which], ids)
    assert got.shape == ref.shape == (*ids.shape, chain["tok"].vocab_size)
    assert ids.shape[1] == chain["cfg"].seq_length
    diff = (got - ref).abs().max().item()
    late = (got - ref)[:, -32:].abs().max().item()
    print(f"{which}: max |logit diff| {diff:.2e} (last 32 positions {late:.2e}), max |logit| {ref.abs().max().item():.2f}")
    assert ref.abs().max() > 1.0 and diff <= PARITY_ATOL


def test_parity_check_sees_the_rope_scaling(chain, reference_logits, tmp_path):
    """The same HF model with plain RoPE misses megatron_soda's logits by far more than the
    tolerance: the parity above really checks the Llama-3 frequency scaling."""
    hf = str(tmp_path / "plain_rope")
    shutil.copytree(chain["hf_a"], hf)
    path = os.path.join(hf, "config.json")
    config = json.load(open(path))
    assert config["rope_scaling"]["rope_type"] == config["rope_parameters"]["rope_type"] == "llama3"
    config.update(rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    json.dump(config, open(path, "w"))
    ids, refs = reference_logits
    diff = (hf_logits(hf, ids) - refs["a"]).abs().max().item()
    print(f"plain RoPE instead of Llama-3 RoPE: max |logit diff| {diff:.2e}")
    assert diff > 100 * PARITY_ATOL


def test_round_trip_megatron_hf_megatron_is_bit_identical(chain):
    a, b = DistCheckpointReader(chain["a"]), DistCheckpointReader(chain["b"])
    vocab = chain["cfg"].vocab_size
    model_keys = [k for k in a.keys() if not k.startswith("optimizer.")]
    assert sorted(model_keys) == sorted(b.keys())
    for key in model_keys:
        x, y = a.read(key), b.read(key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        if key in (names.EMBEDDING, names.OUTPUT):
            assert torch.equal(x[:vocab], y[:vocab]), key
            assert not y[vocab:].any()  # padded rows: never used, written as zeros
        else:
            assert torch.equal(x, y), key
    meta = layout.read_meta(chain["b"])
    assert (
        meta["weights_only"] and not meta["has_optimizer"] and meta["train_state"]["iteration"] == 0
    )
    assert (
        meta["parallel"]["tensor_model_parallel_size"] == 2
        and meta["parallel"]["pipeline_model_parallel_size"] == 2
    )
    assert meta["tokenizer"] == dict(
        chain["tok"].unique_identifiers
    )  # same base file: same identity


def test_round_trip_hf_megatron_hf_is_bit_identical(chain, tmp_path):
    from safetensors import safe_open

    out = str(tmp_path / "hf_b")
    convert_to_hf(chain["b"], out, **QUIET)
    with (
        safe_open(os.path.join(chain["hf_a"], "model.safetensors"), "pt") as x,
        safe_open(os.path.join(out, "model.safetensors"), "pt") as y,
    ):
        assert sorted(x.keys()) == sorted(y.keys())
        for k in x.keys():
            assert torch.equal(x.get_tensor(k), y.get_tensor(k)), k


def test_trainer_fine_tunes_from_converted_checkpoint(chain):
    assert "weights-only checkpoint, loaded as with --finetune" in chain["trainer_stdout"]
    assert [r["iteration"] for r in read_metrics(chain["metrics"])] == [1, 2]
    # C = A + two Adam steps of lr <= 1e-3 (a fresh init would be ~0.05 away, norms would be 1)
    a, c = DistCheckpointReader(chain["a"]), DistCheckpointReader(chain["c"])
    for key in (
        names.EMBEDDING,
        names.FINAL_NORM,
        "decoder.layers.self_attention.linear_qkv.weight",
    ):
        rows = chain["cfg"].vocab_size  # (A's padded rows are random, B's and so C's zero)
        change = (a.read(key)[:rows] - c.read(key)[:rows]).abs().max().item()
        assert 0 < change < 5e-3, (key, change)


def test_transformers_loads_offline_and_tokenizer_matches(chain, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = chain["hf_a"]
    model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
    assert type(model).__name__ == "Qwen3ForCausalLM" and not model.config.tie_word_embeddings
    assert model.config.vocab_size == chain["tok"].vocab_size
    cfg = json.load(open(os.path.join(hf, "config.json")))
    assert cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 32 and cfg["rms_norm_eps"] == 1e-5
    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert cfg["rope_theta"] == 5e5 and cfg["rope_scaling"] == llama3
    assert cfg["rope_parameters"] == {**llama3, "rope_theta": 5e5}
    assert model.config.rope_parameters["rope_type"] == "llama3"
    hf_tok = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    tok = chain["tok"]
    lay, rng = tok.layout, np.random.default_rng(5)
    ids = [tok.bos]
    for sentence in (
        "Shall I compare thee to a summer's day?",
        " To be, or not to be",
        "café 日本語",
    ):
        audio = tok.encode_audio(rng.integers(0, 2048, (8, int(rng.integers(1, 6))))).tolist()
        ids += [
            lay.text_start_id,
            *tok.encode_text(sentence),
            lay.text_end_id,
            lay.audio_start_id,
            *audio,
            lay.audio_end_id,
        ]
    ids.append(tok.eos)
    assert hf_tok(to_hf_string(tok, ids), add_special_tokens=False)["input_ids"] == ids
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (
        tok.bos,
        tok.eos,
        tok.eos,
    )
    gen = json.load(open(os.path.join(hf, "generation_config.json")))
    assert gen["eos_token_id"] == tok.eos


def test_sharded_bf16_export(chain, tmp_path):
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "bf16")
    summary = convert_to_hf(chain["a"], out, dtype="bf16", max_shard_size="1MB", **QUIET)
    assert len(summary["files"]) > 2
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert set(index["weight_map"].values()) == set(summary["files"])
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    ref = AutoModelForCausalLM.from_pretrained(chain["hf_a"], local_files_only=True)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q.to(torch.bfloat16)), n


def test_check_hf_loss_matches_the_trainer_evaluation(chain, tmp_path, capsys):
    import importlib.util

    tool = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "tools",
        "checkpoint",
        "check_hf_loss.py",
    )
    spec = importlib.util.spec_from_file_location("check_hf_loss", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--hf", chain["hf_c"]]) == 0
    assert capsys.readouterr().out.startswith("check_hf_loss: PASS: transformers loss ")

    r = check_hf_loss(chain["hf_c"])
    assert r["passed"], r
    assert r["tokens"] == r["trainer_tokens"] and r["abs_diff"] < 1e-5 and r["iteration"] == 2
    # a wrong reference is reported as a failure
    bad = str(tmp_path / "bad.jsonl")
    with open(bad, "w") as f:
        for rec in map(json.loads, open(chain["metrics"])):
            if rec["split"] == "valid":
                rec["lm_loss"] += 0.01
            f.write(json.dumps(rec) + "\n")
    assert not check_hf_loss(chain["hf_c"], metrics=bad)["passed"]
