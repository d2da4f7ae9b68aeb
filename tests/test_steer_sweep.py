"""``steer sweep``: the grid's choice is made on the tune split only, guarded by NLL, and the
numbers it reports equal those of ``eval likelihood --steer`` on the same items.  Also the
review fixes: non-finite NLLs and scores, the sweep flags, untrusted vector / SAE / concept files
(each a ``ValueError`` naming the file, one line from every CLI) and SAE-Lens ``cfg.json``."""

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


# ------------------------------------------------------------------ review fixes (issue 16)

def test_nll_guard_refuses_non_finite_nll_and_nan_scores_are_never_chosen():
    inf, nan = math.inf, math.nan
    # (layer, alpha) -> tune measure; the baseline: score 0.5, NLL 1.0
    tune = {(0, 1.0): Measure(0.95, nan), (0, 2.0): Measure(nan, 1.0), (1, 1.0): Measure(0.9, inf),
            (1, 2.0): Measure(0.6, 1.2)}

    def measure_with(base):
        def measure(steer, split):
            return base if steer is None else tune[(steer.layer, steer.alpha)]
        return measure

    def make(layer, alpha):
        return Steering(torch.ones(4), layer, alpha)

    def allowed(res):
        return {(p.layer, p.alpha): p.allowed for p in res.grid}

    def guard(nll, base_nll, limit):  # the rule, restated: finite and within the limit
        return (limit is None or not math.isfinite(base_nll)
                or (math.isfinite(nll) and nll - base_nll <= limit))

    for base_nll, limit in [(1.0, 0.5), (1.0, None), (nan, 0.5), (inf, 0.5)]:
        res = sweep(measure_with(Measure(0.5, base_nll)), make, [0, 1], [1.0, 2.0], limit)
        assert allowed(res) == {k: guard(m.nll, base_nll, limit) for k, m in tune.items()}
        want = max((k for k, m in tune.items() if guard(m.nll, base_nll, limit) and m.score == m.score
                    and m.score > 0.5), key=lambda k: tune[k].score)
        assert (res.best_layer, res.best_alpha) == want
        assert math.isfinite(res.best_tune.score)
    # with a finite baseline NLL, NaN and inf NLLs are refused: (1, 2.0) wins
    assert (sweep(measure_with(Measure(0.5, 1.0)), make, [0, 1], [1.0, 2.0], 0.5).best_layer,) == (1,)
    # a NaN baseline score is beaten by nothing
    assert sweep(measure_with(Measure(nan, 1.0)), make, [0, 1], [1.0, 2.0]).best_layer is None


@pytest.mark.parametrize("flags", [["--alphas", "nan"], ["--alphas", "1,inf"], ["--alphas", ","],
                                   ["--alphas", "1", "--layers", ","], ["--alphas", "1", "--batch-size", "0"],
                                   ["--alphas", "1", "--batch-size", "-2"]])
def test_sweep_flags_refuse_empty_non_finite_and_non_positive(flags, capsys):
    from megatron_soda.steer.cli import build_parser

    base = ["sweep", "--model", "m", "--steer", "v", "--data", "d", "--task", "t", "--output", "o"]
    args = build_parser().parse_args([*base, "--alphas", "0.5,-1", "--layers", "2,3", "--batch-size", "1"])
    assert (args.alphas, args.layers, args.batch_size) == ([0.5, -1.0], [2, 3], 1)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*base, *flags])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "--model", "m", "--concepts", "c", "--method", "probe",
                                   "--output", "o", "--layers", " , "])


def _vector_file(path, hidden=8, meta=None, tensors=None, drop=(), raw_meta=None):
    """A steering-vector file written by hand: the metadata ``save_vectors`` writes, edited."""
    from safetensors.torch import save_file

    from megatron_soda.models.steering import FORMAT, META_KEY, VERSION

    good = {"format": FORMAT, "version": VERSION, "method": "mean_shift", "concept": "c",
            "median_residual_norm": {"1": 2.0}, "text_format": "soda", "model_fingerprint": "f"}
    good = {k: v for k, v in {**good, **(meta or {})}.items() if k not in drop}
    tensors = {"layer.1": torch.ones(hidden)} if tensors is None else tensors
    save_file(tensors, str(path), metadata={META_KEY: raw_meta if raw_meta is not None else json.dumps(good)})
    return str(path)


def test_untrusted_vector_files_raise_value_error_naming_the_file(tmp_path):
    from megatron_soda.models.steering import read_layer, read_vector_file
    from megatron_soda.steer.vectors import load_vectors

    ok = _vector_file(tmp_path / "ok.safetensors")
    layer, vec, norm = read_layer(ok, None)
    assert (layer, norm) == (1, 2.0) and torch.equal(vec, torch.ones(8))
    assert load_vectors(ok).median_norm == {1: 2.0}
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(ok, "rb").read()[:-10])
    nan = torch.ones(8)
    nan[:] = math.nan
    bad = {
        "truncated": str(truncated),
        "no method": _vector_file(tmp_path / "a.st", drop=("method",)),
        "no median norm": _vector_file(tmp_path / "b.st", drop=("median_residual_norm",)),
        "json list": _vector_file(tmp_path / "c.st", raw_meta="[1, 2]"),
        "not json": _vector_file(tmp_path / "d.st", raw_meta="{oops"),
        "text norm": _vector_file(tmp_path / "e.st", meta={"median_residual_norm": {"1": "big"}}),
        "norm of a non-layer": _vector_file(tmp_path / "f.st", meta={"median_residual_norm": {"x": 1.0}}),
        "2-d": _vector_file(tmp_path / "g.st", tensors={"layer.1": torch.ones(2, 4)}),
        "other name": _vector_file(tmp_path / "h.st", tensors={"layer.1": torch.ones(8), "bias": torch.ones(8)}),
        "two sizes": _vector_file(tmp_path / "i.st", tensors={"layer.1": torch.ones(8), "layer.2": torch.ones(9)}),
        "all nan": _vector_file(tmp_path / "j.st", tensors={"layer.1": torch.ones(8), "layer.3": nan}),
        "method not a string": _vector_file(tmp_path / "k.st", meta={"method": 3}),
    }
    for what, path in bad.items():
        for read in (read_vector_file, load_vectors, lambda p: read_layer(p, 1)):
            with pytest.raises(ValueError, match=f"^{path}: ") as e:
                read(path)
            assert "\n" not in str(e.value), what
    with pytest.raises(ValueError, match="layer 3"):
        read_vector_file(bad["all nan"])
    with pytest.raises(ValueError, match="metadata is a JSON list, not an object"):
        read_vector_file(bad["json list"])



def test_steer_eval_and_generate_clis_print_one_line_for_a_bad_vector_file(tiny_soda, tmp_path, capsys,
                                                                          one_torch_thread):
    from megatron_soda.eval.cli import main as eval_main
    from megatron_soda.generate.cli import main as generate_main
    from megatron_soda.steer.cli import main as steer_main
    from megatron_soda.steer.vectors import read_metadata

    hidden = json.load(open(f"{tiny_soda.hf}/config.json"))["hidden_size"]
    side = int(math.isqrt(hidden))
    assert side * side == hidden  # a [side, side] tensor has the hidden size's numel
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(_vector_file(tmp_path / "ok.st", hidden), "rb").read()[:-16])
    bad = {"truncated": str(truncated),
           "no method": _vector_file(tmp_path / "a.st", hidden, drop=("method",)),
           "json list": _vector_file(tmp_path / "b.st", hidden, raw_meta="[]"),
           "square": _vector_file(tmp_path / "c.st", tensors={"layer.1": torch.ones(side, side)}),
           "all nan": _vector_file(tmp_path / "d.st", tensors={"layer.1": torch.full((hidden,), math.nan)})}
    assert read_metadata(str(tmp_path / "ok.st"))["method"] == "mean_shift"  # the good one reads
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"i{k}", "positive": {"text": s}, "negative": {"text": s[::-1]}})
                             + "\n" for k, s in enumerate(["To be or not", "that is the question"])))
    prep = str(tmp_path / "prep")
    assert eval_main(["prepare", "--model", tiny_soda.hf, "--task", f"mine={pairs}:jsonl", "--output", prep]) == 0
    capsys.readouterr()
    runs = {"eval likelihood": lambda v: eval_main(["likelihood", "--model", tiny_soda.hf, "--prepared", prep,
                                                    "--output", str(tmp_path / "r.json"), "--steer", v,
                                                    "--steer-alpha", "1"]),
            "steer sweep": lambda v: steer_main(["sweep", "--model", tiny_soda.hf, "--steer", v, "--data", prep,
                                                 "--task", "mine", "--alphas", "1", "--output",
                                                 str(tmp_path / "s.json")]),
            "generate": lambda v: generate_main(["--model", tiny_soda.hf, "--codec", "random:tiny:0", "--mode",
                                                 "tts", "--text", "to be", "--output-json", str(tmp_path / "g.json"),
                                                 "--steer", v, "--steer-alpha", "1", "--device", "cpu"])}
    for cli, run in runs.items():
        for what, path in bad.items() if cli == "eval likelihood" else list(bad.items())[::4]:
            assert run(path) != 0, (cli, what)
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert path in err and "Traceback" not in err, (cli, what, err)


def test_concept_files_several_jsonl_concepts_non_pairs_and_bad_utf8(tmp_path):
    from megatron_soda.steer.concepts import read_concepts

    jl = tmp_path / "c.jsonl"
    rows = [("a", "To be or not", "not"), ("b", "that is the question", "question"), ("a", "not me", "not")]
    jl.write_text("".join(json.dumps({"concept": c, "sentence": s, "anchor": w}) + "\n" for c, s, w in rows))
    with pytest.raises(ValueError, match=r"holds concepts a, b: choose one with --concept"):
        read_concepts(str(jl))
    name, items, errors = read_concepts(str(jl), "a")
    assert name == "a" and [i.sentence for i in items] == [s for c, s, _ in rows if c == "a"] and not errors
    py = tmp_path / "c.py"
    py.write_text('sentences = {\n    "neg": [\n        ("To be or not", "not"),\n        ("to be", 3),\n'
                  '        "just a string",\n        ("not me", "not"),\n    ],\n}\n')
    lines = py.read_text().splitlines()
    name, items, errors = read_concepts(str(py))
    assert name == "neg" and [i.sentence for i in items] == ["To be or not", "not me"]
    assert [e.where for e in errors] == [f"{py}:{n}" for n, line in enumerate(lines, 1)
                                         if line.strip() in ('("to be", 3),', '"just a string",')]
    for path in (tmp_path / "bad.py", tmp_path / "bad.jsonl"):
        path.write_bytes(b'{"sentence": "to be \xff", "anchor": "be"}\n')
        with pytest.raises(ValueError, match=f"^{path}: not UTF-8"):
            read_concepts(str(path))


def _random_sae(d=6, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    from megatron_soda.steer.sae import SparseAutoencoder

    return SparseAutoencoder(torch.randn(d, n, generator=g), torch.randn(n, generator=g),
                             torch.randn(n, d, generator=g), torch.randn(d, generator=g), k=3,
                             threshold=torch.rand(n, generator=g))


def test_load_sae_honours_sae_lens_cfg_json_and_refuses_bad_files(tmp_path):
    from megatron_soda.steer.sae import load_sae, save_sae

    sae = _random_sae()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    W, b, bd, thr = (sae.W_enc.numpy(), sae.b_enc.numpy(), sae.b_dec.numpy(), sae.threshold.numpy())
    xn = x.numpy()

    def topk(a, k):  # numpy: keep the k largest of each row
        keep = np.argsort(-a, axis=1)[:, :k]
        out = np.zeros_like(a)
        np.put_along_axis(out, keep, np.take_along_axis(a, keep, 1), 1)
        return out

    cases = {  # cfg.json -> the activations SAE-Lens' encode gives
        None: (xn - bd) @ W + b,  # no cfg.json: our own file, JumpReLU from the threshold tensor
        '{"architecture": "jumprelu", "apply_b_dec_to_input": false}': xn @ W + b,
        '{"architecture": "standard", "apply_b_dec_to_input": true}': (xn - bd) @ W + b,
        '{"architecture": "topk", "k": 2, "apply_b_dec_to_input": false}': xn @ W + b,
        '{"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}}':
            (xn - bd) @ W + b,
    }
    for i, (cfg, pre) in enumerate(cases.items()):
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        save_sae(str(folder / "sae_weights.safetensors"), sae)
        if cfg is None:
            want = np.maximum(pre, 0) * (pre > thr)
        else:
            (folder / "cfg.json").write_text(cfg)
            c = json.loads(cfg)
            k = c.get("k", c.get("activation_fn_kwargs", {}).get("k"))
            want = (np.maximum(pre, 0) * (pre > thr) if c["architecture"] == "jumprelu"
                    else topk(np.maximum(pre, 0), k) if k else np.maximum(pre, 0))
        got = load_sae(str(folder / "sae_weights.safetensors")).encode(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(cfg))
    refused = ['{"architecture": "gated"}', '[1]', '{"architecture": "topk"}', '{oops',
               '{"normalize_activations": "constant_norm_rescale"}']
    for i, cfg in enumerate(refused):
        folder = tmp_path / f"r{i}"
        folder.mkdir()
        save_sae(str(folder / "sae.safetensors"), sae)
        (folder / "cfg.json").write_text(cfg)
        with pytest.raises(ValueError, match=str(folder)):
            load_sae(str(folder / "sae.safetensors"))
    from safetensors.torch import save_file

    good = str(tmp_path / "s0" / "sae_weights.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(open(good, "rb").read()[:-12])
    flat = str(tmp_path / "flat.safetensors")
    save_file({"W_enc": torch.ones(60), "b_enc": torch.ones(10), "W_dec": torch.ones(10, 6),
               "b_dec": torch.ones(6)}, flat)
    badk = str(tmp_path / "k.safetensors")
    save_file({n: getattr(sae, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}, badk, metadata={"k": "x"})
    for path in (str(truncated), flat, badk):
        with pytest.raises(ValueError, match=f"^{path}: "):
            load_sae(path)
