"""pretrain_soda.py flags: the issue's interface parses, presets are overridable with Megatron-LM
names, SODA's recipe is the default, and flags that need an absent package stop with a message."""

from __future__ import annotations

import pytest

from megatron_soda.config import ConfigError
from megatron_soda.config.cli import parse_argv
from megatron_soda.models import te
from megatron_soda.models.te import te_available

INTERFACE = (
    "--device cpu --model-size tiny --tokenizer tokenizer.json --num-codebooks 8 --data-path 0.95 "
    "PREFIX_SPEECH 0.05 PREFIX_TEXT --seq-length 256 --micro-batch-size 2 --global-batch-size 8 "
    "--train-iters 12 --lr 1e-3 --seed 1 --log-interval 1 --metrics-jsonl FILE"
).split()


def parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_argv(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_the_issue_command_line_parses_with_sodas_recipe():
    c = parse_argv(INTERFACE + ["--tensor-model-parallel-size", "2", "--save", "DIR", "--save-interval", "6"])
    o = c.optim
    assert c.data.data_path == ["0.95", "PREFIX_SPEECH", "0.05", "PREFIX_TEXT"]
    assert (o.adam_beta1, o.adam_beta2, o.weight_decay, o.clip_grad) == (0.98, 0.98, 0.033, 1.0)
    assert c.model.z_loss_weight == 1e-4 and o.lr_decay_style == "WSD"
    assert o.lr_warmup_iters == 1 and o.lr_wsd_decay_iters == 2  # 10% warmup, last 20% decay
    assert not c.precision.bf16 and c.precision.transformer_impl == "local"  # fp32, local spec on CPU
    assert c.parallel.tensor_model_parallel_size == 2 and c.checkpoint.save_interval == 6


def test_preset_fields_are_overridable_with_megatron_flag_names():
    c = parse_argv(INTERFACE + ["--num-layers", "2", "--hidden-size", "128", "--ffn-hidden-size", "320",
                                "--num-query-groups", "4", "--kv-channels", "16", "--rotary-base", "10000"])
    cfg = c.model.architecture_for(vocab_size=1000)
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_query_groups, cfg.kv_channels) == (
        2, 128, 320, 4, 16)
    assert cfg.rotary_base == 10000 and cfg.seq_length == 256 and cfg.padded_vocab_size == 1024
    assert cfg.num_attention_heads == 4  # untouched fields keep the preset's value


@pytest.mark.skipif(te_available(), reason="Transformer Engine is installed here")
@pytest.mark.parametrize("extra", [["--bf16", "--fp8-format", "hybrid"],
                                   ["--context-parallel-size", "2", "--attention-backend", "te"],
                                   ["--attention-backend", "flash"], ["--transformer-impl", "transformer_engine"]])
def test_flags_that_need_transformer_engine_fail_clearly(extra, capsys):
    assert "Transformer Engine" in parse_error(INTERFACE + extra, capsys)


def test_fp8_needs_bf16(capsys, monkeypatch):
    monkeypatch.setattr(te, "te_available", lambda: True)
    argv = [a if a != "cpu" else "cuda" for a in INTERFACE] + ["--fp8-format", "e4m3"]
    assert "--fp8-format needs --bf16" in parse_error(argv, capsys)


def test_context_parallel_with_transformer_engine_is_refused(capsys, monkeypatch):
    """CP runs on flex attention only (tests/test_context_parallel.py); TE's THD context parallelism
    is not built yet: refused with a message.  ``auto`` picks the local spec and flex under CP,
    with or without TE installed, on GPU and CPU alike."""
    monkeypatch.setattr(te, "te_available", lambda: True)
    gpu = [a if a != "cpu" else "cuda" for a in INTERFACE]
    argv = gpu + ["--bf16", "--context-parallel-size", "2", "--transformer-impl", "transformer_engine"]
    assert "--context-parallel-size 2: not implemented yet" in parse_error(argv, capsys)
    for interface, have_te in ((gpu, True), (gpu, False), (INTERFACE, False)):
        monkeypatch.setattr(te, "te_available", lambda have=have_te: have)
        precision = parse_argv(interface + ["--context-parallel-size", "2"]).precision
        assert (precision.transformer_impl, precision.attention_backend) == ("local", "flex")
    assert "needs --attention-backend flex, not sdpa" in parse_error(
        gpu + ["--context-parallel-size", "2", "--attention-backend", "sdpa", "--no-reset-attention-mask"], capsys)


def test_batch_ramp_up_is_checked(capsys):
    assert "--rampup-batch-size 4 3 100: needs" in parse_error(INTERFACE + ["--rampup-batch-size", "4", "3", "100"],
                                                               capsys)  # 8 - 4 is not a multiple of 3
    c = parse_argv(INTERFACE + ["--rampup-batch-size", "2", "2", "100"])  # 2, 4, 6, 8
    c.optim.check_batch(1)
    with pytest.raises(ConfigError, match="ramp-up start batch 2 is not a multiple of micro batch 2 x "
                                          "data-parallel size 2"):
        c.optim.check_batch(2)


def test_inconsistent_flags_are_refused(capsys):
    assert "--bf16 and --fp16" in parse_error(INTERFACE + ["--bf16", "--fp16"], capsys)
    assert "needs --save" in parse_error(INTERFACE + ["--save-interval", "6"], capsys)
    assert "no such directory" in parse_error(INTERFACE + ["--load", "/nonexistent/ckpt"], capsys)
    assert "pipeline-model-parallel-size > 1" in parse_error(
        INTERFACE + ["--num-virtual-stages-per-pipeline-rank", "2"], capsys)


def test_virtual_pipeline_stages_from_layers_per_stage():
    c = parse_argv(INTERFACE + ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"])
    assert c.parallel.virtual_pipeline_model_parallel_size == 2  # tiny: 4 layers, 2 per rank
    c = parse_argv(INTERFACE + ["--pipeline-model-parallel-size", "2", "--num-virtual-stages-per-pipeline-rank", "2"])
    with pytest.raises(ConfigError, match="--num-virtual-stages-per-pipeline-rank 2 does not divide the 3 layers per pipeline rank"):
        c.parallel.resolve_virtual_stages(num_layers=6)


@pytest.mark.parametrize("extra,message", [
    (["--num-layers-per-virtual-pipeline-stage", "1"], "virtual pipeline stages need --pipeline-model-parallel-size > 1"),
    (["--pipeline-model-parallel-size", "2", "--num-virtual-stages-per-pipeline-rank", "0"],
     "--num-virtual-stages-per-pipeline-rank must be >= 1"),
    (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "-1"],
     "--num-layers-per-virtual-pipeline-stage must be >= 1"),
    (["--num-layers", "5", "--pipeline-model-parallel-size", "2"],
     "--pipeline-model-parallel-size 2 does not divide --num-layers 5"),
    (["--num-query-groups", "3"], "num_attention_heads (4) must be a multiple of num_query_groups (3)"),
])
def test_bad_virtual_pipeline_flags_are_refused(capsys, extra, message):
    assert message in parse_error(INTERFACE + extra, capsys)


def test_blend_syntax_and_held_out_prefixes():
    from megatron_soda.training.data import all_prefixes, blends

    data = parse_argv(INTERFACE).data
    assert blends(data) == {"blend": (["PREFIX_SPEECH", "PREFIX_TEXT"], [0.95, 0.05]), "split": "99,1,0"}
    data = parse_argv(INTERFACE + ["--valid-data-path", "HELD_OUT_SPEECH"]).data
    assert blends(data) == {"blend_per_split": [(["PREFIX_SPEECH", "PREFIX_TEXT"], [0.95, 0.05]),
                                                (["HELD_OUT_SPEECH"], None), None]}
    assert all_prefixes(data) == ["PREFIX_SPEECH", "PREFIX_TEXT", "HELD_OUT_SPEECH"]
