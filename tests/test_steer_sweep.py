"""``steer sweep``: the grid's choice is made on the tune split only, guarded by NLL, and the
numbers it reports equal those of ``eval likelihood --steer`` on the same items."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megatron_soda.steer.hooks import Steering
from megatron_soda.steer.sweep import Measure, split_items, sweep


def test_choice_uses_the_tune_split_the_guard_and_reports_held_out():
    # a measure whose held-out numbers disagree with the tune ones: the choice must follow tune
    tune = {(0, 1.0): (0.60, 1.0), (0, 2.0): (0.70, 1.4), (1, 1.0): (0.70, 1.1), (1, 2.0): (0.90, 3.0)}
    heldout = {(0, 1.0): 0.9, (0, 2.0): 0.2, (1, 1.0): 0.55, (1, 2.0): 0.95}
    calls = []

    def measure(steer, split):
        calls.append((None if steer is None else (steer.layer, steer.alpha), split))
        if steer is None:
            return Measure(0.5, 1.0) if split == "tune" else Measure(0.4, 1.0)
        key = (steer.layer, steer.alpha)
        return Measure(*tune[key]) if split == "tune" else Measure(heldout[key])

    def make(layer, alpha):
        return Steering(torch.ones(4), layer, alpha)

    res = sweep(measure, make, [0, 1], [0.0, 1.0, 2.0], max_nll_increase=0.5)
    # (1, 2.0) has the best tune score but breaks the guard; (0, 2.0) and (1, 1.0) tie at 0.70:
    # the smaller alpha wins
    assert (res.best_layer, res.best_alpha) == (1, 1.0)
    assert res.best_heldout.score == 0.55 and res.baseline_heldout.score == 0.4
    assert res.heldout_gain == pytest.approx(0.15)
    assert [p.allowed for p in res.grid] == [True, True, True, False]
    # alpha 0 measured once per split as no steering; only the choice is measured held out
    assert calls.count((None, "tune")) == 1 and calls.count((None, "heldout")) == 1
    assert [c for c in calls if c[1] == "heldout" and c[0] is not None] == [((1, 1.0), "heldout")]
    # without the guard the best tune score wins
    assert (sweep(measure, make, [0, 1], [1.0, 2.0]).best_layer,) == (1,)
    # nothing beats alpha 0 on tune: alpha 0 is the choice
    worse = sweep(lambda s, split: Measure(0.5 if s is None else 0.3), make, [0], [1.0])
    assert worse.best_layer is None and worse.best_alpha == 0.0 and worse.heldout_gain == 0.0


def test_split_is_a_seeded_partition():
    s = split_items(10, 3, seed=5)
    assert len(s["heldout"]) == 3 and len(s["tune"]) == 7
    assert sorted(np.concatenate([s["tune"], s["heldout"]]).tolist()) == list(range(10))
    assert np.array_equal(split_items(10, 3, seed=5)["heldout"], s["heldout"])
    assert not np.array_equal(split_items(10, 3, seed=6)["heldout"], s["heldout"])
    assert len(split_items(9)["heldout"]) == 4
    with pytest.raises(ValueError, match="both splits"):
        split_items(4, 4)


def test_sweep_cli_numbers_equal_eval_likelihood_with_steering(tiny_soda, tmp_path, one_torch_thread):
    from megatron_soda.eval.cli import main as eval_main
    from megatron_soda.steer.cli import main as steer_main

    words = ["To be or not to be", "that is the question", "all the world is a stage",
             "thou art more lovely", "the men and women are players", "Shall I compare thee",
             "a summer day is more temperate", "and all the men merely players",
             "To be or not", "the question is all", "merely players on a stage", "Shall I not be"]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"i{k}", "positive": {"text": s},
                                         "negative": {"text": " ".join(s.split()[::-1])}}) + "\n"
                             for k, s in enumerate(words)))
    prep = str(tmp_path / "prep")
    assert eval_main(["prepare", "--model", tiny_soda.hf, "--task", f"mine={pairs}:jsonl",
                      "--output", prep]) == 0
    concepts = tmp_path / "c.jsonl"
    concepts.write_text("".join(json.dumps({"sentence": s, "anchor": s.split()[1]}) + "\n" for s in words))
    vec = str(tmp_path / "v.safetensors")
    assert steer_main(["extract", "--model", tiny_soda.hf, "--concepts", str(concepts), "--method",
                       "mean_shift", "--output", vec, "--layers", "1,2"]) == 0
    out = tmp_path / "sweep.json"
    assert steer_main(["sweep", "--model", tiny_soda.hf, "--steer", vec, "--data", prep, "--task", "mine",
                       "--alphas", "0,2,6", "--alpha-units", "norm", "--positions", "text",
                       "--heldout", "5", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert len(rec["tune_ids"]) == 7 and len(rec["heldout_ids"]) == 5
    assert {(p["layer"], p["alpha"]) for p in rec["grid"]} == {(1, 2.0), (1, 6.0), (2, 2.0), (2, 6.0)}

    def items(*flags):
        dest = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        rows = tmp_path / (dest.name + ".items")
        assert eval_main(["likelihood", "--model", tiny_soda.hf, "--prepared", prep, "--tasks", "mine",
                          "--output", str(dest), "--items", str(rows), *flags]) == 0
        lines = (rows / "mine.items.jsonl").read_text().splitlines()
        return {r["id"]: r for r in map(json.loads, lines)}

    def accuracy(rows, ids):
        return sum(rows[i]["correct"] for i in ids) / len(ids)

    plain = items()
    assert rec["baseline"]["tune"]["score"] == pytest.approx(accuracy(plain, rec["tune_ids"]))
    assert rec["baseline"]["heldout"]["score"] == pytest.approx(accuracy(plain, rec["heldout_ids"]))
    for p in rec["grid"]:  # every tune number, recomputed through the evaluator's own steering
        rows = items("--steer", vec, "--steer-layer", str(p["layer"]), "--steer-alpha", str(p["alpha"]),
                     "--steer-alpha-units", "norm", "--steer-positions", "text")
        assert p["score"] == pytest.approx(accuracy(rows, rec["tune_ids"]))
        if (p["layer"], p["alpha"]) == (rec["best"]["layer"], rec["best"]["alpha"]):
            assert rec["best"]["heldout"]["score"] == pytest.approx(accuracy(rows, rec["heldout_ids"]))
    best_tune = max(p["score"] for p in rec["grid"])
    if best_tune > rec["baseline"]["tune"]["score"]:
        assert rec["best"]["tune"]["score"] == best_tune
    else:
        assert rec["best"]["layer"] is None
    assert all(math.isfinite(p["nll"]) for p in rec["grid"])
    # the damage measure: mean per-token NLL of the tune split's scored tokens, from full logits
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.tasks.prepared import read_prepared
    from megatron_soda.tasks.scoring import masked_sum, token_logprobs

    loaded = load_model(tiny_soda.hf)
    task = read_prepared(prep, loaded.tokenizer, tasks=["mine"])["mine"]
    total = count = 0.0
    for it in task.items:
        if it.id in rec["tune_ids"]:
            for seq in (it.positive, it.negative):
                ids = torch.from_numpy(seq.ids)[None]
                with torch.no_grad():
                    s, c = masked_sum(token_logprobs(loaded.model(ids).logits, ids),
                                      torch.from_numpy(seq.scored)[None])
                total, count = total + float(s), count + float(c)
    assert rec["baseline"]["tune"]["nll"] == pytest.approx(-total / count, rel=1e-6)
    # the guard: nothing may raise the NLL, so only settings that lower it can be chosen
    guarded = tmp_path / "guarded.json"
    assert steer_main(["sweep", "--model", tiny_soda.hf, "--steer", vec, "--data", prep, "--task", "mine",
                       "--alphas", "2,6", "--alpha-units", "norm", "--positions", "text", "--heldout", "5",
                       "--max-nll-increase", "0", "--output", str(guarded)]) == 0
    g = json.loads(guarded.read_text())
    base_nll = g["baseline"]["tune"]["nll"]
    assert [p["allowed"] for p in g["grid"]] == [p["nll"] <= base_nll for p in g["grid"]]
    assert any(not p["allowed"] for p in g["grid"])
