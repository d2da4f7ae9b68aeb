"""Warm start from a Qwen3 text model, as the SODA authors' warm-start runs did (see
docs/conversion.md): a small random Qwen3ForCausalLM (tied embeddings, bf16, embedding padded past
its tokenizer like Qwen3's) with a tokenizer in Qwen3's exact format
(:mod:`megatron_soda.testing.qwen3_text`)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers_train import base_args, make_dataset, read_metrics, torchrun

from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.from_hf import convert_from_hf
from megatron_soda.testing.checkpoints import checkpoint_logits
from megatron_soda.testing.qwen3_text import (
    QWEN3_SPECIALS,
    write_qwen3_text_model,
    write_qwen_format_tokenizer,
)
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.tokenizer.qwen3x import tokenizer_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = {"log": lambda *a, **k: None}
AUDIO = 8 * 2048


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    tok_json = write_qwen_format_tokenizer(str(root / "qwen_tokenizer.json"))
    hf = write_qwen3_text_model(str(root / "qwen3"), tok_json)
    from safetensors.torch import load_file

    embed = load_file(os.path.join(hf, "model.safetensors"))[names.HF_EMBEDDING].float()
    n = tokenizer_size(tok_json)
    return {"root": root, "hf": hf, "n": n, "embed": embed, "out": convert_from_hf(hf, str(root / "ckpt"), **QUIET)}


def test_authors_layout_and_rows(qwen):
    """Qwen3x ids (EOS renamed in place, <|endoftext|> and BOS appended, then markers and audio),
    rows of the Qwen ids copied (tied head untied), new rows mean + N(0, 0.02^2)."""
    out, n, embed = qwen["out"], qwen["n"], qwen["embed"]
    assert out["warm_start"] and "Qwen3x" in out["tokenizer_source"]
    tok = SodaTokenizer.from_pretrained(os.path.join(out["checkpoint"], "tokenizer"))
    lay, base = tok.layout, tok.base
    eos = n - len(QWEN3_SPECIALS)
    assert (lay.eos_id, base.id_to_token(eos)) == (eos, "<|end_of_text|>")
    assert base.token_to_id("<|endoftext|>") == n and (lay.bos_id, base.id_to_token(n + 1)) == (n + 1, "<|begin_of_text|>")
    assert (lay.marker_offset, lay.audio_offset, lay.vocab_size) == (n + 2, n + 6, n + 6 + AUDIO)
    assert lay.added_specials == ()

    r = DistCheckpointReader(out["checkpoint"])
    emb, head = r.read(names.EMBEDDING), r.read(names.OUTPUT)
    assert torch.equal(emb[:n], embed[:n]) and torch.equal(head[:n], embed[:n])  # tied -> untied
    new_e, new_h = emb[n : lay.vocab_size], head[n : lay.vocab_size]
    assert new_e.shape[0] == 2 + 4 + AUDIO
    mean = embed[:n].mean(0)  # the Qwen ids only, not the padded rows past them
    for new in (new_e, new_h):
        assert (new.mean(0) - mean).abs().max() < 3e-3
        assert abs(new.std(0).mean().item() - 0.02) < 1e-3
    assert not torch.equal(new_e, new_h)  # independent noise
    assert not emb[lay.vocab_size :].any() and not head[lay.vocab_size :].any()


def test_authors_architecture(qwen):
    """SODA's RoPE, epsilon and sequence length replace Qwen3's (1e6 plain RoPE, 1e-6), so the
    flags need nothing beyond the shape."""
    out = qwen["out"]
    cfg = out["model_config"]
    assert (cfg["rotary_base"], cfg["use_rope_scaling"], cfg["rope_scaling_factor"]) == (500_000, True, 8.0)
    assert (cfg["norm_epsilon"], cfg["seq_length"]) == (1e-5, 4096)
    assert not {"--rotary-base", "--no-rope-scaling", "--norm-epsilon"} & set(out["trainer_flags"])


def test_warm_started_model_trains(qwen, small_bpe_path):
    root, out = qwen["root"], qwen["out"]
    tok = SodaTokenizer.from_pretrained(os.path.join(out["checkpoint"], "tokenizer"))
    speech, text = make_dataset(str(root / "data"), tok)
    metrics = str(root / "m.jsonl")
    extra = ["--train-iters", "2", "--eval-interval", "2", "--seq-length", "64", "--micro-batch-size", "1"]
    extra += ["--global-batch-size", "2", "--load", os.path.dirname(out["checkpoint"])]
    proc = torchrun(1, [*base_args(small_bpe_path, speech, text, metrics), *out["trainer_flags"], *extra])
    assert "weights-only checkpoint, loaded as with --finetune" in proc.stdout
    losses = [m["lm_loss"] for m in read_metrics(metrics)]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)


def test_warm_start_keeping_the_text_model(qwen, tmp_path):
    """warm_start_arch='source' keeps Qwen3's RoPE and epsilon (flags say so) and the model's
    function: old-token logits equal transformers'; 'compact' layout, relative noise."""
    from transformers import AutoModelForCausalLM

    out = convert_from_hf(
        qwen["hf"],
        str(tmp_path / "ckpt"),
        warm_start_arch="source",
        warm_start_layout="compact",
        new_row_noise=0.1,
        new_row_noise_unit="std",
        **QUIET,
    )
    flags, n = out["trainer_flags"], qwen["n"]
    assert flags[flags.index("--rotary-base") + 1] == "1000000" and "--no-rope-scaling" in flags
    assert flags[flags.index("--norm-epsilon") + 1] == "1e-06"
    tok = SodaTokenizer.from_pretrained(os.path.join(out["checkpoint"], "tokenizer"))
    eos = n - len(QWEN3_SPECIALS)
    assert (tok.layout.eos_id, tok.layout.bos_id, tok.layout.marker_offset) == (eos, n, n + 1)

    ids = torch.randint(0, n, (2, 48), generator=torch.Generator().manual_seed(0))
    ref = checkpoint_logits(out["checkpoint"], ids)
    model = AutoModelForCausalLM.from_pretrained(qwen["hf"], dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        hf = model.eval()(input_ids=ids).logits
    assert (ref[..., :n] - hf[..., :n]).abs().max() <= 1e-5

    new = DistCheckpointReader(out["checkpoint"]).read(names.EMBEDDING)[n : tok.vocab_size]
    old = qwen["embed"][:n]
    assert torch.allclose(new.std(0), 0.1 * old.std(0), rtol=0.1)
