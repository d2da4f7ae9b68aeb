"""``python -m megatron_soda.eval s2st``: BLEU against sacrebleu called directly, the target-text
span from hand-built token sequences, and the runner end to end on a tiny random SODA model
(plumbing, not quality) with espeak-ng French sources, recomputed from ITEMS.jsonl."""

from __future__ import annotations

import json
import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import sacrebleu
import soundfile as sf

from megatron_soda.eval.cli import main
from megatron_soda.eval.s2st import corpus_bleu, read_items, target_text_span
from megatron_soda.testing.cvss_sample import make_cvss_sample
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CODEC = "random:tiny:0"


def _norm(s: str) -> str:  # the documented normalisation, written again (ASCII test data)
    s = re.sub(r"['\u2019]", "", s.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", s).split())


def _sacre(hyps, refs) -> float:
    return sacrebleu.corpus_bleu([_norm(h) for h in hyps], [[_norm(r) for r in refs]]).score


def test_bleu_is_sacrebleu_corpus_bleu_after_normalisation():
    refs = ["The cat sat on the mat.", "I don't know, really!", "It is raining in Paris today."]
    hyps = ["the cat sat on a mat", "i dont know really", "it rains in paris"]
    got = corpus_bleu(hyps, refs)
    assert got["score"] == pytest.approx(_sacre(hyps, refs))
    assert got["score"] > 30  # normalisation makes case/punctuation/apostrophes irrelevant
    # corpus aggregation, not a mean of sentence scores
    sent = np.mean([sacrebleu.sentence_bleu(_norm(h), [_norm(r)]).score for h, r in zip(hyps, refs)])
    assert abs(got["score"] - sent) > 1e-3
    # normalisation matters: the raw strings score lower
    raw = corpus_bleu(hyps, refs, normalize=False)["score"]
    assert raw == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score) and raw < got["score"]
    assert got["sys_len"] == sum(len(_norm(h).split()) for h in hyps)
    assert "tok:13a" in got["signature"]
    assert np.isnan(corpus_bleu([], [])["score"])


@pytest.fixture(scope="module")
def tok(small_bpe_path):
    return SodaTokenizer(small_bpe_path, num_codebooks=8)


def _doc(tok, *parts):
    lay, ids = tok.layout, []
    for kind, x in parts:
        if kind == "audio":
            ids += [lay.audio_start_id] + list(tok.encode_audio(np.full((8, x), 7))) + [lay.audio_end_id]
        elif kind == "text":
            ids += [lay.text_start_id] + tok.encode_text(x) + [lay.text_end_id]
        elif kind == "open":  # a text span the generation did not close
            ids += [lay.text_start_id] + tok.encode_text(x)
        else:
            ids += [getattr(lay, kind + "_id")]
    return np.asarray(ids, dtype=np.int64)


def test_target_text_span_from_hand_built_sequences(tok):
    full = _doc(tok, ("bos", None), ("audio", 3), ("text", "<language>fr</language>bonjour le monde"),
                ("text", "<language>en</language>hello the world"), ("audio", 2), ("eos", None))
    assert target_text_span(tok, full) == ("hello the world", "en")
    # the source span alone: no target text
    one = _doc(tok, ("bos", None), ("audio", 3), ("text", "<language>fr</language>bonjour"), ("audio", 1))
    assert target_text_span(tok, one) == (None, None)
    # cut by max_tokens inside the target span: the open span runs to the end
    cut = _doc(tok, ("bos", None), ("audio", 2), ("text", "<language>de</language>guten tag"),
               ("open", "<language>en</language>good da"))
    assert target_text_span(tok, cut) == ("good da", "en")
    # no language tag: the text as written; the third span is not read
    untagged = _doc(tok, ("bos", None), ("audio", 1), ("text", "a"), ("text", "plain words"),
                    ("text", "<language>en</language>third"))
    assert target_text_span(tok, untagged) == ("plain words", None)
    # an audio span between the two text spans still leaves the second span second
    mixed = _doc(tok, ("bos", None), ("text", "<language>fr</language>x"), ("audio", 2),
                 ("text", "<language>en</language>y z"))
    assert target_text_span(tok, mixed) == ("y z", "en")


@pytest.fixture(scope="module")
def tiny(tiny_soda):
    return tiny_soda


def test_s2st_runner_end_to_end(tmp_path, tiny):
    from megatron_soda.audio.codec import MimiCodec
    from megatron_soda.audio.io import load_audio
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.eval.scorers import make_speaker_encoder, make_transcriber, similarity
    from megatron_soda.eval.table import collect, markdown
    from megatron_soda.generate.engine import generate
    from megatron_soda.generate.prompts import s2st_prompt
    from megatron_soda.generate.settings import SamplingSettings
    from megatron_soda.generate.silence import silence_codes

    sample = make_cvss_sample(tmp_path / "cvss", n_pairs=2, lang="fr", split="test")
    lang_dir = os.path.join(sample.cvss_root, "fr")
    # a pair whose source clip is corrupt (its generation's error) and one whose clip is missing
    (tmp_path / "cvss" / "source" / "fr" / "clips" / "common_voice_fr_1099.mp3").write_bytes(b"junk")
    shutil.copy(sample.pairs[0]["target_audio"], os.path.join(lang_dir, "test", "common_voice_fr_1099.mp3.wav"))
    tsv = os.path.join(lang_dir, "test.tsv")
    first, second = open(tsv).read().splitlines()
    open(tsv, "w").write(f"{first}\ncommon_voice_fr_1099.mp3\tBroken.\n{second}\n"
                         "common_voice_fr_1098.mp3\tMissing.\n")
    with open(os.path.join(sample.source_root, "fr", "covost_v2.fr_en.tsv"), "a") as f:
        f.write("common_voice_fr_1099.mp3\tCassé.\tBroken.\tx\ttest\n"
                "common_voice_fr_1098.mp3\tManque.\tMissing.\tx\ttest\n")
    out, items, audio = str(tmp_path / "r.json"), str(tmp_path / "i.jsonl"), str(tmp_path / "wavs")
    n_tok = 160  # seed 0: the first pair's generation has audio (the tiny random model)
    rc = main(["s2st", "--model", tiny.hf, "--codec", CODEC, "--data", sample.cvss_root,
               "--cvss-source-root", sample.source_root, "--split", "test",
               "--audio-dir", audio, "--max-new-tokens", str(n_tok), "--seed", "0",
               "--device", "cpu", "--output", out, "--items", items])
    assert rc == 0
    res = json.loads(open(out).read())
    rows = [json.loads(x) for x in open(items)]
    assert [r["id"] for r in rows] == ["common_voice_fr_1000", "common_voice_fr_1099", "common_voice_fr_1001"]
    assert "unreadable" in rows[1]["error"] and "transcript" not in rows[1]
    assert res["n"] == 2 and res["n_errors"] == 1 and len(res["input_errors"]) == 1
    assert len(res["errors"]) == 1 and res["errors"][0].startswith("common_voice_fr_1099: audio unreadable")
    assert "common_voice_fr_1098.mp3" in res["input_errors"][0]["reason"]
    pairs = sample.pairs
    assert [(r["source_text"], r["reference"], r["source_audio"]) for r in (rows[0], rows[2])] == [
        (p["source_text"], p["target_text"], p["source_audio"]) for p in pairs]
    good = [rows[0], rows[2]]
    assert sum(res["stop_reasons"].values()) == 2
    assert res["sampling"]["temperature"] == 0.9 and res["sampling"]["max_new_tokens"] == n_tok
    # BLEU recomputed from ITEMS with sacrebleu directly
    refs = [r["reference"] for r in good]
    assert res["asr_bleu"] == pytest.approx(_sacre([r["transcript"] for r in good], refs))
    assert res["text_bleu"] == pytest.approx(_sacre([r["hypothesis_text"] for r in good], refs))
    # the generation, redone directly: same seed streams (the good items are rows 0 and 2)
    loaded = load_model(tiny.hf)
    # decoder=True as the runner: the random test codec's encoder weights depend on it
    codec = MimiCodec(CODEC, num_codebooks=loaded.tokenizer.layout.num_codebooks, decoder=True)
    codes = codec.encode([load_audio(p["source_audio"]) for p in pairs])
    asr, enc = make_transcriber("pocketsphinx"), make_speaker_encoder("resemblyzer")

    def check(rows, sampling, streams):  # sampling: the RESULT's record of the settings
        settings = SamplingSettings(**sampling)
        for r, c, k in zip(rows, codes, streams):
            g = generate(loaded.model, loaded.tokenizer, [s2st_prompt(loaded.tokenizer, c, "fr")],
                         settings, silence=silence_codes(codec), stop_at="audio_end", first_row=k)[0]
            assert r["stop_reason"] == g.stop_reason and r["generated_tokens"] == len(g.token_ids)
            # second path: the generator's own text spans (the prompt ends at the source <audio_end>)
            want = re.sub(r"^\s*<language>[^<]*</language>", "", g.text_spans[1]).strip() \
                if len(g.text_spans) > 1 else ""
            assert r["hypothesis_text"] == want and r["has_target_text"] == (len(g.text_spans) > 1)
            if r["wav"] is None:
                assert g.audio_frames == 0 and r["transcript"] == "" and r["similarity"] is None
                continue
            wave, sr = sf.read(r["wav"], dtype="float32")
            assert sr == 24000 and wave.size == g.audio_frames * 1920
            assert os.path.basename(r["wav"]) == r["id"] + ".wav"
            assert r["transcript"] == asr.transcribe([load_audio(r["wav"])], 24000)[0]
            try:  # voice preservation: generated vs the SOURCE speech
                sim = similarity(enc.embed(load_audio(r["wav"]), 24000),
                                 enc.embed(load_audio(r["source_audio"]), 24000))
            except ValueError:
                sim = None
            assert r["similarity"] == (pytest.approx(sim) if sim is not None else None)

    check(good, res["sampling"], (0, 2))
    # seed 6, top-k off, first pair only: the tiny model writes a second (target) text span
    rc = main(["s2st", "--model", tiny.hf, "--codec", CODEC, "--data", sample.cvss_root,
               "--cvss-source-root", sample.source_root, "--audio-dir", audio, "--limit", "1",
               "--max-new-tokens", str(n_tok), "--seed", "6", "--top-k", "0", "--device", "cpu",
               "--output", str(tmp_path / "r6.json"), "--items", str(tmp_path / "i6.jsonl")])
    rows6 = [json.loads(x) for x in open(tmp_path / "i6.jsonl")]
    assert rc == 0 and len(rows6) == 1
    check(rows6, json.loads(open(tmp_path / "r6.json").read())["sampling"], (0,))
    assert any(r["wav"] for r in good) and rows6[0]["has_target_text"], \
        "the seeds no longer reach both the audio and the target-text paths: pick others"
    # the table reads the s2st results
    row, _ = collect([out])
    assert row["s2st_asr_bleu"] == res["asr_bleu"] and row["s2st_text_bleu"] == res["text_bleu"]
    assert row["s2st_sim"] == res["speaker_similarity"]
    assert "| CVSS ASR-BLEU | CVSS text BLEU | CVSS SIM |" in markdown({"m": row})
    # nothing left to score: exit 2, as the other commands
    assert main(["s2st", "--model", tiny.hf, "--codec", CODEC, "--data", sample.cvss_root,
                 "--cvss-source-root", sample.source_root, "--audio-dir", audio, "--limit", "0",
                 "--device", "cpu", "--output", str(tmp_path / "r0.json")]) == 2


def test_s2st_jsonl_and_cvss_give_the_same_pairs(tmp_path):
    sample = make_cvss_sample(tmp_path / "cvss", n_pairs=2, lang="de", split="test")
    jsonl = sample.write_jsonl(str(tmp_path / "pairs.jsonl"))
    by_cvss, e1 = read_items(SimpleNamespace(format="auto", data=sample.cvss_root, split="test",
                                             source_language="de", cvss_source_root=sample.source_root))
    by_jsonl, e2 = read_items(SimpleNamespace(format="auto", data=jsonl, cvss_source_root=None))
    assert e1 == e2 == []
    want = [(p["id"], p["source_audio"], p["source_text"], "de", p["target_text"], "en") for p in sample.pairs]
    for got in (by_cvss, by_jsonl):
        assert [(i.id, os.path.abspath(i.source_audio), i.source_text, i.source_lang, i.target_text,
                 i.target_lang) for i in got] == want
    with pytest.raises(FileNotFoundError, match="fr"):  # no French pair in this root
        read_items(SimpleNamespace(format="cvss", data=sample.cvss_root, split="test",
                                   source_language="fr", cvss_source_root=sample.source_root))
