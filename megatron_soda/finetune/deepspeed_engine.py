"""Two engines with one interface, driving the same model, loss and optimizer:

* :class:`TorchEngine`: one process, plain torch, fp32 (CPU tests, the parity check against the
  megatron trainer, a small GPU job).  Checkpoints are safetensors + JSON (nothing pickled).
* :class:`DeepSpeedEngine`: DeepSpeed ZeRO stage 2/3 with optimizer (and, stage 3, parameter) CPU
  offload, bf16, gradient accumulation, ``engine.save_checkpoint``/``load_checkpoint``.  Our
  :class:`~megatron_soda.finetune.deepspeed_optim.CountedCautious` is DeepSpeed's *client
  optimizer*; with offload DeepSpeed runs it on the CPU copy of the fp32 partitions (it does not
  swap it for its CPU Adam: ``zero_force_ds_cpu_optimizer: false``), which is slower than
  DeepSpeedCPUAdam's vectorised C++ but is the optimizer SODA trained with.  DeepSpeed's
  checkpoints are its own ``torch.save`` files: resume only from checkpoints your runs wrote.

The loop gives each engine ``backward(loss)`` per micro-batch (``loss`` already divided by the
global batch's trained-token count) and one ``step()`` per global batch.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import torch

from megatron_soda.finetune.deepspeed_optim import (
    CountedCautious,
    MegatronSchedule,
    model_statistics,
    zero_statistics,
)

LATEST = "latest"  # the tracker file (DeepSpeed's name): the tag of the last complete checkpoint


def read_latest(save: str) -> str | None:
    path = os.path.join(save, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None



@contextlib.contextmanager
def load_guard() -> Iterator[None]:
    """DeepSpeed's checkpoint loader calls ``torch.load(weights_only=False)``: inside this guard
    every load is ``weights_only``, with only the classes DeepSpeed's own state holds allowed (an
    Enum and its loss scalers: attributes restored, no code run; docs/security.md)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from megatron_soda.safe_loading import restricted_loading

    allowed = [ZeroStageEnum, LossScaler, DynamicLossScaler]
    with restricted_loading(), torch.serialization.safe_globals(allowed):
        yield

class TorchEngine:
    """The plain-torch engine (module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        groups: list[dict[str, Any]],
        opt: dict[str, Any],
        schedule: dict[str, Any],
        vocab_size: int,
        clip: float,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = self.module = model.to(self.device)
        self.optimizer = CountedCautious(
            groups, **opt, statistics=model_statistics(model, vocab_size)
        )
        self.schedule = MegatronSchedule(self.optimizer, **schedule)
        self.clip = clip
        self.world, self.rank = 1, 0

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> dict[str, float]:
        lr = self.optimizer.param_groups[0]["lr"]
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = (
            torch.nn.utils.clip_grad_norm_(params, self.clip)
            if self.clip > 0
            else torch.tensor(float("nan"))
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.updates_done += 1
        self.schedule.step()
        return {"lr": lr, "grad_norm": float(norm)}

    def save(self, save: str, tag: str, client: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from megatron_soda.atomic_files import replacing_dir, write_text_atomic

        names = {id(p): n for n, p in self.model.named_parameters()}
        moments = {}
        for p, state in self.optimizer.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                moments[f"{names[id(p)]}/{key}"] = state[key].detach().cpu().contiguous()
        os.makedirs(save, exist_ok=True)
        with replacing_dir(os.path.join(save, tag)) as tmp:
            save_file(
                {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters()},
                os.path.join(tmp, "model.safetensors"),
            )
            save_file(moments, os.path.join(tmp, "optimizer.safetensors"))
            save_file({"cpu": torch.get_rng_state()}, os.path.join(tmp, "rng.safetensors"))
            state = {
                "updates_done": self.optimizer.updates_done,
                "schedule": self.schedule.state_dict(),
                "client": client,
            }
            write_text_atomic(os.path.join(tmp, "state.json"), json.dumps(state, indent=2) + "\n")
        write_text_atomic(os.path.join(save, LATEST), tag + "\n", durable=True)

    def load(self, save: str) -> dict[str, Any] | None:
        from safetensors.torch import load_file

        tag = read_latest(save)
        if tag is None:
            return None
        path = os.path.join(save, tag)
        weights = load_file(os.path.join(path, "model.safetensors"))
        self.model.load_state_dict(weights, strict=True)
        moments = load_file(os.path.join(path, "optimizer.safetensors"))
        for name, p in self.model.named_parameters():
            if f"{name}/exp_avg" in moments:
                self.optimizer.state[p] = {
                    k: moments[f"{name}/{k}"].to(p.device) for k in ("exp_avg", "exp_avg_sq")
                }
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        self.optimizer.updates_done = int(state["updates_done"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(load_file(os.path.join(path, "rng.safetensors"))["cpu"])
        return state["client"]

    def full_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()}


def deepspeed_config(
    *,
    micro_batch_size: int,
    global_batch_size: int,
    world: int,
    zero_stage: int,
    offload_optimizer: bool,
    offload_param: bool,
    bf16: bool,
    clip: float,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """DeepSpeed's config from the flags, or ``base`` (``--deepspeed-config FILE``) checked against
    them and completed with what the client optimizer needs."""
    if global_batch_size % (micro_batch_size * world):
        raise ValueError(
            f"--global-batch-size {global_batch_size} is not a multiple of --micro-batch-size "
            f"{micro_batch_size} x {world} processes"
        )
    batch = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "train_batch_size": global_batch_size,
        "gradient_accumulation_steps": global_batch_size // (micro_batch_size * world),
    }
    if base is not None:
        cfg = json.loads(json.dumps(base))
        for key in ("optimizer", "scheduler"):
            if key in cfg:
                raise ValueError(
                    f"--deepspeed-config: remove its {key!r} section; the optimizer is SODA's "
                    "Cautious AdamC and the schedule megatron's, set by this command's flags"
                )
        for key, want in batch.items():
            if key in cfg and cfg[key] != "auto" and int(cfg[key]) != want:
                raise ValueError(f"--deepspeed-config {key} = {cfg[key]}, the flags say {want}")
    else:
        if zero_stage not in (1, 2, 3):
            raise ValueError(f"--zero-stage {zero_stage}: choose 1, 2 or 3")
        if offload_param and zero_stage != 3:
            raise ValueError(
                "--offload-param needs --zero-stage 3 (DeepSpeed offloads parameters only in stage 3)"
            )
        pin = torch.cuda.is_available()
        zero: dict[str, Any] = {
            "stage": zero_stage,
            "contiguous_gradients": True,
            "overlap_comm": pin,
            "sub_group_size": int(1e12),
        }
        for key, on in (("offload_optimizer", offload_optimizer), ("offload_param", offload_param)):
            if on:
                zero[key] = {"device": "cpu", "pin_memory": pin}
        cfg = {
            "zero_optimization": zero,
            "bf16": {"enabled": bf16},
            "gradient_clipping": clip,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
    cfg.update(batch)
    cfg.setdefault("gradient_clipping", clip)
    # the client optimizer: DeepSpeed refuses "untested" optimizers under ZeRO unless told, and
    # with offload would otherwise insist on its own CPU Adam
    cfg["zero_allow_untested_optimizer"] = True
    cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


class DeepSpeedEngine:
    """The DeepSpeed engine (module docstring).  ``torch.distributed`` must be initialised
    (``deepspeed.init_distributed``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        groups: list[dict[str, Any]],
        opt: dict[str, Any],
        schedule: dict[str, Any],
        vocab_size: int,
        config: dict[str, Any],
    ) -> None:
        import deepspeed
        import torch.distributed as dist

        shapes = {id(p): tuple(p.shape) for p in model.parameters()}
        self.optimizer = CountedCautious(groups, **opt)
        self.schedule = MegatronSchedule(self.optimizer, **schedule)
        self.engine, self.zero, _, _ = deepspeed.initialize(
            model=model, optimizer=self.optimizer, lr_scheduler=self.schedule, config=config
        )
        # forward through the engine, not its module: ZeRO-3 counts micro-steps at each engine
        # forward (``clear_backward_seen_flag``); calling the module loses accumulated gradients
        self.model = self.engine
        self.module = self.engine.module
        self.device = self.engine.device
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if hasattr(self.zero, "single_partition_of_fp32_groups") or hasattr(
            self.zero, "fp32_partitioned_groups_flat"
        ):
            self.optimizer.statistics = zero_statistics(
                self.zero,
                self.module,
                vocab_size,
                shapes,
                group=getattr(self.zero, "dp_process_group", None),
            )
        else:
            raise ValueError(
                "DeepSpeed did not build a ZeRO optimizer: set zero_optimization.stage to 1, 2 or 3"
            )

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(
            loss, scale_wrt_gas=False
        )  # the loop already divides by the batch's tokens
        self.engine.step()  # an update only at the accumulation boundary

    def step(self) -> dict[str, float]:
        if not self.engine.was_step_applied():
            raise RuntimeError(
                "DeepSpeed skipped the update (overflow); fp16 is not supported, use bf16"
            )
        self.optimizer.updates_done += 1
        norm = self.engine.get_global_grad_norm()
        return {
            "lr": self.schedule.lr(self.schedule.num_steps - 1),
            "grad_norm": float(norm) if norm is not None else float("nan"),
        }

    def save(self, save: str, tag: str, client: dict[str, Any]) -> None:
        client = {
            **client,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }
        self.engine.save_checkpoint(save, tag=tag, client_state={"soda": client})

    def load(self, save: str) -> dict[str, Any] | None:
        if read_latest(save) is None:
            return None
        with load_guard():
            path, client = self.engine.load_checkpoint(save)
        if path is None:
            raise RuntimeError(f"{save}: DeepSpeed could not load the checkpoint named in {LATEST}")
        soda = dict(client["soda"])
        torch.set_rng_state(soda.pop("rng_cpu"))
        cuda = soda.pop("rng_cuda")
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)
        self.optimizer.updates_done = int(soda["step"])
        return soda

    def full_state(self) -> dict[str, torch.Tensor]:
        """The fp32 master weights, whole (every rank must call; ZeRO-3 gathers)."""
        from deepspeed.utils import safe_get_full_fp32_param

        return {
            n: safe_get_full_fp32_param(p).detach().cpu().clone()
            for n, p in self.module.named_parameters()
        }
