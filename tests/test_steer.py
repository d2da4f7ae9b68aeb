"""Steering (megatron_soda/steer): each extraction method against an independent computation,
the hook against a manual layer-by-layer forward, alpha 0 identity, prefill vs all scope in
KV-cache decoding, vector files, and the CLI flags in `steer extract` / `eval pairs`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from megatron_soda.steer import extract as methods
from megatron_soda.steer.activations import collect, encode_sentence
from megatron_soda.steer.concepts import ConceptItem, read_concepts
from megatron_soda.steer.hooks import Steering, position_mask, steering
from megatron_soda.steer.vectors import (
    SteeringVectors,
    load_vectors,
    model_fingerprint,
    save_vectors,
)

# words the test BPE knows (trained on three Shakespeare lines), anchors mid-sentence
SENTENCES = [
    ("To be or not to be", "not"), ("that is not the question", "not"),
    ("all the world is not a stage", "not"), ("thou art not more lovely", "not"),
    ("the men and women are not players", "not"), ("Shall I not compare thee", "not"),
    ("a summer day is not more temperate", "not"), ("and all the men merely players", "merely"),
]


@pytest.fixture(scope="module")
def tiny(tiny_soda, one_torch_thread):
    from megatron_soda.convert.in_memory import load_model

    loaded = load_model(tiny_soda.hf)
    loaded.info["hf_dir"] = tiny_soda.hf
    return loaded


def _items():
    return [ConceptItem(s, a, f"t:{i}") for i, (s, a) in enumerate(SENTENCES)]


def _anchor_positions_by_token_match(tok, sentence, anchor):
    """The authors' rule (get_features_mean_shift.py lines 46-59): find the ids of ' '+anchor."""
    ids = tok.encode_text(sentence)
    target = tok.encode_text(" " + anchor)
    hits = set()
    for i in range(len(ids) - len(target) + 1):
        if ids[i: i + len(target)] == target:
            hits.update(range(i, i + len(target)))
    return ids, sorted(hits)


def _manual_states(model, ids):
    """The output of every decoder block, from a hand-written pass over the layers."""
    states = []
    _manual_logits(model, ids, -1, 0, keep=states)
    return states


def _manual_logits(model, ids, layer, add, keep=None):
    """Logits from a hand-written pass over the decoder layers, ``add`` [B, T, H] added to the
    output of ``layer``."""
    from transformers.masking_utils import create_causal_mask

    m = model.model
    h = m.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    pe = m.rotary_emb(h, pos)
    mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=None,
                              cache=None, position_ids=pos)
    for i, block in enumerate(m.layers):
        h = block(h, attention_mask=mask, position_embeddings=pe, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
        if i == layer:
            h = h + add
        if keep is not None:
            keep.append(h)
    return model.lm_head(m.norm(h))


def _mixed_ids(tok, seed=0):
    lay = tok.layout
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2048, (lay.num_codebooks, 3))
    return torch.tensor([[lay.bos_id, lay.text_start_id, *tok.encode_text("to be or not"),
                          lay.text_end_id, lay.audio_start_id, *lay.codes_to_ids(codes).tolist(),
                          lay.audio_end_id]])


# ----------------------------------------------------------------------------- concepts

def test_concept_files_paper_format_and_jsonl(tmp_path):
    marker = tmp_path / "executed"
    py = tmp_path / "taxonomy.py"
    py.write_text(f"open({str(marker)!r}, 'w')\n"
                  "def f():\n    sentences = {\n"
                  "        'negation': [\n            ('He did not go', 'not'),\n"
                  "            ('She never eats meat', 'always'),\n        ],\n"
                  "        'counting': [('three cats', 'three')],\n    }\n")
    with pytest.raises(ValueError, match="choose one with --concept"):
        read_concepts(str(py))
    name, items, errors = read_concepts(str(py), "negation")
    assert not marker.exists()  # read, never executed
    assert name == "negation" and [(i.sentence, i.anchor) for i in items] == [("He did not go", "not")]
    assert len(errors) == 1 and "'always'" in str(errors[0]) and str(errors[0]).startswith(f"{py}:6")
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"sentence": "a cat sat", "anchor": "cat"}\n{"sentence": "x"}\n'
                  '{"sentence": "category", "anchor": "cat"}\n')
    _, items, errors = read_concepts(str(jl))
    assert [i.anchor for i in items] == ["cat"]
    assert [e.where for e in errors] == [f"{jl}:2", f"{jl}:3"]  # missing key; not a whole word


def test_anchor_positions_match_the_authors_token_matching(tiny):
    tok = tiny.tokenizer
    for item in _items():
        ids, hits = _anchor_positions_by_token_match(tok, item.sentence, item.anchor)
        for fmt, head in (("soda", 2), ("plain", 1)):
            enc = encode_sentence(tok, item, fmt)
            assert enc.ids[0] == tok.layout.bos_id
            assert enc.ids[head: head + len(ids)].tolist() == ids
            assert np.flatnonzero(enc.anchor).tolist() == [head + h for h in hits]
            assert enc.counted.sum() == len(ids)  # BOS and markers excluded


# ----------------------------------------------------------------------------- methods

def test_mean_shift_and_median_norm_equal_plain_torch(tiny):
    model, tok = tiny.model, tiny.tokenizer
    acts = collect(model, tok, _items(), fmt="soda")
    got = methods.mean_shift(acts)
    n_layers = model.config.num_hidden_layers
    anchor = {layer: [] for layer in range(n_layers)}
    other = {layer: [] for layer in range(n_layers)}
    lay = tok.layout
    for item in _items():
        ids, hits = _anchor_positions_by_token_match(tok, item.sentence, item.anchor)
        full = [lay.bos_id, lay.text_start_id, *ids, lay.text_end_id]
        with torch.no_grad():  # every block's raw output, the last one included (not final-normed)
            hs = _manual_states(model, torch.tensor([full]))
        for layer in range(n_layers):
            for j in range(len(ids)):
                (anchor if j in hits else other)[layer].append(hs[layer][0, 2 + j])
    for layer in range(n_layers):
        want = torch.stack(anchor[layer]).mean(0) - torch.stack(other[layer]).mean(0)
        torch.testing.assert_close(got[layer], want, rtol=1e-5, atol=1e-6)
        norms = torch.stack(anchor[layer] + other[layer]).norm(dim=-1)
        assert acts.median_norm[layer] == pytest.approx(float(norms.median()), rel=1e-6)


def test_probe_equals_sklearn_pipeline(tiny):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    assert sklearn
    acts = collect(tiny.model, tiny.tokenizer, _items(), layers=[1, 3])
    got = methods.probe(acts, solver="newton")
    sgd = methods.probe(acts, solver="sgd", seed=0)
    y = acts.anchor.numpy().astype(int)
    for layer, x in acts.states.items():
        x = x.double().numpy()
        n = min(max(acts.n_sentences // 2, 10), len(x) - 1, x.shape[1])
        p = PCA(n_components=n).fit(x)
        lr = LogisticRegression(fit_intercept=False, C=1.0, tol=1e-10, max_iter=10000)
        lr.fit(p.transform(x), y)
        want = p.components_.T @ lr.coef_[0]
        want /= np.linalg.norm(want)
        assert float(np.dot(got[layer].double().numpy(), want)) > 0.9999
        assert float(got[layer].norm()) == pytest.approx(1.0, abs=1e-6)
        # the authors' SGD probe: unit norm, reproducible, and it separates anchors from the rest
        assert float(sgd[layer].norm()) == pytest.approx(1.0, abs=1e-6)
        scores = x @ sgd[layer].double().numpy()
        assert scores[y == 1].mean() > scores[y == 0].mean()
    again = methods.probe(acts, solver="sgd", seed=0)
    assert all(torch.equal(again[k], sgd[k]) for k in sgd)


def test_sae_selection_and_direction_follow_the_authors_ranking(tiny):
    from megatron_soda.steer.sae import SparseAutoencoder, load_sae, save_sae, train_sae

    acts = collect(tiny.model, tiny.tokenizer, _items(), layers=[2])
    x = acts.states[2]
    d, n = x.shape[1], 12
    g = torch.Generator().manual_seed(1)
    # features 3 and 7 read the anchor direction (7 weaker); the rest are shut by their bias
    ms = methods.mean_shift(acts)[2]
    w_enc = torch.randn(d, n, generator=g) * 0.01
    w_enc[:, 3], w_enc[:, 7] = ms / ms.norm() ** 2 * 4, ms / ms.norm() ** 2 * 2
    centre = x[~acts.anchor].mean(0)
    b_enc = torch.full((n,), -100.0)
    b_enc[3] = b_enc[7] = -float(centre @ w_enc[:, 3]) - 1.0
    b_enc[7] = -float(centre @ w_enc[:, 7]) - 1.0
    w_dec = torch.randn(n, d, generator=g)
    sae = SparseAutoencoder(w_enc, b_enc, w_dec, torch.zeros(d))
    codes = sae.encode(x)
    # the authors' rule, recomputed: per sentence rank features by max activation at anchors
    score, count = {}, {}
    for k in acts.sentence.unique().tolist():
        best = codes[(acts.sentence == k) & acts.anchor].max(0).values
        ranked = [i for i in torch.argsort(best, descending=True).tolist() if best[i] > 0][:20]
        for r, f in enumerate(ranked, 1):
            score[f] = score.get(f, 0) + 1 - (r - 1) / len(ranked)
            count[f] = count.get(f, 0) + 1
    want_feats = sorted((f for f in score if count[f] >= 2), key=lambda f: -score[f])[:16]
    assert set(want_feats) == {3, 7}
    vecs, _, feats = methods.sae(acts, 2, trained=sae)
    assert feats == want_feats
    want = w_dec[want_feats].mean(0)
    torch.testing.assert_close(vecs[2], want / want.norm())
    # a trained SAE: reconstructs better than the mean, reproducible, survives a file round trip
    t1, t2 = train_sae(x, steps=200, seed=4), train_sae(x, steps=200, seed=4)
    assert torch.equal(t1.W_dec, t2.W_dec)
    err = (t1.decode(t1.encode(x)) - x).pow(2).sum(-1).mean()
    assert err < 0.5 * (x - x.mean(0)).pow(2).sum(-1).mean()
    path = os.path.join(os.path.dirname(tiny.info["hf_dir"]), "sae.safetensors")
    save_sae(path, t1)
    assert torch.equal(load_sae(path).encode(x), t1.encode(x))


def test_sae_ranking_rule_on_a_hand_computed_table():
    # 3 sentences x 4 features, one anchor token each; expected values worked out by hand:
    # s0 ranks f0,f1,f2 (weights 1, 2/3, 1/3); s1 ranks f1,f2 (1, 1/2); s2 ranks f3 (1)
    codes = torch.tensor([[5.0, 4, 3, 0], [0, 0, 0, 0], [0, 5, 4, 0], [0, 0, 0, 9]])
    anchor = torch.tensor([True, False, True, True])
    sentence = torch.tensor([0, 0, 1, 2])
    # f1: 5/3, f2: 5/6 (both in 2 sentences); f0, f3 in one sentence only
    assert methods.select_sae_features(codes, anchor, sentence) == [1, 2]
    assert methods.select_sae_features(codes, anchor, sentence, min_count=1) == [1, 0, 3, 2]
    # top 2 per sentence: s0 ranks f0, f1 (1, 1/2): f1 = 3/2 is the only feature seen twice
    assert methods.select_sae_features(codes, anchor, sentence, top_per_sentence=2) == [1]
    assert methods.select_sae_features(codes, anchor, sentence, min_count=1, top_n=2) == [1, 0]
    # weights fall linearly with rank (not 1/rank): f1 ranks 2 and 2 (3/4 + 3/4) and beats
    # f0 ranked 1 and 4 (1 + 1/4); f2 ranks 3 and 1 (1/2 + 1) ties f1 and comes after it
    codes = torch.tensor([[4.0, 3, 2, 1], [1, 3, 4, 2]])
    two = torch.tensor([True, True])
    assert methods.select_sae_features(codes, two, torch.tensor([0, 1])) == [1, 2, 0, 3]


# ----------------------------------------------------------------------------- hooks

@pytest.mark.parametrize("positions", ["audio", "text", "both"])
def test_hook_adds_the_vector_at_exactly_the_chosen_positions(tiny, positions):
    model, lay = tiny.model, tiny.tokenizer.layout
    ids = _mixed_ids(tiny.tokenizer)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    layer, alpha = 1, 3.0
    kinds = {"audio": ids >= lay.audio_offset,
             "text": (ids < lay.base_vocab_size) & (ids != lay.bos_id) & (ids != lay.eos_id)}
    sel = kinds["audio"] | kinds["text"] if positions == "both" else kinds[positions]
    assert torch.equal(position_mask(ids, lay, positions), sel)
    assert not sel[0, [0, 1]].any() and not sel[0, -1]  # BOS and markers never
    with torch.no_grad():
        with steering(model, lay, Steering(v, layer, alpha, positions)):
            out = model(ids, output_hidden_states=True)
            got = out.logits
        unsteered = model(ids, output_hidden_states=True).hidden_states[layer + 1]
        # output_hidden_states reports the steered residual of the layer
        torch.testing.assert_close(out.hidden_states[layer + 1], unsteered + sel[..., None] * (alpha * v))
        want = _manual_logits(model, ids, layer, sel[..., None] * (alpha * v))
        plain = _manual_logits(model, ids, layer, torch.zeros(1))
        base = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(base, plain, rtol=1e-4, atol=1e-5)
    first = int(sel[0].nonzero()[0])
    assert torch.equal(got[0, :first], base[0, :first])  # causal: before the first steered position
    assert (got[0, first:] - base[0, first:]).abs().max() > 1e-3


def test_alpha_zero_is_bit_identical_for_logits_and_generation(tiny):
    from megatron_soda.generate import prompts
    from megatron_soda.generate.engine import generate
    from megatron_soda.generate.settings import SamplingSettings

    model, tok = tiny.model, tiny.tokenizer
    ids = _mixed_ids(tok)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 5
    rng = np.random.default_rng(0)
    ps = [prompts.continue_prompt(tok, rng.integers(0, 2048, (tok.layout.num_codebooks, 3))),
          prompts.tts_prompt(tok, "to be or not")]
    s = SamplingSettings(temperature=0, max_new_tokens=16, repetition_ngram=0, silence_frames=0)
    hooks = lambda: (len(model.model._forward_pre_hooks),  # noqa: E731
                     len(model.model.layers[2]._forward_hooks))
    before = hooks()
    with torch.no_grad():
        base = model(ids).logits
        base_gen = generate(model, tok, ps, s, stop_at="eos")
        with steering(model, tok.layout, Steering(v, 2, 0.0, "both", "all")):
            assert hooks() == before  # alpha 0 registers nothing
            zero = model(ids).logits
            zero_gen = generate(model, tok, ps, s, stop_at="eos")
        with steering(model, tok.layout, Steering(v, 2, 4.0, "both", "all")):
            some = model(ids).logits
            some_gen = generate(model, tok, ps, s, stop_at="eos")
    assert torch.equal(zero, base)
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(zero_gen, base_gen))
    assert not torch.equal(some, base)
    assert any(not np.array_equal(a.token_ids, b.token_ids) for a, b in zip(some_gen, base_gen))
    assert hooks() == before  # removed on exit


@pytest.mark.parametrize("scope", ["prefill", "all"])
def test_scope_prefill_steers_prompt_only_all_steers_generated_tokens(tiny, scope):
    from transformers import DynamicCache

    model, lay = tiny.model, tiny.tokenizer.layout
    prompt = _mixed_ids(tiny.tokenizer)[:, :-1]  # ends inside the audio span
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 3
    layer, alpha, steps = 1, 2.0, 6
    seq, cached = prompt, []
    with torch.no_grad(), steering(model, lay, Steering(v, layer, alpha, "both", scope)):
        cache = DynamicCache()
        logits = model(prompt, cache=cache, use_cache=True).logits[:, -1]
        for _ in range(steps):
            cached.append(logits[0])
            nxt = logits.argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            logits = model(nxt, cache=cache, use_cache=True).logits[:, -1]
    sel = position_mask(seq, lay, "both")
    if scope == "prefill":
        sel[:, prompt.shape[1]:] = False
    with torch.no_grad():
        full = _manual_logits(model, seq, layer, sel[..., None] * (alpha * v))[0]
    p = prompt.shape[1]
    torch.testing.assert_close(torch.stack(cached), full[p - 1: p - 1 + steps], rtol=1e-4, atol=1e-4)
    # the other scope's reference differs: the test tells the two apart
    other = position_mask(seq, lay, "both")
    if scope == "all":
        other[:, p:] = False
    with torch.no_grad():
        wrong = _manual_logits(model, seq, layer, other[..., None] * (alpha * v))[0]
    assert (torch.stack(cached)[1:] - wrong[p: p - 1 + steps]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- files and CLI

def test_vector_file_round_trip_metadata_and_refusals(tiny, tmp_path):
    model, tok = tiny.model, tiny.tokenizer
    h = model.config.hidden_size
    vecs = {1: torch.randn(h), 3: torch.randn(h)}
    fp = model_fingerprint(model, tok)
    sv = SteeringVectors(vecs, "mean_shift", "negation", {0: 1.5, 1: 2.5, 2: 3.0, 3: 4.0}, "soda",
                         fp, {"n_sentences": 8})
    path = str(tmp_path / "v.safetensors")
    save_vectors(path, sv)
    warnings = []
    back = load_vectors(path, model, tok, warn=warnings.append)
    assert not warnings
    assert back.method == "mean_shift" and back.concept == "negation" and back.text_format == "soda"
    assert back.median_norm == sv.median_norm and back.extra == {"n_sentences": 8}
    assert all(torch.equal(back.vectors[k], vecs[k]) for k in vecs)
    from megatron_soda.steer.vectors import read_metadata

    meta = read_metadata(path)
    assert meta["norm"] == {str(k): pytest.approx(float(v.norm())) for k, v in vecs.items()}
    assert meta["model_fingerprint"] == fp and meta["layers"] == [1, 3]
    save_vectors(path, SteeringVectors(vecs, "probe", "c", {}, "soda", "0" * 64))
    load_vectors(path, model, tok, warn=warnings.append)
    assert len(warnings) == 1 and "another model" in warnings[0]
    save_vectors(path, SteeringVectors({1: torch.randn(h + 1)}, "probe", "c", {}, "soda", fp))
    with pytest.raises(ValueError, match="hidden size"):
        load_vectors(path, model, tok)
    with pytest.raises(ValueError, match="hidden size"):
        with steering(model, tok.layout, Steering(torch.randn(h + 1), 1, 1.0)):
            pass


def test_extract_cli_and_eval_pairs_steering(tiny, tmp_path):
    from megatron_soda.eval.cli import main as eval_main
    from megatron_soda.steer.cli import main as steer_main

    hf = tiny.info["hf_dir"]
    concepts = tmp_path / "c.jsonl"
    concepts.write_text("".join(json.dumps({"sentence": s, "anchor": a}) + "\n" for s, a in SENTENCES)
                        + json.dumps({"sentence": "to be", "anchor": "zzz"}) + "\n")
    vec = str(tmp_path / "ms.safetensors")
    assert steer_main(["extract", "--model", hf, "--concepts", str(concepts), "--method",
                       "mean_shift", "--output", vec, "--layers", "2"]) == 0
    sv = load_vectors(vec)
    acts = collect(tiny.model, tiny.tokenizer, _items(), layers=[2])
    torch.testing.assert_close(sv.vectors[2], methods.mean_shift(acts)[2])
    assert sv.extra["skipped"] and "zzz" in sv.extra["skipped"][0]
    assert sv.median_norm[2] == pytest.approx(acts.median_norm[2])
    vec_sae = str(tmp_path / "sae.safetensors")
    assert steer_main(["extract", "--model", hf, "--concepts", str(concepts), "--method", "sae",
                       "--output", vec_sae, "--sae-steps", "50"]) == 0
    assert float(load_vectors(vec_sae).vector(2).norm()) == pytest.approx(1.0, abs=1e-5)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"id": str(i), "positive": {"text": s},
                                         "negative": {"text": s[::-1]}}) + "\n"
                             for i, (s, _) in enumerate(SENTENCES)))

    def run(*flags):
        out = tmp_path / f"r{len(flags)}{'_'.join(flags)[-12:]}.json"
        items = tmp_path / (out.name + ".items.jsonl")
        assert eval_main(["pairs", "--model", hf, "--data", str(pairs), "--format", "jsonl",
                          "--output", str(out), "--items", str(items), *flags]) == 0
        rows = [json.loads(line) for line in items.read_text().splitlines()]
        return json.loads(out.read_text()), [r["score_positive"] for r in rows]

    _, base = run()
    res0, zero = run("--steer", vec, "--steer-alpha", "0", "--steer-positions", "text")
    res, steered = run("--steer", vec, "--steer-alpha", "1", "--steer-alpha-units", "norm",
                       "--steer-positions", "text")
    _, audio_only = run("--steer", vec, "--steer-alpha", "1", "--steer-positions", "audio")
    assert zero == base and audio_only == base  # text pairs have no audio position
    assert steered != base
    assert res["steer"]["alpha_units"] == "norm" and res["steer"]["layer"] == 2
    assert res["steer"]["added_norm"] == pytest.approx(sv.median_norm[2], rel=1e-5)
