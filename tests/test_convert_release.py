"""Released SODA checkpoints: HF directories laid out like ``soda-research/soda-*-base``
(:mod:`megatron_soda.testing.soda_release`: Levanter's export of Qwen3Config, a Llama-3-format
tokenizer extended with markers and audio characters as the release's was) with small random
weights, one per size.  Each converts as a SODA model (no warm-start extension, layout from the
tokenizer) and back bit-identically; the 600M-shaped one is fine-tuned by pretrain_soda.py.  (The
release's real ids on the real Llama-3 base, 144,644, are tests/test_tokenizer.py's
test_llama3_base_reproduces_soda_release_layout: the same code derives them.)
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers_train import base_args, make_dataset, read_metrics, torchrun

from megatron_soda.checkpointing import layout
from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.from_hf import convert_from_hf, trainer_flags
from megatron_soda.convert.hf_config import model_config_from_hf
from megatron_soda.convert.to_hf import convert_to_hf
from megatron_soda.models.config import PRESETS, SodaModelConfig
from megatron_soda.testing.soda_release import (
    RELEASE_VOCAB,
    SMALL_SHAPES,
    release_config,
    write_release_model,
    write_release_tokenizer,
)
from megatron_soda.testing.text_tokenizers import write_llama3_format_tokenizer
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = {"log": lambda *a, **k: None}
SIZES = ("135m", "600m", "1.7b", "4b")
SODA_ROPE = {"rotary_base": 500_000, "use_rope_scaling": True, "rope_scaling_factor": 8.0, "norm_epsilon": 1e-5}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Per size: the release-shaped HF directory, its conversion (TP = PP = 1) and the HF
    directory converted back from it."""
    root = tmp_path_factory.mktemp("release")
    base = write_llama3_format_tokenizer(str(root / "base.json"))
    tok_dir = write_release_tokenizer(base, str(root / "tokenizer"))
    out = {"layout": SodaTokenizer(base).layout}
    for seed, size in enumerate(SIZES):
        hf = write_release_model(str(root / f"hf_{size}"), size, tok_dir, seed=seed)
        result = convert_from_hf(hf, str(root / f"ckpt_{size}"), **QUIET)
        back = str(root / f"back_{size}")
        convert_to_hf(result["checkpoint"], back, **QUIET)
        out[size] = {"hf": hf, "result": result, "back": back}
    out["root"] = root
    return out


@pytest.mark.parametrize("size", SIZES)
def test_release_config_is_the_preset(size):
    """The full-size config.json maps onto the preset: no flag beyond --model-size."""
    cfg = model_config_from_hf(release_config(size, small=False), "config.json", RELEASE_VOCAB)
    preset = PRESETS[size]
    assert cfg.shape_dict() == preset.shape_dict()
    assert {k: getattr(cfg, k) for k in SODA_ROPE} == SODA_ROPE
    assert cfg.seq_length == 4096
    assert trainer_flags(cfg, "TOK") == ["--model-size", size, "--tokenizer", "TOK"]


@pytest.mark.parametrize("size", SIZES)
def test_release_converts_as_a_soda_model(release, size):
    r = release[size]["result"]
    assert not r["warm_start"] and "recovered" in r["tokenizer_source"]
    tok = SodaTokenizer.from_pretrained(os.path.join(r["checkpoint"], "tokenizer"))
    assert tok.layout == release["layout"] and tok.layout.added_specials == ()
    cfg = SodaModelConfig.from_dict(r["model_config"])
    layers, hidden, heads, kv, head_dim, ffn = SMALL_SHAPES[size]
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads) == (layers, hidden, heads)
    assert (cfg.num_query_groups, cfg.kv_channels, cfg.ffn_hidden_size) == (kv, head_dim, ffn)
    assert {k: getattr(cfg, k) for k in SODA_ROPE} == SODA_ROPE and cfg.seq_length == 4096
    flags = r["trainer_flags"]
    assert not {"--rotary-base", "--no-rope-scaling", "--rope-scaling-factor", "--norm-epsilon"} & set(flags)


@pytest.mark.parametrize("size", SIZES)
def test_release_round_trip_is_bit_identical(release, size):
    from safetensors import safe_open

    r = release[size]
    with (
        safe_open(os.path.join(r["hf"], "model.safetensors"), "pt") as x,
        safe_open(os.path.join(r["back"], "model.safetensors"), "pt") as y,
    ):
        assert sorted(x.keys()) == sorted(y.keys())
        for k in x.keys():
            assert torch.equal(x.get_tensor(k), y.get_tensor(k)), k
    source, back = (json.load(open(os.path.join(d, "config.json"))) for d in (r["hf"], r["back"]))
    assert back["rope_scaling"] == source["rope_scaling"]
    for key in ("rope_theta", "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id", "head_dim"):
        assert back[key] == source[key], key


def test_fine_tune_a_release(release, small_bpe_path):
    """pretrain_soda.py trains from the converted 600M-shaped release with the printed flags
    (plain --load of the weights-only checkpoint), and the result converts back to HF."""
    root, r = release["root"], release["600m"]["result"]
    tok = SodaTokenizer.from_pretrained(os.path.join(r["checkpoint"], "tokenizer"))
    speech, text = make_dataset(str(root / "data"), tok)
    metrics, save = str(root / "ft.jsonl"), str(root / "ft")
    extra = ["--train-iters", "2", "--eval-interval", "2", "--seq-length", "64", "--micro-batch-size", "1"]
    extra += ["--global-batch-size", "2", "--load", os.path.dirname(r["checkpoint"]), "--save", save]
    proc = torchrun(1, [*base_args(small_bpe_path, speech, text, metrics), *r["trainer_flags"], *extra])
    assert "weights-only checkpoint, loaded as with --finetune" in proc.stdout
    assert [m["iteration"] for m in read_metrics(metrics)] == [1, 2]
    a, c = DistCheckpointReader(r["checkpoint"]), DistCheckpointReader(layout.find_checkpoint(save))
    change = (a.read(names.OUTPUT) - c.read(names.OUTPUT))[: tok.vocab_size].abs().max().item()
    assert 0 < change < 5e-3
    hf = str(root / "ft_hf")
    convert_to_hf(save, hf, **QUIET)
    config = json.load(open(os.path.join(hf, "config.json")))
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["vocab_size"] == tok.vocab_size
