"""``soda-finetune-deepspeed`` (``tools/finetune/finetune_deepspeed.py``): supervised fine-tuning
of an HF ``Qwen3ForCausalLM`` (an HF export, SODA's release, or a megatron_soda checkpoint
converted in memory) on SFT shards, with DeepSpeed ZeRO (``--engine deepspeed``) or plain torch
(``--engine torch``).  Defaults are the authors' recipe, the megatron path's
(:data:`megatron_soda.config.sft.SFT_DEFAULTS`).  docs/finetuning.md has the commands.

One process per GPU under the ``deepspeed`` or ``torchrun`` launcher; a plain ``python`` run is
one process (``DS_ACCELERATOR=cpu`` for DeepSpeed on the CPU, over gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from itertools import islice

import torch

from megatron_soda.config.sft import SFT_DEFAULTS
from megatron_soda.finetune.deepspeed_data import (
    Segment,
    SftShards,
    micro_batch,
    sequential_windows,
)
from megatron_soda.finetune.deepspeed_model import (
    load_hf_model,
    masked_loss_sums,
    param_groups,
    save_hf_directory,
)


def build_parser() -> argparse.ArgumentParser:
    d = SFT_DEFAULTS
    p = argparse.ArgumentParser(
        prog="soda-finetune-deepspeed", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--load", required=True, help="HF model directory or megatron_soda checkpoint to start from"
    )
    p.add_argument(
        "--data-path",
        required=True,
        nargs="+",
        help="SFT shard prefixes (PREFIX.bin/.idx/.loss_start.npy)",
    )
    p.add_argument(
        "--save", required=True, help="checkpoint directory (resumed from when it holds one)"
    )
    p.add_argument("--save-hf", help="write the final model here as an HF directory")
    p.add_argument("--save-hf-dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument(
        "--save-interval",
        type=int,
        default=0,
        help="checkpoint every N updates (0: at the end only)",
    )
    p.add_argument("--engine", default="deepspeed", choices=("deepspeed", "torch"))
    p.add_argument("--zero-stage", type=int, default=3, choices=(1, 2, 3))
    p.add_argument(
        "--offload-optimizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fp32 master weights, gradients' partitions and optimizer state in CPU memory",
    )
    p.add_argument(
        "--offload-param",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ZeRO-3: parameters in CPU memory, fetched per layer",
    )
    p.add_argument(
        "--deepspeed-config",
        help="a DeepSpeed JSON config instead of the generated one "
        "(no optimizer/scheduler sections: those are set here)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 compute (default: on for DeepSpeed on a GPU; the torch engine is fp32)",
    )
    p.add_argument(
        "--recompute-activations",
        action="store_true",
        help="recompute each decoder layer in the backward (HF gradient checkpointing): activations "
        "of one layer instead of all, for long sequences on a small GPU",
    )
    p.add_argument(
        "--device", default=None, help="torch engine: cpu or cuda (default cuda when present)"
    )
    p.add_argument("--seq-length", type=int, default=d["seq_length"])
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=d["global_batch_size"])
    p.add_argument("--train-iters", type=int, required=True)
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--min-lr-ratio", type=float, default=d["min_lr_ratio"])
    p.add_argument(
        "--lr-decay-style", default=d["lr_decay_style"], choices=("cosine", "linear", "constant")
    )
    p.add_argument("--lr-warmup-fraction", type=float, default=d["lr_warmup_fraction"])
    p.add_argument("--lr-warmup-iters", type=int, help="instead of --lr-warmup-fraction")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--adam-beta1", type=float, default=d["adam_beta1"])
    p.add_argument("--adam-beta2", type=float, default=d["adam_beta2"])
    p.add_argument("--adam-eps", type=float, default=d["adam_eps"])
    p.add_argument("--clip-grad", type=float, default=d["clip_grad"])
    p.add_argument("--z-loss-weight", type=float, default=d["z_loss_weight"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--metrics-jsonl", help="one JSON line per update (rank 0)")
    p.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # the deepspeed launcher's
    return p


def _setup_distributed() -> None:
    try:
        import deepspeed
    except ImportError as e:
        raise RuntimeError(
            f"--engine deepspeed needs DeepSpeed ({e}): pip install 'megatron_soda[deepspeed]', "
            "or use --engine torch"
        ) from None

    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if not torch.cuda.is_available() and os.environ.get("WORLD_SIZE", "1") == "1":
        # one CPU process has no collective to speed up: skip the shared-memory allreduce op
        # DeepSpeed would compile with g++ at start-up (~24 s; deepspeed/comm/torch.py build_shm_op)
        import sys

        import deepspeed.comm.torch  # noqa: F401  (``deepspeed.comm.torch`` the attribute is torch)

        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def rank_windows(
    windows: list[list[Segment]], micro_batch_size: int, rank: int, world: int
) -> list[list[list[Segment]]]:
    """This rank's micro-batches of one global batch, as megatron's ``ResumableBatchSampler``
    deals them: rank ``r`` takes windows ``r*mbs + k*mbs*world`` onwards."""
    out = []
    for start in range(rank * micro_batch_size, len(windows), micro_batch_size * world):
        out.append(windows[start : start + micro_batch_size])
    return out


def train(args: argparse.Namespace, windows: Iterator[list[Segment]] | None = None) -> list[dict]:
    """The loop; returns the per-update records (every rank).  ``windows``: an order of windows
    instead of :func:`sequential_windows` (the parity test gives megatron's)."""
    use_ds = args.engine == "deepspeed"
    bf16 = bool(args.bf16) if args.bf16 is not None else (use_ds and torch.cuda.is_available())
    if use_ds:
        _setup_distributed()
    elif args.bf16:
        raise SystemExit("--bf16: the torch engine trains in fp32 (use --engine deepspeed)")
    torch.manual_seed(args.seed)
    model, tok = load_hf_model(args.load, "fp32")
    if args.recompute_activations:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shards = SftShards(args.data_path, tok.layout)
    vocab, eod = tok.vocab_size, tok.eod
    warmup = (
        args.lr_warmup_iters
        if args.lr_warmup_iters is not None
        else int(args.lr_warmup_fraction * args.train_iters)
    )
    schedule = dict(
        max_lr=args.lr,
        min_lr=args.min_lr_ratio * args.lr,
        warmup=warmup,
        decay=args.train_iters,
        style=args.lr_decay_style,
    )
    opt = dict(
        lr=args.lr,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_eps,
        weight_decay=args.weight_decay,
        max_lr=args.lr,
        adamc=True,
    )
    groups = param_groups(model, args.weight_decay)
    if use_ds:
        import torch.distributed as dist

        from megatron_soda.finetune.deepspeed_engine import DeepSpeedEngine, deepspeed_config

        base = None
        if args.deepspeed_config:
            with open(args.deepspeed_config, encoding="utf-8") as f:
                base = json.load(f)
        config = deepspeed_config(
            micro_batch_size=args.micro_batch_size,
            global_batch_size=args.global_batch_size,
            world=dist.get_world_size(),
            zero_stage=args.zero_stage,
            offload_optimizer=args.offload_optimizer,
            offload_param=args.offload_param and args.zero_stage == 3,
            bf16=bf16,
            clip=args.clip_grad,
            base=base,
        )
        engine = DeepSpeedEngine(model, groups, opt, schedule, vocab, config)
    else:
        from megatron_soda.finetune.deepspeed_engine import TorchEngine

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        engine = TorchEngine(model, groups, opt, schedule, vocab, args.clip_grad, device)
    order = (
        windows
        if windows is not None
        else sequential_windows(shards.lengths, args.seq_length, args.seed)
    )
    data_identity = {
        "seed": args.seed,
        "seq_length": args.seq_length,
        "global_batch_size": args.global_batch_size,
        "data_path": [os.path.abspath(p) for p in args.data_path],
        "custom_order": windows is not None,
    }
    client = engine.load(args.save)
    step, consumed = (
        (0, 0) if client is None else (int(client["step"]), int(client["consumed_windows"]))
    )
    if client is not None and (saved := client.get("data")) != data_identity:
        raise ValueError(
            f"{args.save}: the checkpoint's data order ({saved}) is not this run's ({data_identity}): "
            "resume with the same --data-path, --seed, --seq-length and --global-batch-size"
        )
    if client is not None and engine.rank == 0:
        print(
            f"resumed from {args.save} at update {step} ({consumed} windows consumed)", flush=True
        )
    order = islice(order, consumed, None)
    records = []
    while step < args.train_iters:
        batch = list(islice(order, args.global_batch_size))
        if len(batch) < args.global_batch_size:
            raise RuntimeError("the window order ran out")
        masks = [shards.window(w, args.seq_length, eod)[1][1:] for w in batch]
        total = int(sum(m.sum() for m in masks))
        if total == 0:
            raise RuntimeError(f"update {step + 1}: no trained token in the global batch")
        sums = torch.zeros(4, dtype=torch.float64)
        for mb in rank_windows(batch, args.micro_batch_size, engine.rank, engine.world):
            data = micro_batch(shards, mb, args.seq_length, eod)
            with torch.autocast(device_type=engine.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss_sum, rep = masked_loss_sums(
                    engine.model, data, eod, vocab, args.z_loss_weight, engine.device
                )
            engine.backward(loss_sum * (engine.world / total))
            sums += torch.tensor(
                [rep["ce"], rep["z"], rep["tokens"], rep["prompt_tokens"]], dtype=torch.float64
            )
        info = engine.step()
        if engine.world > 1:
            import torch.distributed as dist

            sums = sums.to(engine.device)  # NCCL reduces GPU tensors only
            dist.all_reduce(sums)
            sums = sums.cpu()
        step, consumed = step + 1, consumed + args.global_batch_size
        ce, z, tokens, prompt = sums.tolist()
        record = {
            "iteration": step,
            "lm_loss": ce / tokens,
            "z_loss": z / tokens,
            "loss": ce / tokens + args.z_loss_weight * z / tokens,
            "response_tokens": int(tokens),
            "prompt_tokens": int(prompt),
            **info,
        }
        records.append(record)
        if engine.rank == 0:
            print(
                f"[finetune] iter {step} | lm_loss {record['lm_loss']:.6f} | lr {info['lr']:.3e} | "
                f"grad_norm {info['grad_norm']:.4f} | response tokens {int(tokens)}",
                flush=True,
            )
            if args.metrics_jsonl:
                with open(args.metrics_jsonl, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
        if step == args.train_iters or (args.save_interval and step % args.save_interval == 0):
            engine.save(
                args.save,
                f"step_{step}",
                {"step": step, "consumed_windows": consumed, "data": data_identity},
            )
    if args.save_hf:
        state = engine.full_state()
        if engine.rank == 0:
            dtype = torch.bfloat16 if args.save_hf_dtype == "bf16" else torch.float32
            save_hf_directory(
                {k: v.to(dtype) for k, v in state.items()},
                engine.module.config,
                tok,
                args.save_hf,
                source=args.load,
                extra={"updates": step, "engine": args.engine},
            )
    return records


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
