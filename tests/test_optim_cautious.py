"""Cautious Adam with AdamC weight decay (megatron_soda.optim) against the authors' formulas,
written out independently here in numpy (Levanter's ``scale_by_cautious`` and
``CautiousConfig.build``, see the module docstring of megatron_soda/optim/cautious.py), and its
statistic groups: across tensors, across processes and across megatron's fused layouts."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from megatron_soda.optim import CautiousAdamC, GPTLayout, MaskStatistics, clip_runs, param_runs


def reference(params, grads, lrs, *, b1, b2, eps, wd, peak, groups, decayed):
    """Levanter's chain in float64: clip (here: none) -> scale_by_cautious -> add_decayed_weights
    (weight_decay * lr / peak) -> scale(-lr).  ``groups``: names whose mask shares one mean."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        u, c = {}, {}
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            u[k] = (m[k] / (1 - b1**t)) / (np.sqrt(v2[k] / (1 - b2**t)) + eps)
            c[k] = (g[k] * u[k]) > 0
        update = {}
        for names in groups:
            mean = sum(c[k].sum() for k in names) / sum(c[k].size for k in names)
            for k in names:
                update[k] = u[k] * c[k] / (mean + eps)
        for k in p:
            decay = wd * lr / peak if k in decayed else 0.0
            p[k] = p[k] - lr * (update[k] + decay * p[k])
    return p


def _random_problem(seed: int, steps: int):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,)), "n": rng.normal(size=(4,))}
    # gradients whose signs flip between steps, so the momentum often disagrees with them
    grads = [{k: rng.normal(size=v.shape) * (1 + 3 * (t % 2)) for k, v in params.items()} for t in range(steps)]
    return params, grads


def _run(params, grads, lrs, *, peak, stats_for=None, **hyper):
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    decayed = [t["w"], t["b"]]
    groups = [{"params": decayed, "weight_decay": hyper["weight_decay"]}, {"params": [t["n"]], "weight_decay": 0.0}]
    opt = CautiousAdamC(groups, lr=peak, max_lr=peak, betas=hyper["betas"], eps=hyper["eps"],
                        statistics=stats_for(t) if stats_for else None)
    for g, lr in zip(grads, lrs):
        for k, tensor in t.items():
            tensor.grad = torch.tensor(g[k], dtype=torch.float64)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return {k: v.numpy() for k, v in t.items()}, opt


HYPER = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
LRS = [0.0, 0.005, 0.01, 0.01, 0.006, 0.002]  # warmup from 0, peak, decay: lr / peak varies


def test_matches_the_authors_formulas_per_tensor():
    params, grads = _random_problem(0, len(LRS))
    got, opt = _run(params, grads, LRS, peak=0.01, **HYPER)
    want = reference(params, grads, LRS, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, peak=0.01,
                     groups=[["w"], ["b"], ["n"]], decayed={"w", "b"})
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14)
    assert all(g["step"] == len(LRS) for g in opt.param_groups)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == len(LRS)


def test_a_statistic_group_spans_tensors():
    """Levanter's leaves stack all layers: one mean over several tensors."""
    params, grads = _random_problem(1, len(LRS))

    def stats(t):
        return MaskStatistics(runs={id(t["w"]): ((0, 12, 0),), id(t["b"]): ((0, 5, 0),), id(t["n"]): ((0, 4, 1),)},
                              num_groups=2)

    got, _ = _run(params, grads, LRS, peak=0.01, stats_for=stats, **HYPER)
    want = reference(params, grads, LRS, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, peak=0.01,
                     groups=[["w", "b"], ["n"]], decayed={"w", "b"})
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14)


def test_differs_from_adam_where_the_signs_disagree():
    """Step 1 pushes the momentum up; step 2's gradient is negative on the first two elements:
    Adam still moves them along the momentum, Cautious leaves them and scales the rest up."""
    grads = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([-0.1, -0.1, 0.5, 0.5])]
    start = torch.tensor([0.5, -0.5, 0.25, -0.25])
    moved = {}
    for name in ("cautious", "adam"):
        p = start.clone().requires_grad_(False)
        opt = (CautiousAdamC([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8) if name == "cautious"
               else torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0))
        for g in grads:
            p.grad = g.clone()
            opt.step()
        moved[name] = p - start
    # step 1 is plain Adam (sign(u) = sign(g)) with mean(mask) = 1
    a, c = moved["adam"], moved["cautious"]
    assert torch.all(a < 0)  # Adam: the momentum wins everywhere
    one_step = -0.01 * torch.ones(4)
    torch.testing.assert_close(c[:2], one_step[:2], rtol=1e-6, atol=1e-9)  # second update masked
    assert torch.all(c[2:] < a[2:])  # the agreeing half gets 1 / mean = 2x Adam's step 2


def test_all_disagreeing_is_a_zero_update_and_padding_is_left_out():
    p = torch.tensor([1.0, 1.0, 0.0, 0.0])
    stats = MaskStatistics(runs={id(p): ((0, 2, 0), (2, 4, -1))}, num_groups=1)
    opt = CautiousAdamC([p], lr=0.1, betas=(0.9, 0.99), eps=1e-16, statistics=stats)
    p.grad = torch.tensor([1.0, 1.0, 0.0, 0.0])
    opt.step()
    # only the two used elements count: mean 1, update -lr (padding: no gradient, no update)
    torch.testing.assert_close(p, torch.tensor([0.9, 0.9, 0.0, 0.0]))
    p.grad = torch.tensor([-1e-3, -1e-3, 0.0, 0.0])
    opt.step()  # both disagree: mean 0, nothing moves, nothing is NaN
    torch.testing.assert_close(p, torch.tensor([0.9, 0.9, 0.0, 0.0]))


def test_resumes_from_its_state_dict():
    params, grads = _random_problem(2, 6)
    whole, _ = _run(params, grads, [0.01] * 6, peak=0.01, **HYPER)
    half, opt = _run(params, grads[:3], [0.01] * 3, peak=0.01, **HYPER)
    sd = opt.state_dict()
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in half.items()}
    again = CautiousAdamC([{"params": [t["w"], t["b"]], "weight_decay": 0.1}, {"params": [t["n"]], "weight_decay": 0.0}],
                          lr=0.01, betas=HYPER["betas"], eps=HYPER["eps"])
    again.load_state_dict(sd)
    for g in grads[3:]:
        for k, tensor in t.items():
            tensor.grad = torch.tensor(g[k], dtype=torch.float64)
        again.step()
    for k in params:
        np.testing.assert_allclose(t[k].numpy(), whole[k], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- a parameter cut across ranks
FULL = 10
CUT = 6  # rank 0 holds [0, 6), rank 1 [6, 10): after step 2 their mask means are 0 and 1, the whole's 0.4


def _grads():
    return [torch.ones(FULL), torch.cat([-0.1 * torch.ones(CUT), torch.ones(FULL - CUT)])]


def _sharded_worker(rank: int, store: str, out: str, reduce: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    lo, hi = (0, CUT) if rank == 0 else (CUT, FULL)
    p = torch.linspace(-1, 1, FULL, dtype=torch.float64)[lo:hi].clone()
    stats = MaskStatistics(runs={id(p): ((0, hi - lo, 0),)}, num_groups=1,
                           all_reduce=dist.all_reduce if reduce else None)
    opt = CautiousAdamC([p], lr=0.01, betas=(0.9, 0.99), eps=1e-16, weight_decay=0.1, statistics=stats)
    for g in _grads():
        p.grad = g[lo:hi].to(torch.float64)
        opt.step()
    torch.save(p, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("reduce", [True, False])
def test_a_parameter_cut_across_two_ranks_steps_like_the_whole(tmp_path, reduce):
    p = torch.linspace(-1, 1, FULL, dtype=torch.float64)
    opt = CautiousAdamC([p], lr=0.01, betas=(0.9, 0.99), eps=1e-16, weight_decay=0.1)
    for g in _grads():
        p.grad = g.to(torch.float64)
        opt.step()
    out = str(tmp_path / "shard")
    torch.multiprocessing.spawn(_sharded_worker, args=(str(tmp_path / "store"), out, reduce), nprocs=2)
    got = torch.cat([torch.load(f"{out}.{r}") for r in range(2)])
    os.remove(f"{out}.0")
    if reduce:
        torch.testing.assert_close(got, p, rtol=0, atol=1e-15)
    else:  # each shard's own mean: the test would notice a missing all-reduce
        assert (got - p).abs().max() > 1e-3


# ---------------------------------------------------------------- megatron's fused layouts
LAYOUT = dict(num_attention_heads=4, num_query_groups=2, head_dim=3, gated_linear_unit=True, vocab_size=10)


def _elements(name: str, shape: tuple[int, int], tp: int) -> list[list[str | None]]:
    """Per global row (in TP=1 order), the group of each rank's elements after reassembling."""
    rows, width = shape
    out = []
    for rank in range(tp):
        local = (rows // tp, width)
        labels: list[str | None] = [None] * (local[0] * width)
        for s, e, g in param_runs(name, local, GPTLayout(**LAYOUT, tensor_parallel_size=tp, tensor_parallel_rank=rank)):
            labels[s:e] = [g] * (e - s)
        out += [labels[r * width:(r + 1) * width] for r in range(local[0])]
    return out


def test_qkv_rows_are_split_into_q_k_v_groups_under_any_tensor_parallel_size():
    name = "module.module.decoder.layers.3.self_attention.linear_qkv.weight"
    rows = _elements(name, (2 * (2 + 2) * 3, 5), tp=1)  # 2 groups x (2 q heads + k + v) x head_dim 3
    base = "decoder.layers.*.self_attention.linear_qkv.weight"
    per_group = [base + ":q"] * 6 + [base + ":k"] * 3 + [base + ":v"] * 3
    assert [r[0] for r in rows] == per_group * 2 and all(len(set(r)) == 1 for r in rows)
    for tp in (2, 4):  # column parallel, also with fewer KV groups (2) than ranks (4)
        assert _elements(name, (24, 5), tp) == rows


def test_fc1_gate_up_and_the_padded_vocabulary():
    base = "decoder.layers.*.mlp.linear_fc1.weight"
    runs = param_runs("module.decoder.layers.0.mlp.linear_fc1.weight", (8, 2), GPTLayout(**LAYOUT))
    assert runs == [(0, 8, base + ":gate"), (8, 16, base + ":up")]
    # padded vocabulary 16 rows, tokenizer 10: rank 1 of 2 holds rows 8..15, of which 8 and 9 are used
    out = param_runs("module.output_layer.weight", (8, 3), GPTLayout(**LAYOUT, tensor_parallel_size=2,
                                                                      tensor_parallel_rank=1))
    assert out == [(0, 6, "output_layer.weight"), (6, 24, None)]
    norm = param_runs("module.decoder.layers.7.self_attention.q_layernorm.weight", (3,), GPTLayout(**LAYOUT))
    assert norm == [(0, 3, "decoder.layers.*.self_attention.q_layernorm.weight")]
    # distributed-optimizer shards of the 16-element fc1 tensor: elements [10, 16) and [4, 12)
    assert clip_runs(runs, 10, 16) == [(0, 6, base + ":up")]
    assert clip_runs(runs, 4, 12) == [(0, 4, base + ":gate"), (4, 8, base + ":up")]
