"""Conversion inputs: SODA exports without the trainer's tokenizer copy, RoPE and trainer flags,
the command-line tools, and the errors a user gets for bad input (nothing here launches more than
one process).  Warm starts: tests/test_convert_warmstart.py; release layouts:
tests/test_convert_release.py."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil

import pytest
import torch
from helpers_hostile import Payload

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.checkpointing import layout
from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.from_hf import convert_from_hf
from megatron_soda.convert.hf_tokenizer import resolve_tokenizer
from megatron_soda.convert.to_hf import convert_to_hf
from megatron_soda.models import preset
from megatron_soda.testing.checkpoints import save_random_checkpoint
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
QUIET = {"log": lambda *a, **k: None}
TOOLS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "checkpoint"
)


@pytest.fixture(scope="module")
def soda(tmp_path_factory, small_bpe_path):
    """A random TP=1 checkpoint and its HF conversion."""
    root = tmp_path_factory.mktemp("convert_inputs")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    cfg = preset("tiny").with_overrides(vocab_size=tok.vocab_size)
    ckpt = save_random_checkpoint(str(root / "ckpt"), cfg, tok, seed=7, iteration=3)
    hf = str(root / "hf")
    convert_to_hf(str(root / "ckpt"), hf, **QUIET)
    return {"root": root, "tok": tok, "cfg": cfg, "ckpt": ckpt, "hf": hf, "base": small_bpe_path}


def copy_hf(soda, tmp_path, drop=()) -> str:
    out = str(tmp_path / "hf_copy")
    shutil.copytree(soda["hf"], out, ignore=shutil.ignore_patterns(*drop))
    return out


def edit_json(path: str, **changes) -> None:
    with open(path) as f:
        d = json.load(f)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    with open(path, "w") as f:
        json.dump(d, f)


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------- SODA releases
def test_soda_release_without_the_trainer_tokenizer_copy(soda, tmp_path):
    hf = copy_hf(soda, tmp_path, drop=("soda_tokenizer",))
    resolved = resolve_tokenizer(hf)
    assert resolved.soda_source and "recovered" in resolved.how
    assert resolved.tokenizer.layout == soda["tok"].layout
    # no soda_layout either: the layout comes from the markers and PUA characters
    edit_json(os.path.join(hf, "tokenizer_config.json"), soda_layout=None)
    assert resolve_tokenizer(hf).tokenizer.layout == soda["tok"].layout
    # the base file given explicitly: the original tokenizer identity
    given = resolve_tokenizer(hf, base_tokenizer=soda["base"]).tokenizer
    assert dict(given.unique_identifiers) == dict(soda["tok"].unique_identifiers)

    ckpt = convert_from_hf(hf, str(tmp_path / "ckpt"), **QUIET)["checkpoint"]
    a, b = DistCheckpointReader(soda["ckpt"]), DistCheckpointReader(ckpt)
    vocab = soda["cfg"].vocab_size
    for key in b.keys():
        assert torch.equal(a.read(key)[:vocab], b.read(key)[:vocab]), key


def test_soda_release_with_another_base_tokenizer_is_refused(soda, tmp_path):
    from conftest import train_small_bpe

    other = train_small_bpe(str(tmp_path / "other.json"), vocab_size=300)
    with pytest.raises(ConversionError, match="layout"):
        resolve_tokenizer(soda["hf"], base_tokenizer=other)


# ----------------------------------------------------------------------------- tools
def test_command_line_tools(soda, tmp_path, capsys):
    to_hf, from_hf = load_tool("convert_to_hf"), load_tool("convert_from_hf")
    out = str(tmp_path / "hf_cli")
    assert (
        to_hf.main(
            [
                "--load",
                os.path.dirname(soda["ckpt"]),
                "--save",
                out,
                "--dtype",
                "bf16",
                "--iteration",
                "3",
            ]
        )
        == 0
    )
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == "bfloat16"
    assert to_hf.main(["--load", str(tmp_path), "--save", str(tmp_path / "x")]) == 1
    assert "not a megatron_soda checkpoint directory" in capsys.readouterr().err
    assert (
        from_hf.main(
            [
                "--load",
                soda["hf"],
                "--save",
                str(tmp_path / "y"),
                "--pipeline-model-parallel-size",
                "3",
            ]
        )
        == 1
    )
    assert "does not divide the 4 layers" in capsys.readouterr().err


# ------------------------------------------------------------------------- bad inputs
def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(ConversionError, match="no such directory"):
        convert_to_hf(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(ConversionError, match="not a megatron_soda checkpoint directory"):
        convert_to_hf(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ConversionError, match="no complete checkpoint of iteration 9"):
        convert_to_hf(str(tmp_path), str(tmp_path / "out"), iteration=9)


def test_checkpoint_config_that_does_not_match_the_weights(soda, tmp_path):
    ckpt = str(tmp_path / "iter_0000003")
    shutil.copytree(soda["ckpt"], ckpt)
    meta = layout.read_meta(ckpt)
    meta["model"]["ffn_hidden_size"] = 256
    write_json_atomic(os.path.join(ckpt, layout.META), meta)
    with pytest.raises(
        ConversionError,
        match=r"do not match the model config.*linear_fc1.weight has shape \(4, 384, 64\)",
    ):
        convert_to_hf(ckpt, str(tmp_path / "out"))


def test_checkpoint_tokenizer_that_does_not_match(soda, tmp_path):
    ckpt = str(tmp_path / "iter_0000003")
    shutil.copytree(soda["ckpt"], ckpt)
    SodaTokenizer(soda["base"], num_codebooks=4).save(os.path.join(ckpt, "tokenizer"))
    with pytest.raises(ConversionError, match="does not match the tokenizer recorded"):
        convert_to_hf(ckpt, str(tmp_path / "out"))


def test_hf_config_that_does_not_match_the_weights(soda, tmp_path):
    hf = copy_hf(soda, tmp_path)
    edit_json(os.path.join(hf, "config.json"), intermediate_size=256)
    with pytest.raises(
        ConversionError,
        match=r"gate_proj.weight has shape \(192, 64\), config.json implies \(256, 64\)",
    ):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)


def test_tokenizer_size_that_does_not_match_the_embedding(soda, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = copy_hf(soda, tmp_path)
    path = os.path.join(hf, "model.safetensors")
    tensors = load_file(path)
    for name in (names.HF_EMBEDDING, names.HF_OUTPUT):
        tensors[name] = tensors[name][:-100].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    edit_json(os.path.join(hf, "config.json"), vocab_size=soda["tok"].vocab_size - 100)
    with pytest.raises(
        ConversionError,
        match=f"embed_tokens.weight has {soda['tok'].vocab_size - 100} rows, the "
        f"tokenizer needs {soda['tok'].vocab_size}",
    ):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
            "unsupported architecture",
        ),
        ({"attention_bias": True}, "attention_bias"),
        (
            {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 2, "layer_types": None},
            "sliding-window",
        ),
        (
            {
                "rope_scaling": None,
                "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0},
            },
            "RoPE scaling 'yarn' cannot be expressed",
        ),
        (
            {"rope_scaling": {**LLAMA3, "high_freq_factor": 2.0}, "rope_parameters": None},
            r"llama3 RoPE with \{'high_freq_factor': 2.0\} cannot be expressed",
        ),
        (
            {"rope_scaling": {**LLAMA3, "original_max_position_embeddings": 4096}, "rope_parameters": None},
            "original_max_position_embeddings",
        ),
        (
            {"rope_scaling": {**LLAMA3, "factor": 4.0}},
            "rope_parameters .* and rope_scaling .* disagree",
        ),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (
            {"use_sliding_window": True, "sliding_window": 64, "layer_types": ["sliding_attention"] * 4},
            "sliding-window",
        ),
        ({"no_bias": False}, "attention biases"),
    ],
)
def test_unsupported_architectures(soda, tmp_path, changes, message):
    hf = copy_hf(soda, tmp_path)
    edit_json(os.path.join(hf, "config.json"), **changes)
    with pytest.raises(ConversionError, match=message):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)


def test_accepted_rope_and_window_spellings(soda, tmp_path):
    """Levanter's spelling (rope_scaling + rope_theta only, sliding_window set but disabled,
    architectures copied from a Llama reference), plain RoPE, and transformers 5's nested form."""
    from megatron_soda.convert.hf_config import model_config_from_hf

    hf = json.load(open(os.path.join(soda["hf"], "config.json")))
    levanter = {k: v for k, v in hf.items() if k not in ("rope_parameters", "layer_types")}
    levanter.update(architectures=["LlamaForCausalLM"], sliding_window=4096, use_sliding_window=False, rope_theta=500000)
    cfg = model_config_from_hf(levanter, "c", 100)
    assert (cfg.rotary_base, cfg.use_rope_scaling, cfg.rope_scaling_factor) == (500000, True, 8.0)
    plain = {**hf, "rope_theta": 1e6, "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert not model_config_from_hf(plain, "c", 100).use_rope_scaling
    nested = {**hf, "rope_scaling": None, "rope_parameters": {"full_attention": {**LLAMA3, "factor": 4.0, "rope_theta": 1e4}}}
    cfg = model_config_from_hf(nested, "c", 100)
    assert (cfg.rotary_base, cfg.rope_scaling_factor) == (10000, 4.0)
    # a sliding window the config disables, or types no layer for, is no window
    disabled = {**hf, "use_sliding_window": False, "sliding_window": 64, "layer_types": ["sliding_attention"] * 4}
    model_config_from_hf(disabled, "c", 100)
    with pytest.raises(ConversionError, match="unsupported architecture 'llama'"):
        model_config_from_hf({**hf, "model_type": "llama"}, "c", 100)


def test_trainer_flags_carry_rope_and_epsilon(soda):
    """Fields that differ from the preset become flags the trainer parses back to the same model."""
    from megatron_soda.config.cli import parse_argv
    from megatron_soda.convert.from_hf import trainer_flags

    cfg = soda["cfg"]
    assert trainer_flags(cfg, "TOK") == ["--model-size", "tiny", "--tokenizer", "TOK"]
    for changes, expect in (
        ({"use_rope_scaling": False, "rotary_base": 1_000_000}, ["--rotary-base", "1000000", "--no-rope-scaling"]),
        ({"rope_scaling_factor": 4.0, "norm_epsilon": 1e-6}, ["--rope-scaling-factor", "4.0", "--norm-epsilon", "1e-06"]),
    ):
        other = cfg.with_overrides(**changes)
        flags = trainer_flags(other, soda["base"])
        assert all(f in flags for f in expect), flags
        required = ["--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "1"]
        parsed = parse_argv([*flags, *required, "--data-path", "x", "--num-codebooks", "8"])
        assert parsed.model.architecture_for(cfg.vocab_size) == other


def test_checkpoint_from_before_rope_scaling_exports_plain_rope(soda, tmp_path):
    ckpt = str(tmp_path / "iter_0000003")
    shutil.copytree(soda["ckpt"], ckpt)
    meta = layout.read_meta(ckpt)
    for key in ("use_rope_scaling", "rope_scaling_factor"):
        del meta["model"][key]
    write_json_atomic(os.path.join(ckpt, layout.META), meta)
    convert_to_hf(ckpt, str(tmp_path / "hf"), **QUIET)
    config = json.load(open(tmp_path / "hf" / "config.json"))
    assert config["rope_scaling"] is None and config["rope_parameters"]["rope_type"] == "default"


def test_rope_theta_the_trainer_cannot_take_is_refused(soda, tmp_path):
    from megatron_soda.convert.from_hf import trainer_flags

    flags = trainer_flags(soda["cfg"].with_overrides(rotary_base=2e6), "TOK")
    assert flags[flags.index("--rotary-base") + 1] == "2000000"
    hf = copy_hf(soda, tmp_path)
    theta = 1e6 + 0.5
    edit_json(
        os.path.join(hf, "config.json"),
        rope_theta=theta,
        rope_parameters={**LLAMA3, "rope_theta": theta},
    )
    with pytest.raises(
        ConversionError, match=r"rope_theta 1000000\.5 is not supported.*--rotary-base"
    ):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)
    assert not os.path.exists(tmp_path / "out")


def test_loss_check_tracker_naming_a_missing_iteration(tmp_path, capsys):
    from megatron_soda.convert.loss_check import check_hf_loss

    run = str(tmp_path / "run")
    os.makedirs(run)
    layout.write_tracker(run, 7)
    with pytest.raises(ConversionError, match=r"names iteration 7, but .*iter_0000007 is missing"):
        check_hf_loss(str(tmp_path), load=run)
    assert load_tool("check_hf_loss").main(["--hf", str(tmp_path), "--load", run]) == 1
    assert "FAIL: " in capsys.readouterr().out


def test_checkpoint_metadata_is_unpickled_safely(soda, tmp_path):
    ckpt = str(tmp_path / "iter_0000003")
    shutil.copytree(soda["ckpt"], ckpt)
    sentinel = tmp_path / "pwned"
    with open(os.path.join(ckpt, ".metadata"), "wb") as f:
        pickle.dump(Payload(str(sentinel)), f)
    with pytest.raises(ConversionError, match="refusing to load posix.system"):
        convert_to_hf(ckpt, str(tmp_path / "out"))
    assert not sentinel.exists()


def test_existing_output_is_not_overwritten(soda, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_to_hf(soda["ckpt"], str(out))
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_from_hf(soda["hf"], str(out), **QUIET)
    assert (out / "keep.txt").exists()
