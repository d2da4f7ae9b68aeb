"""The megatron_soda runs of bench_train_cpu.py, each in the process it is called in.

* ``run_megatron``: the trainer's real pieces in-process (``parse_argv`` with pretrain_soda.py's
  flags, ``Trainer``'s set-up), then per iteration what ``Trainer.train`` does, with
  data time (GPTDataset fetch, ``make_batch``) and step time (``train_step``) timed apart;
* ``run_megatron_e2e``: ``torchrun --nproc_per_node 1 pretrain_soda.py`` itself, read back
  from its metrics JSONL;
* ``run_data``: the data pipeline alone (GPTDataset fetch, dense and packed ``make_batch``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from bench_paths import REPO, TORCHRUN
from load_meter import OthersLoad
from pretrain_command import free_port, pretrain_flags, torchrun_command
from torch_profile import profile_table


def trainer_flags(spec: dict[str, Any]) -> list[str]:
    """pretrain_soda.py's command line for one run (the same for in-process and torchrun)."""
    return pretrain_flags(
        device="cpu",
        model_size=spec["model"],
        tokenizer=spec["tokenizer"],
        num_codebooks=spec["num_codebooks"],
        data_path=spec["data_path"],
        data_cache_path=spec["cache"],
        seq_length=spec["seq_length"],
        micro_batch_size=spec["micro_batch_size"],
        global_batch_size=spec["global_batch_size"],
        train_iters=spec["train_iters"],
        lr="1e-3",
        metrics_jsonl=spec.get("metrics"),
    )


def _init_single_process_env() -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )


def run_megatron(spec: dict[str, Any]) -> dict[str, Any]:
    """The trainer's set-up + the body of Trainer.train, timed: data (fetch, make_batch) and step."""
    import torch

    from megatron_soda.config.cli import parse_argv
    from megatron_soda.training.trainer import Trainer

    _init_single_process_env()
    warmup, steps = spec["warmup"], spec["steps"]
    config = parse_argv(trainer_flags(dict(spec, train_iters=warmup + steps + 1)))  # +1: --profile
    from megatron.core.num_microbatches_calculator import (
        get_current_global_batch_size,
        get_num_microbatches,
        update_num_microbatches,
    )

    from megatron_soda.training.step import train_step

    fetch, make, step, cpu, losses = [], [], [], [], []
    t_build = time.perf_counter()
    with Trainer(config) as run:
        build_s = time.perf_counter() - t_build
        state = run.state
        with OthersLoad() as load:
            for i in range(warmup + steps):
                update_num_microbatches(state.consumed_samples, consistency_check=True)
                n = get_num_microbatches()
                t0 = time.perf_counter()
                # what run._train_batches(n) does, split in its two halves
                raw = [next(run._train_iter) for _ in range(n)]
                t1 = time.perf_counter()
                batches = [run._batch(r) for r in raw]
                t2, c2 = time.perf_counter(), time.process_time()
                result = train_step(
                    run.step,
                    run.optimizer,
                    run.scheduler,
                    batches,
                    config.optim.on_nonfinite_loss,
                    lambda: f"iteration {state.iteration + 1}",
                )
                t3, c3 = time.perf_counter(), time.process_time()
                state.iteration += 1
                state.consumed_samples += get_current_global_batch_size()
                losses.append(float(result.report[0] / result.report[2]))
                if i == warmup - 1:
                    load.__enter__()  # restart the meter: count the timed steps only
                if i >= warmup:
                    fetch.append(t1 - t0)
                    make.append(t2 - t1)
                    step.append(t3 - t2)
                    cpu.append(c3 - c2)
            if spec.get("profile"):
                profile_table(
                    lambda: train_step(
                        run.step,
                        run.optimizer,
                        run.scheduler,
                        run._train_batches(n),
                        "stop",
                        lambda: "profiled step",
                    )
                )
        threads = torch.get_num_threads()
    return {
        "step_s": step,
        "cpu_s": cpu,
        "fetch_s": fetch,
        "make_batch_s": make,
        "losses": losses,
        "build_s": build_s,
        "others_cores": load.cores,
        "threads": threads,
        "params": sum(p.numel() for m in run.model for p in m.parameters()),
    }


def run_megatron_e2e(spec: dict[str, Any]) -> dict[str, Any]:
    """pretrain_soda.py under torchrun; per-iteration numbers from its metrics JSONL."""
    warmup, steps = spec["warmup"], spec["steps"]
    metrics = os.path.join(spec["workdir"], f"metrics-{os.getpid()}-{time.monotonic_ns()}.jsonl")
    flags = trainer_flags(dict(spec, train_iters=warmup + steps, metrics=metrics))
    cmd = torchrun_command(TORCHRUN, 1, None, flags)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with OthersLoad() as load:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pretrain_soda.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    with open(metrics) as f:
        recs = [r for r in map(json.loads, f) if r["split"] == "train"]
    timed = [r for r in recs if r["iteration"] > warmup]
    tokens = spec["global_batch_size"] * spec["seq_length"]
    return {
        "step_s": [tokens / r["tokens_per_sec"] for r in timed],
        "tokens_per_sec_jsonl": [r["tokens_per_sec"] for r in timed],
        "tflops_per_device_jsonl": [r["tflops_per_device"] for r in timed],
        "losses": [r["lm_loss"] for r in recs],
        "others_cores": load.cores,
        "command": cmd,
    }


def run_data(spec: dict[str, Any]) -> dict[str, Any]:
    """The trainer's data pipeline only (a tiny model is built because the Trainer builds one)."""
    from megatron_soda.config.cli import parse_argv
    from megatron_soda.training.data import make_batch
    from megatron_soda.training.trainer import Trainer

    _init_single_process_env()
    n = spec["steps"] + spec["warmup"]
    config = parse_argv(trainer_flags(dict(spec, model="tiny", train_iters=n)))
    fetch, make, packed, docs = [], [], [], []
    with Trainer(config) as run:
        tokenizer, device = run.tokenizer, run.device
        with OthersLoad() as load:
            for i in range(n):
                t0 = time.perf_counter()
                raw = next(run._train_iter)
                t1 = time.perf_counter()
                batch = run._batch(raw)  # local spec: dense [b, 1, s, s] document mask
                t2 = time.perf_counter()
                # Transformer Engine's layout (what GPU runs use): THD with cu_seqlens
                make_batch(
                    raw,
                    tokenizer.eod,
                    device,
                    reset_attention_mask=True,
                    reset_position_ids=True,
                    eod_mask_loss=False,
                    packed=True,
                )
                t3 = time.perf_counter()
                if i >= spec["warmup"]:
                    fetch.append(t1 - t0)
                    make.append(t2 - t1)
                    packed.append(t3 - t2)
                    docs.append(
                        int((batch.tokens == tokenizer.eod).sum()) / batch.tokens.size(0) + 1
                    )
    return {
        "fetch_s": fetch,
        "make_batch_s": make,
        "make_batch_packed_s": packed,
        "docs_per_sample": docs,
        "others_cores": load.cores,
    }
