"""The typed run configuration: every flag round-trips argv -> TrainConfig -> run_args.json ->
TrainConfig (and back to argv), the record carries the derived values, and a config built in
Python equals the one parsed from the equivalent command line."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_train_flags import INTERFACE

from megatron_soda.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)
from megatron_soda.config.cli import build_parser, flags_for, parse_argv, to_argv
from megatron_soda.config.derived import derive, run_record
from megatron_soda.config.fields import bool_flags, flag_names, meta, value_type
from megatron_soda.config.model import architecture_fields
from megatron_soda.config.train import SECTIONS, check_unique_field_names
from megatron_soda.models import te

# Flags whose value needs company to be accepted (or to survive normalisation).
COMPANIONS = {
    "sequence_parallel": ["--tensor-model-parallel-size", "2"],
    "virtual_pipeline_model_parallel_size": ["--pipeline-model-parallel-size", "2"],
    "num_layers_per_virtual_pipeline_stage": ["--pipeline-model-parallel-size", "2"],
    "microbatch_group_size_per_virtual_pipeline_stage": [],
    "overlap_param_gather": ["--use-distributed-optimizer"],
    "recompute_method": ["--recompute-granularity", "full"],
    "recompute_num_layers": ["--recompute-granularity", "full"],
    "fp8_format": ["--bf16"],
    "save_interval": ["--save", "DIR"],
    "async_save": ["--save", "DIR"],
    "keep_last_k": ["--save", "DIR"],
    "keep_every_iters": ["--save", "DIR", "--keep-last-k", "2"],
}
# Options normalised into another field (the record keeps what the run uses).
EFFECT = {
    "num_layers_per_virtual_pipeline_stage": "virtual_pipeline_model_parallel_size",
    "lr_warmup_fraction": "lr_warmup_iters",
}
# Values for fields where a generic one would be refused.
VALUES = {
    "model_size": ["135m"],
    "num_codebooks": ["4"],
    "virtual_pipeline_model_parallel_size": ["2"],
    "num_layers_per_virtual_pipeline_stage": ["1"],  # tiny: 4 layers -> 2 stages of 1 per rank
    "tensor_model_parallel_size": ["2"],
    "pipeline_model_parallel_size": ["2"],
    "context_parallel_size": None,  # > 1 needs --attention-backend flex: tests/test_context_parallel.py
    "max_position_embeddings": ["4096"],
    "init_method": ["megatron"],
    "rampup_batch_size": ["2", "2", "100"],
    "lr_warmup_iters": ["3"],
    "lr_decay_iters": ["10"],
    "lr_wsd_decay_iters": ["4"],
    "lr_warmup_fraction": ["0.25"],
    "save_interval": ["5"],
    "load": None,  # must exist: covered by test_load_must_exist
    "wandb_project": None,  # needs wandb installed
    "eval_tasks": None,  # needs a prepared-task directory: tests/test_train_task_eval.py
    "eval_tasks_data": None,  # likewise
    # the steered task evaluation needs a prepared directory and a vector file:
    # tests/test_steer_megatron.py (flags, refusals, a run at TP=2 with sequence parallel)
    "eval_tasks_steer": None,
    "eval_tasks_steer_layer": None,
    "eval_tasks_steer_alpha": None,
    "eval_tasks_steer_alpha_units": None,
    "eval_tasks_steer_positions": None,
    "num_attention_heads": ["8"],
    "num_query_groups": ["4"],
    "seq_length": ["128"],
    "data_path": ["1", "OTHER"],
    "fp8_amax_history_len": ["16"],
    "micro_batch_size": ["4"],
    "device": ["cuda"],
    "transformer_impl": ["local"],
    "global_batch_size": ["16"],
    "train_iters": ["20"],
    "torch_compile": ["mlp,norm"],
}
TE_FIELDS = {"fp8_format", "fp8_recipe", "fp8_amax_history_len", "fp8_amax_compute_algo", "fp8_param_gather",
             "transformer_impl", "attention_backend"}


def _generic(cls: type, f: dataclasses.Field) -> list[str]:
    typ, shape = value_type(cls, f)
    choices = meta(f)["choices"]
    if choices:
        return [next(c for c in choices if c != f.default and c != "auto" or len(choices) == 1)]
    if shape == "list":
        return ["A", "B"]
    if typ is int:
        return [str((f.default or 0) + 3)]
    if typ is float:
        return [repr((f.default or 0.0) + 0.5)]
    return ["SOME_VALUE"]


def _cases() -> list[tuple[str, list[str]]]:
    cases = []
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            if f.name == "architecture":
                for name, typ in architecture_fields():
                    if typ is bool:  # default-on in every preset: the off flag changes it
                        cases.append((name, [bool_flags(name)[1]]))
                        continue
                    if name in VALUES:
                        value = VALUES[name]
                    else:
                        value = [str(3)] if name == "num_layers" else [repr(0.5) if typ is float else "32"]
                    if name == "make_vocab_size_divisible_by":
                        value = ["64"]
                    cases.append((name, ["--" + name.replace("_", "-"), *value]))
                continue
            if f.name in VALUES and VALUES[f.name] is None:
                continue
            m = meta(f)
            if value_type(cls, f)[0] is bool:
                argv = [m["negative"]] if m["negative"] else [flag_names(f)[0]]
            else:
                value = VALUES[f.name] if f.name in VALUES else _generic(cls, f)
                argv = [flag_names(f)[-1], *value]  # the alias, if any
            cases.append((f.name, argv + COMPANIONS.get(f.name, [])))
    return cases


def _field(config: TrainConfig, name: str):
    for section in config.sections().values():
        if hasattr(section, name):
            return getattr(section, name)
    return config.model.architecture.get(name)


@pytest.mark.parametrize("name,extra", _cases(), ids=[c[0] for c in _cases()])
def test_every_flag_round_trips(name, extra, monkeypatch):
    base = list(INTERFACE)
    if name == "train_data_path":  # the other way to give training data: drop --data-path W P W P
        i = base.index("--data-path")
        base = base[:i] + base[i + 5 :]
    if name in TE_FIELDS:  # a GPU run with Transformer Engine (parse-time checks only)
        monkeypatch.setattr(te, "te_available", lambda: True)
        base = [a if a != "cpu" else "cuda" for a in base] + ["--bf16"]
    default = None if name == "train_data_path" else _field(parse_argv(base), EFFECT.get(name, name))
    config = parse_argv(base + extra)
    assert _field(config, EFFECT.get(name, name)) != default, f"{extra} changed nothing"
    record = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(record).validate() == config
    assert parse_argv(to_argv(config)) == config


def test_every_parser_option_is_a_config_field():
    check_unique_field_names()
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    fields = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)} - {"architecture"}
    arch = {"architecture:" + n for n, _ in architecture_fields()}
    assert dests == fields | arch
    covered = {name for name, _ in _cases()}
    untested = {n for n, v in VALUES.items() if v is None}
    assert covered | untested == fields | {n for n, _ in architecture_fields()}


def test_config_built_in_python_equals_the_parsed_one():
    built = TrainConfig(
        model=ModelConfig(model_size="tiny", tokenizer="tokenizer.json", num_codebooks=8,
                          architecture={"seq_length": 256}),
        optim=OptimConfig(micro_batch_size=2, global_batch_size=8, train_iters=12, lr=1e-3, seed=1),
        data=DataConfig(data_path=["0.95", "PREFIX_SPEECH", "0.05", "PREFIX_TEXT"]),
        parallel=ParallelConfig(device="cpu"),
    )
    built.logging.log_interval, built.logging.metrics_jsonl = 1, "FILE"
    assert built.validate() == parse_argv(INTERFACE)
    assert parse_argv(flags_for({"model_size": "tiny", "tokenizer": "t", "data_path": ["p"], "micro_batch_size": 1,
                                 "global_batch_size": 2, "train_iters": 3, "hidden_size": 128})
                      ).model.architecture == {"hidden_size": 128}
    with pytest.raises(ConfigError, match="not a pretrain_soda.py option: hiden_size"):
        flags_for({"hiden_size": 128})


def test_derived_values_are_computed_once_and_recorded(monkeypatch):
    config = parse_argv(INTERFACE + ["--tensor-model-parallel-size", "2", "--lr", "0"])
    config.optim.lr = None  # SODA's rule: 0.003 * sqrt(8/256) * sqrt(1024/64)
    derived = derive(config, vocab_size=1000, num_codebooks=8, world_size=4)
    assert derived.architecture.padded_vocab_size == 1024 and derived.data_parallel_size == 2
    assert derived.num_micro_batches == 2  # 8 / (2 x DP 2)
    assert derived.lr == pytest.approx(0.003 * (8 / 256) ** 0.5 * 4) and derived.lr_source == "paper rule (width 64)"
    record = json.loads(json.dumps(run_record(config, derived)))
    assert record["derived"]["architecture"]["padded_vocab_size"] == 1024
    assert record["derived"]["lr"] == derived.lr and record["tensor_model_parallel_size"] == 2
    assert TrainConfig.from_dict(record).validate() == config  # "derived" is not an input
    with pytest.raises(ConfigError, match="global batch 8 is not a multiple of micro batch 2 x data-parallel size 3"):
        derive(config, vocab_size=1000, num_codebooks=8, world_size=6)
    with pytest.raises(ConfigError, match="--tensor-model-parallel-size 2 does not divide the world size 3"):
        derive(config, vocab_size=1000, num_codebooks=8, world_size=3)
    with pytest.raises(ConfigError, match="--tensor-model-parallel-size 2 does not divide the padded vocabulary 1001"):
        derive(parse_argv(INTERFACE + ["--tensor-model-parallel-size", "2", "--make-vocab-size-divisible-by", "1"]),
               vocab_size=1001, num_codebooks=8, world_size=2)


def test_old_flat_run_args_are_read(tmp_path):
    """run_args.json written before the typed config: vars(argparse.Namespace)."""
    flat = {**parse_argv(INTERFACE).to_dict(), "architecture": None, "seq_length": 256, "hidden_size": None,
            "lr_warmup_fraction": 0.1}  # the old finalize kept the fraction beside the iterations
    assert TrainConfig.from_dict(flat).validate() == parse_argv(INTERFACE)


def test_codebook_count_out_of_range_is_refused_when_parsing(capsys):
    with pytest.raises(SystemExit):
        parse_argv(INTERFACE + ["--num-codebooks", "33"])
    assert "--num-codebooks must be in 1..32" in capsys.readouterr().err


def test_load_must_exist(capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse_argv(INTERFACE + ["--load", str(tmp_path / "missing")])
    assert "no such directory" in capsys.readouterr().err
    assert parse_argv(INTERFACE + ["--load", str(tmp_path)]).checkpoint.load == str(tmp_path)
