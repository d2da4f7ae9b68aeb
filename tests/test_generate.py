"""Generation engine: KV cache vs full recompute, batching, grammar, stop rules, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_generate import Biased, allowed_next, check_grammar

from megatron_soda.generate import prompts
from megatron_soda.generate.engine import generate
from megatron_soda.generate.sampling import choose, distribution
from megatron_soda.generate.settings import SamplingSettings
from megatron_soda.generate.silence import SilenceCodes

OFF = dict(repetition_ngram=0, silence_frames=0)


@pytest.fixture(scope="module")
def tiny(tiny_soda, one_torch_thread):
    from megatron_soda.convert.in_memory import load_model

    return load_model(tiny_soda.hf)


def _prompts(tok, seed=0):
    rng = np.random.default_rng(seed)
    codes = lambda f: rng.integers(0, 2048, (tok.layout.num_codebooks, f))  # noqa: E731
    return [
        prompts.asr_prompt(tok, codes(3)),
        prompts.tts_prompt(tok, "the cat sat", codes(2), "a voice"),
        prompts.continue_prompt(tok, codes(4)),
        prompts.s2st_prompt(tok, codes(2), "de"),
    ]


def test_kv_cache_greedy_equals_full_recompute(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout
    s = SamplingSettings(temperature=0, max_new_tokens=12, **OFF)
    for p in _prompts(tok)[:3]:
        (gen,) = generate(tiny.model, tok, [p], s, stop_at="eos")
        ids, out = list(p), []
        for _ in range(len(gen.token_ids)):
            with torch.no_grad():
                logits = tiny.model(torch.tensor([ids])).logits[0, -1].double().numpy()
            allowed = allowed_next(lay, p, out)
            t = int(allowed[int(np.argmax(logits[allowed]))])
            ids.append(t)
            out.append(t)
            if t in (lay.eos_id,):
                break
        assert gen.token_ids.tolist() == out


def test_batched_equals_unbatched_greedy(tiny):
    tok = tiny.tokenizer
    ps = _prompts(tok, seed=1)
    s = SamplingSettings(temperature=0, max_new_tokens=20, **OFF)
    batched = generate(tiny.model, tok, ps, s, stop_at="eos")
    for p, b in zip(ps, batched):
        (alone,) = generate(tiny.model, tok, [p], s, stop_at="eos")
        assert alone.token_ids.tolist() == b.token_ids.tolist()
        assert alone.stop_reason == b.stop_reason


def test_grammar_holds_when_sampling_hot_with_markers_pushed(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout

    def push_markers(call, logits):  # make every marker tempting, everywhere
        logits[:, [lay.audio_end_id, lay.text_end_id, lay.bos_id]] += 20.0
        logits[:, [lay.audio_start_id, lay.text_start_id, lay.eos_id]] += 3.0

    model = Biased(tiny.model, push_markers)
    s = SamplingSettings(temperature=3.0, top_p=1.0, max_new_tokens=150, seed=5, **OFF)
    ps = _prompts(tok, seed=2) * 2
    gens = generate(model, tok, ps, s, stop_at="eos")
    saw_audio_end = saw_text_end = 0
    for p, g in zip(ps, gens):
        check_grammar(lay, p, g.token_ids)
        saw_audio_end += int((g.token_ids == lay.audio_end_id).sum())
        saw_text_end += int((g.token_ids == lay.text_end_id).sum())
    assert saw_audio_end and saw_text_end  # the markers were tempting and still came in order


def test_stop_end_marker_and_max_tokens(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout
    p = _prompts(tok)[1]  # tts: the open span is audio
    model = Biased(tiny.model, lambda c, x: x[:, lay.audio_end_id].add_(50.0))
    (g,) = generate(model, tok, [p], SamplingSettings(temperature=1.0, top_p=1.0, **OFF))
    assert g.stop_reason == "end_marker"
    assert g.token_ids.tolist()[-1] == lay.audio_end_id and len(g.token_ids) == lay.num_codebooks + 1
    assert g.audio_frames == 1
    (g,) = generate(tiny.model, tok, [p], SamplingSettings(temperature=0, max_new_tokens=19, **OFF))
    assert g.stop_reason == "max_tokens" and len(g.token_ids) == 19
    assert g.audio_frames == 19 // lay.num_codebooks  # partial frame cut
    expect = lay.ids_to_codes(g.token_ids[: 2 * lay.num_codebooks])
    np.testing.assert_array_equal(g.audio_codes, expect)


def _forcing(lay, targets, start_call):
    """Force the id ``targets(k)`` at generated token k >= start_call (tts prompt: token k is
    codebook k % n)."""
    def bias(call, logits):
        if call >= start_call:
            logits[:, targets(call)] += 100.0
    return bias


def test_stop_silence_trims_the_silent_frames(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout
    n = lay.num_codebooks
    sil = SilenceCodes(np.arange(n) * 7 + 11, tuple(frozenset([int(c)]) for c in np.arange(n) * 7 + 11), "t")
    quiet = lambda k: lay.audio_offset + (k % n) * lay.codebook_size + int(sil.codes[k % n])  # noqa: E731
    model = Biased(tiny.model, _forcing(lay, quiet, 3 * n))  # three free frames, then silence
    s = SamplingSettings(temperature=1.0, top_p=1.0, silence_frames=4, silence_codebooks=n,
                         repetition_ngram=0, max_new_tokens=200)
    (g,) = generate(model, tok, [_prompts(tok)[1]], s, silence=sil)
    assert g.stop_reason == "silence"
    codes = lay.ids_to_codes(g.token_ids)
    silent = (codes == sil.codes[:, None]).all(0)
    assert silent[-4:].all() and not silent[-5]  # stopped at the 4th silent frame
    assert g.trimmed_frames == 4
    np.testing.assert_array_equal(g.audio_codes, codes[:, :-4])
    # without the rule the row runs to the cap
    (g2,) = generate(Biased(tiny.model, _forcing(lay, quiet, 3 * n)), tok, [_prompts(tok)[1]],
                     s.with_overrides(silence_frames=0, max_new_tokens=100), silence=sil)
    assert g2.stop_reason == "max_tokens"


def test_stop_repetition_keeps_one_copy(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout
    n = lay.num_codebooks
    block = np.random.default_rng(4).integers(0, 2048, (n, 2))  # a 2-frame loop
    loop_ids = lay.codes_to_ids(block)
    model = Biased(tiny.model, _forcing(lay, lambda k: int(loop_ids[k % (2 * n)]), 4 * n))
    s = SamplingSettings(temperature=1.0, top_p=1.0, repetition_ngram=3, repetition_count=3,
                         silence_frames=0, max_new_tokens=200)
    (g,) = generate(model, tok, [_prompts(tok)[1]], s)
    assert g.stop_reason == "repetition"
    frames = lay.ids_to_codes(g.token_ids).T
    # independent: the last 6 frames are 3 copies of the 2-frame loop, and no earlier stop
    np.testing.assert_array_equal(frames[-6:], np.tile(block.T, (3, 1)))
    assert len(frames) == 4 + 6
    assert g.trimmed_frames == 4 and g.audio_frames == 6


def _numpy_distribution(logits, allowed, temperature, top_k, top_p):
    x = np.where(allowed, logits.astype(np.float64) / temperature, -np.inf)
    if top_k:
        kth = np.sort(x)[::-1][top_k - 1]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep, mass = np.zeros_like(allowed), 0.0
    for i in order:
        if mass >= top_p:
            break
        keep[i], mass = True, mass + p[i]
    q = np.where(keep, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.8), (0.7, 5, 1.0), (1.3, 7, 0.6)])
def test_sampling_distribution_matches_numpy(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 40, generator=g) * 2
    allowed = torch.rand(2, 40, generator=g) < 0.7
    s = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    got = distribution(logits, allowed, s).numpy()
    for r in range(2):
        want = _numpy_distribution(logits[r].numpy(), allowed[r].numpy(), temperature, top_k, top_p)
        np.testing.assert_allclose(got[r], want, atol=1e-6)
    draws = 2000
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    counts = np.zeros((2, 40))
    for _ in range(draws):
        for r, t in enumerate(choose(logits, allowed, s, gens)):
            counts[r, t] += 1
    for r in range(2):
        want = _numpy_distribution(logits[r].numpy(), allowed[r].numpy(), temperature, top_k, top_p)
        assert counts[r][want == 0].sum() == 0
        assert 0.5 * np.abs(counts[r] / draws - want).sum() < 0.05


def test_seed_reproducible_and_rows_independent_of_batch(tiny):
    tok = tiny.tokenizer
    ps = _prompts(tok, seed=3)
    s = SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=11, **OFF)
    a = generate(tiny.model, tok, ps, s)
    b = generate(tiny.model, tok, ps, s)
    assert [x.token_ids.tolist() for x in a] == [x.token_ids.tolist() for x in b]
    c = generate(tiny.model, tok, ps, s.with_overrides(seed=12))
    assert [x.token_ids.tolist() for x in a] != [x.token_ids.tolist() for x in c]
    for i, p in enumerate(ps):  # alone, with its index: the same samples as in the batch
        (alone,) = generate(tiny.model, tok, [p], s, first_row=i)
        assert alone.token_ids.tolist() == a[i].token_ids.tolist()
    split = generate(tiny.model, tok, ps, s, batch_size=2)
    assert [x.token_ids.tolist() for x in split] == [x.token_ids.tolist() for x in a]


def test_prompts_follow_the_authors_strings(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout
    codes = np.arange(16).reshape(8, 2) % 2048
    audio = lay.codes_to_ids(codes).tolist()
    enc = tok.encode_text
    assert prompts.asr_prompt(tok, codes).tolist() == [lay.bos_id, lay.audio_start_id, *audio,
                                                       lay.audio_end_id, lay.text_start_id]
    assert prompts.tts_prompt(tok, "hi there", codes, "a b").tolist() == [
        lay.bos_id, lay.text_start_id, *enc("a b"), lay.text_end_id, lay.audio_start_id, *audio,
        lay.audio_end_id, lay.text_start_id, *enc("hi there"), lay.text_end_id, lay.audio_start_id]
    # the fine-tuning document's instruction (format/sft.py): the source speech alone
    assert prompts.s2st_prompt(tok, codes, "de").tolist() == [
        lay.bos_id, lay.audio_start_id, *audio, lay.audio_end_id]
    assert prompts.s2st_prompt(tok, codes, "de", "ja").tolist() == [
        lay.bos_id, lay.audio_start_id, *audio, lay.audio_end_id, lay.text_start_id,
        *enc("<language>de</language>ja"), lay.text_end_id, lay.text_start_id,
        *enc("<language>en</language>")]


def test_s2st_stops_at_the_target_audio_end_not_the_text_end(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout

    def route(call, logits):  # close the text at once, then open audio, then close it
        logits[:, [lay.text_end_id, lay.audio_start_id, lay.audio_end_id]] += 50.0

    forced = prompts.s2st_prompt(tok, np.ones((lay.num_codebooks, 2), int), "de", "ja")  # open tgt span
    (g,) = generate(Biased(tiny.model, route), tok, [forced],
                    SamplingSettings(temperature=1.0, top_p=1.0, **OFF), stop_at="audio_end")
    ids = g.token_ids.tolist()
    assert ids[0] == lay.text_end_id and ids[1] == lay.audio_start_id  # went on past <text_end>
    assert ids[-1] == lay.audio_end_id and len(ids) == 2 + lay.num_codebooks + 1
    assert g.stop_reason == "end_marker" and g.audio_frames == 1 and g.text_spans == [""]


def test_continuation_completes_a_partial_prompt_frame(tiny):
    tok, lay = tiny.tokenizer, tiny.tokenizer.layout
    full = _prompts(tok)[2]
    p = full[:-3]  # the prompt's last frame lacks cb5..cb7
    (g,) = generate(tiny.model, tok, [p], SamplingSettings(temperature=0, max_new_tokens=11, **OFF))
    check_grammar(lay, p, g.token_ids)
    first = np.concatenate([p[-(lay.num_codebooks - 3) :], g.token_ids[:3]])
    np.testing.assert_array_equal(g.audio_codes[:, 0], lay.ids_to_codes(first)[:, 0])
    assert g.audio_frames == 2  # the completed frame and one whole generated frame
