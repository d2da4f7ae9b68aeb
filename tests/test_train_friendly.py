"""Friendly failures and logs of a training run: one process without torchrun, layouts that do
not divide refused in one line, mismatches shown by the fields that differ, the attention
fallback warning, small data without a validation split, W&B resume ids, elapsed time and ETA.

The end-to-end tests run ``python pretrain_soda.py`` (no torchrun) on CPU, a few iterations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers_train import REPO, base_args, read_metrics, write_shard

from megatron_soda.config import ConfigError
from megatron_soda.config.cli import parse_argv
from megatron_soda.config.derived import derive
from megatron_soda.tokenizer import SodaTokenizer

INTERFACE = (
    "--device cpu --model-size tiny --tokenizer tokenizer.json --num-codebooks 8 --data-path P "
    "--micro-batch-size 2 --global-batch-size 8 --train-iters 12"
).split()
LAUNCH_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_STEP_NUM_TASKS",
)
ITERS = 3


@pytest.fixture(scope="module")
def small(tmp_path_factory, small_bpe_path) -> dict:
    """Shards of 30 documents each: the default --split 99,1,0 gives them no validation documents."""
    root = tmp_path_factory.mktemp("friendly")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    speech = write_shard(str(root / "speech" / "shard"), tok, "speech", 30, seed=1)
    text = write_shard(str(root / "text" / "shard"), tok, "text", 30, seed=2)
    return {"root": root, "tok": small_bpe_path, "speech": speech, "text": text}


def pretrain(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python pretrain_soda.py`` as a user would type it: no torchrun, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "pretrain_soda.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------- one process, no torchrun
def test_without_torchrun_the_run_is_one_process():
    from megatron_soda.training.initialize import standalone_rendezvous

    env: dict[str, str] = {}
    assert standalone_rendezvous(env)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    assert 0 < int(env["MASTER_PORT"]) < 65536
    under_torchrun = {"RANK": "1", "WORLD_SIZE": "2"}
    assert not standalone_rendezvous(under_torchrun) and under_torchrun == {
        "RANK": "1",
        "WORLD_SIZE": "2",
    }
    assert (
        standalone_rendezvous(given := {"MASTER_PORT": "29555"}) and given["MASTER_PORT"] == "29555"
    )
    with pytest.raises(ConfigError, match="2 Slurm tasks but no RANK"):
        standalone_rendezvous({"SLURM_STEP_NUM_TASKS": "2"})
    with pytest.raises(ConfigError, match="WORLD_SIZE=4 but no RANK"):
        standalone_rendezvous({"WORLD_SIZE": "4"})


@pytest.mark.torchrun
def test_python_pretrain_soda_trains_small_data_and_logs_progress(small):
    """One process (no torchrun) on shards too small for the default validation split: a
    warning, training without validation; every log line and record carries elapsed and ETA."""
    metrics = str(small["root"] / "run.jsonl")
    proc = pretrain(
        base_args(
            small["tok"],
            small["speech"],
            small["text"],
            metrics,
            "--train-iters",
            str(ITERS),
            "--eval-interval",
            "1",
        )
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert "| world 1 (TP 1, PP 1, CP 1, DP 1) |" in out
    warnings = [
        line for line in out.splitlines() if line.startswith("warning: the default --split")
    ]
    assert len(warnings) == 1 and f"{small['speech']} (30 documents)" in warnings[0]
    assert "training without validation" in warnings[0]
    assert "attention falls back" not in out  # CPU: the local path is the only one
    train_lines = [line for line in out.splitlines() if line.startswith("[train]")]
    assert len(train_lines) == ITERS and all(
        " | elapsed " in line and " | ETA " in line for line in train_lines
    )
    assert train_lines[-1].endswith("| ETA 0s")
    assert read_metrics(metrics, "valid") == []
    records = read_metrics(metrics)
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    for r in records:  # the mean time per iteration so far, times the iterations left
        assert r["eta_s"] == pytest.approx(
            r["elapsed_s"] / r["iteration"] * (ITERS - r["iteration"])
        )
        assert "peak_mem_gib" not in r  # GPU runs only


# ---------------------------------------------------------------------- layouts that do not divide
@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--pipeline-model-parallel-size", "3"],
            "--pipeline-model-parallel-size 3 does not divide --num-layers 4",
        ),
        (
            [
                "--num-layers",
                "8",
                "--pipeline-model-parallel-size",
                "2",
                "--num-virtual-stages-per-pipeline-rank",
                "3",
            ],
            "--num-virtual-stages-per-pipeline-rank 3 does not divide the 4 layers per pipeline rank "
            "(--num-layers 8 / --pipeline-model-parallel-size 2)",
        ),
        (
            [
                "--num-layers",
                "8",
                "--pipeline-model-parallel-size",
                "2",
                "--num-layers-per-virtual-pipeline-stage",
                "3",
            ],
            "--num-layers-per-virtual-pipeline-stage 3 does not divide the 4 layers per pipeline rank",
        ),
    ],
)
def test_pipeline_layouts_that_do_not_divide_are_one_line(capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        parse_argv(INTERFACE + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err  # one line: no usage, it is about values, not syntax
    assert err.startswith(f"pretrain_soda.py: error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra,world,message",
    [
        (
            ["--tensor-model-parallel-size", "3"],
            3,
            "--tensor-model-parallel-size 3 does not divide --num-attention-heads "
            "4; --tensor-model-parallel-size 3 does not divide --num-query-groups 2; --tensor-model-parallel-size 3 does "
            "not divide the padded vocabulary 1024 (the tokenizer's 1000 rounded up to --make-vocab-size-divisible-by 128)",
        ),
        (
            ["--tensor-model-parallel-size", "4"],
            8,
            "--tensor-model-parallel-size 4 does not divide --num-query-groups 2",
        ),
        (
            ["--tensor-model-parallel-size", "2", "--make-vocab-size-divisible-by", "1"],
            2,
            "--tensor-model-parallel-size 2 does not divide the padded vocabulary 1001",
        ),
        (
            ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
            6,
            "--tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2 = 4 does not divide the world size 6",
        ),
        (
            ["--pipeline-model-parallel-size", "2"],
            3,
            "--pipeline-model-parallel-size 2 does not divide the world size 3",
        ),
        (
            ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--seq-length", "255"],
            2,
            "--tensor-model-parallel-size 2 does not divide --seq-length 255 (--sequence-parallel splits the sequence)",
        ),
    ],
)
def test_tensor_layouts_and_world_sizes_that_do_not_divide(extra, world, message):
    vocab = 1001 if "--make-vocab-size-divisible-by" in extra else 1000
    with pytest.raises(ConfigError) as e:
        derive(parse_argv(INTERFACE + extra), vocab_size=vocab, num_codebooks=8, world_size=world)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.torchrun
def test_a_layout_that_does_not_divide_stops_before_any_process_group(small):
    proc = pretrain(
        base_args(
            small["tok"],
            small["speech"],
            small["text"],
            str(small["root"] / "tp3.jsonl"),
            "--tensor-model-parallel-size",
            "3",
        )
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "pretrain_soda.py: error: --tensor-model-parallel-size 3 does not divide "
        "--num-attention-heads 4; "
    ), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "[train]" not in proc.stdout


# ---------------------------------------------------------------------- only the fields that differ
def test_mismatches_name_only_the_differing_fields(tmp_path, small_bpe_path):
    from megatron_soda.checkpointing.io import check_compatible
    from megatron_soda.checkpointing.layout import CheckpointError
    from megatron_soda.format import ShardError, field_differences, validate_shard
    from megatron_soda.models import preset
    from megatron_soda.training.data_checks import check_blend_provenance

    tok8, tok4 = (SodaTokenizer(small_bpe_path, num_codebooks=n) for n in (8, 4))
    assert (
        field_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}, "x", "y")
        == "b: x 2 vs y 3; c: x None vs y 4"
    )
    v8, v4 = tok8.layout.vocab_size, tok4.layout.vocab_size
    layout_diff = (
        f"num_codebooks: shard 8 vs this tokenizer 4; vocab_size: shard {v8} vs this tokenizer {v4}"
    )

    speech = write_shard(str(tmp_path / "s" / "shard"), tok8, "speech", 5, seed=0)
    with pytest.raises(ShardError) as e:
        validate_shard(speech, tok4.layout)
    assert f"token layout differs ({layout_diff})" in str(e.value) and "base_vocab_size" not in str(
        e.value
    )

    text = write_shard(str(tmp_path / "t" / "shard"), tok4, "text", 5, seed=1)
    with pytest.raises(ShardError) as e:
        check_blend_provenance([speech, text])
    assert (
        f"{speech} has layout (num_codebooks 8; vocab_size {v8}), {text} has layout (num_codebooks 4; "
        f"vocab_size {v4})"
    ) in str(e.value)

    cfg = preset("tiny").with_overrides(vocab_size=tok8.vocab_size)
    meta = json.loads(
        json.dumps({"model": cfg.to_dict(), "tokenizer": dict(tok8.unique_identifiers)})
    )
    with pytest.raises(CheckpointError) as e:
        check_compatible("CK", meta, cfg, tok4)
    assert (
        f"CK: saved with another tokenizer (num_codebooks: checkpoint 8 vs this run 4; layout.vocab_size: "
        f"checkpoint {v8} vs this run {v4}); train with --tokenizer"
    ) in str(e.value)


# ---------------------------------------------------------------------- attention without TE
@pytest.mark.parametrize(
    "device,impl,te,expected",
    [
        (
            "cuda",
            "local",
            False,
            "Transformer Engine is not installed: attention falls back to megatron-core's unfused",
        ),
        ("cuda", "local", True, "--transformer-impl local: attention falls back"),
        ("cuda", "transformer_engine", True, None),
        ("cpu", "local", False, None),
    ],
)
def test_gpu_attention_without_transformer_engine_is_warned(device, impl, te, expected):
    from megatron_soda.training.model_setup import attention_fallback_warning

    warning = attention_fallback_warning(device, impl, te_importable=te)
    if expected is None:
        assert warning is None
        return
    assert warning.startswith(f"warning: {expected}") and "several times slower" in warning
    assert ("docs/install.md" in warning) is not te and "\n" not in warning


# ---------------------------------------------------------------------- small data
def test_the_default_split_may_leave_validation_empty_a_given_split_may_not():
    from megatron_soda.training.data_checks import (
        DataError,
        check_split,
        empty_splits,
        without_validation,
    )

    assert empty_splits(30, "99,1,0") == ["valid"] and empty_splits(200, "99,1,0") == []
    assert check_split("P", 30, None) is False  # the default: train without validation
    assert check_split("P", 200, None) is True
    with pytest.raises(DataError, match="P: --split 99,1,0 gives its valid split no documents"):
        check_split("P", 30, "99,1,0")
    with pytest.raises(DataError, match="P: --split 1,99,0 gives its train split no documents"):
        check_split("P", 30, "1,99,0")
    assert without_validation("99,1,0") == "99,0,0"
    assert (
        parse_argv(INTERFACE).data.split is None
    )  # "not given" is kept: the default may drop validation


# ---------------------------------------------------------------------- logs
def test_wandb_resumes_the_run_of_the_same_save_directory(tmp_path, monkeypatch):
    from megatron_soda.training.metrics import wandb_init_kwargs, wandb_run_id

    monkeypatch.chdir(tmp_path)
    run_id = wandb_run_id("ckpt/600m", "600m")
    assert run_id == wandb_run_id(str(tmp_path / "ckpt" / "600m"), "600m")  # relative or absolute
    assert len({run_id, wandb_run_id("ckpt/600m", "other"), wandb_run_id("ckpt/1.7b", "600m")}) == 3
    assert wandb_run_id(None, "600m") is None
    config = parse_argv(INTERFACE + ["--save", "ckpt/600m", "--wandb-exp-name", "600m"])
    config.logging.wandb_project = "soda"  # set after validation: wandb is not installed here
    kwargs = wandb_init_kwargs(config, {"record": 1})
    assert kwargs == {
        "project": "soda",
        "name": "600m",
        "dir": "ckpt/600m",
        "config": {"record": 1},
        "id": run_id,
        "resume": "allow",
    }


def test_progress_gives_elapsed_time_and_eta():
    from megatron_soda.training.metrics import Progress, _progress_text, duration

    now = [100.0]
    progress = Progress(
        start_iteration=10, train_iters=110, device=torch.device("cpu"), clock=lambda: now[0]
    )
    now[0] += 50.0  # 20 iterations in 50 s: 2.5 s each, 80 left
    assert progress.fields(30) == {"elapsed_s": 50.0, "eta_s": 200.0}
    assert _progress_text(progress.fields(30)) == " | elapsed 50s | ETA 3m20s"
    assert _progress_text({"elapsed_s": 3725.0, "eta_s": 0.0, "peak_mem_gib": 61.27}) == (
        " | elapsed 1h02m | ETA 0s | peak mem 61.3 GiB"
    )
    assert [duration(s) for s in (0.4, 59, 60, 3599, 3600, 90000, float("nan"))] == [
        "0s",
        "59s",
        "1m00s",
        "59m59s",
        "1h00m",
        "1d01h",
        "-",
    ]
