"""The DeepSpeed fine-tuner's ZeRO plumbing that one CPU process cannot exercise: the cautious
statistic groups of flat partitions on two data-parallel ranks (stage 1/2 and stage 3 layouts),
and the DeepSpeed config made from flags or read from a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _labels(runs, n: int) -> np.ndarray:
    out = np.full(n, -2)
    for lo, hi, g in runs:
        out[lo:hi] = g
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_partitions_map_back_to_statistic_groups_on_two_ranks(stage):
    """The flat ZeRO partitions of 2 data-parallel ranks, labelled element by element with their
    statistic group, are the parameters' own labels cut as DeepSpeed cuts them (stage 1/2: the
    group's flattened parameters padded and halved; stage 3: every parameter halved apart);
    embedding/head rows past the tokenizer's vocabulary are left out (-1)."""
    from types import SimpleNamespace

    from megatron_soda.finetune.deepspeed_optim import _zero_flat_runs

    shapes = {
        "model.embed_tokens.weight": (10, 3),
        "model.layers.0.mlp.up_proj.weight": (3, 3),
        "model.layers.1.mlp.up_proj.weight": (3, 3),
        "lm_head.weight": (10, 3),
    }
    params = {n: torch.nn.Parameter(torch.zeros(s)) for n, s in shapes.items()}
    names = {id(p): n for n, p in params.items()}
    groups = {
        "model.embed_tokens.weight": 0,
        "model.layers.*.mlp.up_proj.weight": 1,
        "lm_head.weight": 2,
    }
    own = {
        n: np.repeat([groups[n.replace(".0.", ".*.").replace(".1.", ".*.")]], p.numel())
        for n, p in params.items()
    }
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        own[n][8 * 3 :] = -1  # vocabulary of 8
    order = list(params.values())
    shapes_by_id = {id(p): tuple(p.shape) for p in order}
    if stage == 2:
        flat = np.concatenate(
            [own[names[id(p)]] for p in order] + [np.full(2, -2)]
        )  # 78 elements, padded to 80
        size = len(flat) // 2
        for rank in range(2):
            zero = SimpleNamespace(
                round_robin_bit16_groups=[order],
                partition_size=[size],
                single_partition_of_fp32_groups=[torch.zeros(size)],
            )
            (runs,) = _zero_flat_runs(zero, names, shapes_by_id, 8, dict(groups), rank).values()
            assert np.array_equal(_labels(runs, size), flat[rank * size : (rank + 1) * size])
    else:
        for p in order:
            p.partition_numel = lambda p=p: (p.numel() + 1) // 2
        for rank in range(2):
            want = []
            for p in order:
                k = p.partition_numel()
                part = np.full(k, -2)
                piece = own[names[id(p)]][rank * k : rank * k + k]
                part[: len(piece)] = piece
                want.append(part)
            want = np.concatenate(want)
            zero = SimpleNamespace(
                fp32_partitioned_groups_flat=[torch.zeros(len(want))],
                sub_group_to_group_id={0: 0},
                fp16_groups=[order],
            )
            (runs,) = _zero_flat_runs(zero, names, shapes_by_id, 8, dict(groups), rank).values()
            assert np.array_equal(_labels(runs, len(want)), want)


def test_deepspeed_config_from_flags_or_a_file():
    from megatron_soda.finetune.deepspeed_engine import deepspeed_config

    cfg = deepspeed_config(
        micro_batch_size=2,
        global_batch_size=64,
        world=4,
        zero_stage=3,
        offload_optimizer=True,
        offload_param=True,
        bf16=True,
        clip=1.0,
    )
    assert (
        cfg["train_micro_batch_size_per_gpu"],
        cfg["gradient_accumulation_steps"],
        cfg["train_batch_size"],
    ) == (2, 8, 64)
    zero = cfg["zero_optimization"]
    assert (
        zero["stage"] == 3
        and zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    )
    assert cfg["bf16"]["enabled"] and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_allow_untested_optimizer"] and cfg["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(ValueError, match="needs --zero-stage 3"):
        deepspeed_config(
            micro_batch_size=1,
            global_batch_size=4,
            world=1,
            zero_stage=2,
            offload_optimizer=True,
            offload_param=True,
            bf16=False,
            clip=1.0,
        )
    with pytest.raises(ValueError, match="not a multiple"):
        deepspeed_config(
            micro_batch_size=3,
            global_batch_size=64,
            world=1,
            zero_stage=2,
            offload_optimizer=False,
            offload_param=False,
            bf16=False,
            clip=1.0,
        )
    flags = dict(
        micro_batch_size=1,
        global_batch_size=8,
        world=2,
        zero_stage=3,
        offload_optimizer=True,
        offload_param=True,
        bf16=True,
        clip=1.0,
    )
    mine = {
        "zero_optimization": {"stage": 2},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": 0.5,
    }
    cfg = deepspeed_config(**flags, base=mine)
    assert cfg["zero_optimization"] == {"stage": 2} and cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.5 and "zero_allow_untested_optimizer" not in mine
    for bad, match in (
        ({"optimizer": {"type": "AdamW"}}, "optimizer"),
        ({"train_batch_size": 16}, "train_batch_size"),
    ):
        with pytest.raises(ValueError, match=match):
            deepspeed_config(**flags, base=bad)


def test_deepspeed_checkpoint_loads_never_run_code(tmp_path):
    """DeepSpeed's loader asks for torch.load(weights_only=False); under load_guard a planted
    payload in an optimizer-state file is refused and never runs."""
    pytest.importorskip("deepspeed")
    import torch
    from helpers_hostile import Payload

    from megatron_soda.finetune.deepspeed_engine import load_guard
    from megatron_soda.safe_loading import UnsafeContentError

    marker = tmp_path / "ran"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"x": Payload(str(marker))}}, path)
    with load_guard(), pytest.raises(UnsafeContentError, match="optim_states.pt"):
        torch.load(path, weights_only=False)
    assert not marker.exists()
    # what DeepSpeed's own state holds still loads
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save({"stage": ZeroStageEnum.weights, "t": torch.ones(2)}, tmp_path / "ok.pt")
    with load_guard():
        assert torch.load(tmp_path / "ok.pt", weights_only=False)["stage"] == ZeroStageEnum.weights
