"""Conversion inputs: warm start from a plain Qwen3 text model, SODA releases without the
trainer's tokenizer copy, the command-line tools, and the errors a user gets for bad input
(nothing here launches more than one process)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil

import pytest
import torch

from megatron_soda.atomic_files import write_json_atomic
from megatron_soda.checkpointing import layout
from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.from_hf import convert_from_hf
from megatron_soda.convert.hf_tokenizer import resolve_tokenizer
from megatron_soda.convert.to_hf import convert_to_hf
from megatron_soda.models import preset
from megatron_soda.testing.checkpoints import checkpoint_logits, save_random_checkpoint
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
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


# ----------------------------------------------------------------------------- warm start
def test_warm_start_from_a_qwen3_text_model(tmp_path, small_bpe_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=5e5,
        tie_word_embeddings=True,
        max_position_embeddings=512,
    )
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    hf = str(tmp_path / "qwen3")
    model.save_pretrained(hf)
    shutil.copyfile(small_bpe_path, os.path.join(hf, "tokenizer.json"))

    out = convert_from_hf(hf, str(tmp_path / "ckpt"), **QUIET)
    assert out["warm_start"] and "--rotary-base" in out["trainer_flags"]
    ckpt = out["checkpoint"]
    tok = SodaTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
    lay = tok.layout
    assert (lay.base_vocab_size, lay.bos_id, lay.eos_id, lay.marker_offset) == (348, 348, 349, 350)

    ids = torch.randint(0, lay.base_vocab_size, (2, 40))
    ref = checkpoint_logits(ckpt, ids)
    with torch.no_grad():
        hf_out = model(input_ids=ids).logits
    assert (ref[..., :348] - hf_out[..., :348]).abs().max() <= 1e-5  # old tokens: same model

    r = DistCheckpointReader(ckpt)
    embed = r.read(names.EMBEDDING)
    old = model.model.embed_tokens.weight.detach()[:348]
    assert torch.equal(embed[:348], old) and torch.equal(
        r.read(names.OUTPUT)[:348], old
    )  # tied -> untied
    new = embed[348 : tok.vocab_size]
    assert new.shape[0] == 2 + 4 + 8 * 2048
    assert torch.allclose(new.mean(0), old.mean(0), atol=3e-3)
    assert torch.allclose(new.std(0), 0.1 * old.std(0), rtol=0.1)
    assert not embed[tok.vocab_size :].any()
    assert not torch.equal(new, r.read(names.OUTPUT)[348 : tok.vocab_size])  # independent noise


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
        ({"use_sliding_window": True}, "sliding-window"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
            "RoPE scaling 'yarn'",
        ),
    ],
)
def test_unsupported_architectures(soda, tmp_path, changes, message):
    hf = copy_hf(soda, tmp_path)
    edit_json(os.path.join(hf, "config.json"), **changes)
    with pytest.raises(ConversionError, match=message):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)


def test_rope_theta_the_trainer_cannot_take_is_refused(soda, tmp_path):
    from megatron_soda.convert.from_hf import trainer_flags

    flags = trainer_flags(soda["cfg"].with_overrides(rotary_base=5e5), "TOK")
    assert flags[flags.index("--rotary-base") + 1] == "500000"
    hf = copy_hf(soda, tmp_path)
    theta = 1e6 + 0.5
    edit_json(
        os.path.join(hf, "config.json"),
        rope_theta=theta,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
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


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickled_weights_are_never_loaded(soda, tmp_path):
    hf = copy_hf(soda, tmp_path, drop=("model.safetensors",))
    sentinel = tmp_path / "pwned"
    with open(os.path.join(hf, "pytorch_model.bin"), "wb") as f:
        pickle.dump(_Exploit(str(sentinel)), f)
    with pytest.raises(ConversionError, match="pickled weights are not loaded"):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)
    assert not sentinel.exists()


def test_checkpoint_metadata_is_unpickled_safely(soda, tmp_path):
    ckpt = str(tmp_path / "iter_0000003")
    shutil.copytree(soda["ckpt"], ckpt)
    sentinel = tmp_path / "pwned"
    with open(os.path.join(ckpt, ".metadata"), "wb") as f:
        pickle.dump(_Exploit(str(sentinel)), f)
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
