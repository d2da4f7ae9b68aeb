"""The prompted tasks: the three input layouts, and the ASR and TTS runners end to end on a
tiny random SODA model with the tiny random codec (plumbing, not quality), checked against
recomputations (direct generation, jiwer, the scorers called by hand)."""

from __future__ import annotations

import json
import os
import re

import jiwer
import numpy as np
import pytest
import soundfile as sf

from megatron_soda.eval.cli import main
from megatron_soda.eval.librispeech import read_asr_items, read_seedtts_meta
from megatron_soda.testing.sample_data import speak

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CODEC = "random:tiny:0"


def _norm(s: str) -> str:  # the authors' normalisation, written again
    return " ".join(re.sub(r"[.,!?;:\"'\-()\[\]{}\u2018\u2019\u201c\u201d]", "", s).lower().split())


def _write_speech(path, text: str, voice: str = "en-us") -> None:
    w, sr = speak(text, voice=voice)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, w, sr)


@pytest.fixture(scope="module")
def tiny(tiny_soda):
    return tiny_soda


def test_librispeech_layout(tmp_path):
    chap = tmp_path / "ls" / "121" / "555"
    texts = {"121-555-0000": "HELLO THERE", "121-555-0001": "GOOD MORNING"}
    for uid in texts:
        _write_speech(str(chap / f"{uid}.flac"), "hi")
    (chap / "121-555.trans.txt").write_text(
        "".join(f"{u} {t}\n" for u, t in texts.items()) + "121-555-0002\n")
    items, errors = read_asr_items(str(tmp_path / "ls"))
    assert {it.id: it.text for it in items} == texts
    assert all(it.audio == str(chap / f"{it.id}.flac") for it in items)
    assert len(errors) == 1 and "121-555-0002" in errors[0].item
    one, _ = read_asr_items(str(chap / "121-555.trans.txt"))  # one transcript file
    assert [it.id for it in one] == [it.id for it in items]


def test_jsonl_manifest(tmp_path):
    lines = [{"id": "a", "audio": "wav/a.wav", "text": "one"},
             {"audio": str(tmp_path / "b.wav"), "text": "two"},
             {"id": "c", "audio": "c.wav"},  # no text: that line's error
             {"id": "a", "audio": "x.wav", "text": "dup"}]  # a repeated id: its error
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    items, errors = read_asr_items(str(m))
    assert [(it.id, it.audio, it.text) for it in items] == [
        ("a", str(tmp_path / "wav" / "a.wav"), "one"), ("m.jsonl:2", str(tmp_path / "b.wav"), "two")]
    assert sorted(e.item.split()[0] for e in errors) == ["a", "c"]


def test_seedtts_meta(tmp_path):
    d = tmp_path / "en"
    d.mkdir()
    (d / "meta.lst").write_text(
        "u1|Prompt one.|prompt-wavs/p1.wav|Target one.\n"
        f"u2|Prompt two|{tmp_path}/abs.wav|Target two|gt/u2.wav\n"
        "u3|only three|fields\n\n")
    items, errors = read_seedtts_meta(str(d / "meta.lst"))
    assert [(it.id, it.prompt_text, it.prompt_wav, it.target_text) for it in items] == [
        ("u1", "Prompt one.", str(d / "prompt-wavs" / "p1.wav"), "Target one."),
        ("u2", "Prompt two", f"{tmp_path}/abs.wav", "Target two")]
    assert len(errors) == 1 and "line 3" in errors[0].item


def _read(result, items):
    with open(result) as f:
        res = json.load(f)
    with open(items) as f:
        rows = [json.loads(x) for x in f]
    return res, rows


def test_asr_runner_end_to_end(tmp_path, tiny):
    from megatron_soda.audio.codec import MimiCodec
    from megatron_soda.audio.io import load_audio
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.generate.engine import generate
    from megatron_soda.generate.prompts import asr_prompt
    from megatron_soda.generate.settings import SamplingSettings, mode_defaults

    _write_speech(str(tmp_path / "a.wav"), "the cat sat")
    _write_speech(str(tmp_path / "b.flac"), "a dog ran home")
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    refs = {"a": "The cat, sat.", "b": "A DOG ran home!"}
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "a", "audio": "a.wav", "text": refs["a"]}) + "\n"
        + json.dumps({"id": "bad", "audio": "broken.wav", "text": "x"}) + "\n"
        + json.dumps({"id": "b", "audio": "b.flac", "text": refs["b"]}) + "\n")
    out, items = str(tmp_path / "r.json"), str(tmp_path / "i.jsonl")
    rc = main(["asr", "--model", tiny.hf, "--codec", CODEC, "--data", str(tmp_path / "m.jsonl"),
               "--temperature", "0", "--max-new-tokens", "12", "--batch-size", "2",
               "--device", "cpu", "--output", out, "--items", items])
    assert rc == 0
    res, rows = _read(out, items)
    assert [r["id"] for r in rows] == ["a", "bad", "b"]
    assert "unreadable" in rows[1]["error"] and rows[1]["hypothesis"] is None
    good = [rows[0], rows[2]]
    assert res["n"] == 2 and res["n_errors"] == 1
    assert sum(res["stop_reasons"].values()) == 2
    assert res["sampling"]["temperature"] == 0 and res["sampling"]["max_new_tokens"] == 12
    # WER recomputed from ITEMS with jiwer after the authors' normalisation
    want = jiwer.wer([_norm(r["reference"]) for r in good], [_norm(r["hypothesis"]) for r in good])
    assert res["wer"] == pytest.approx(want)
    for r in good:
        assert r["reference"] == refs[r["id"]]
        assert r["wer"] == pytest.approx(jiwer.wer(_norm(r["reference"]), _norm(r["hypothesis"])))
    # the hypotheses are what the model generates from codes encoded as preprocessing does
    loaded = load_model(tiny.hf)
    codec = MimiCodec(CODEC, num_codebooks=loaded.tokenizer.layout.num_codebooks)
    codes = codec.encode([load_audio(str(tmp_path / "a.wav")), load_audio(str(tmp_path / "b.flac"))])
    gens = generate(loaded.model, loaded.tokenizer, [asr_prompt(loaded.tokenizer, c) for c in codes],
                    SamplingSettings(temperature=0, max_new_tokens=12), stop_at="text_end")
    assert [g.text for g in gens] == [r["hypothesis"] for r in good]
    assert [g.stop_reason for g in gens] == [r["stop_reason"] for r in good]
    # sampled: item k of the list draws from seed stream k, whatever the batching
    main(["asr", "--model", tiny.hf, "--codec", CODEC, "--data", str(tmp_path / "m.jsonl"),
          "--temperature", "1.0", "--top-p", "1.0", "--max-new-tokens", "12", "--seed", "5",
          "--batch-size", "2", "--device", "cpu", "--output", out, "--items", items])
    sampled = [r["hypothesis"] for r in _read(out, items)[1]]
    settings = SamplingSettings(temperature=1.0, top_p=1.0, top_k=mode_defaults("asr").top_k,
                                max_new_tokens=12, seed=5)  # the CLI keeps the mode's top-k
    direct = [generate(loaded.model, loaded.tokenizer, [asr_prompt(loaded.tokenizer, c)], settings,
                       stop_at="text_end", first_row=k)[0].text for c, k in zip(codes, (0, 2))]
    assert [sampled[0], sampled[2]] == direct


def test_tts_runner_end_to_end(tmp_path, tiny):
    from megatron_soda.audio.io import load_audio
    from megatron_soda.eval.scorers import make_speaker_encoder, make_transcriber, similarity

    d = tmp_path / "en"
    _write_speech(str(d / "prompt-wavs" / "p1.wav"), "this is my voice")
    (d / "meta.lst").write_text("utt1|This is my voice.|prompt-wavs/p1.wav|Hello, world!\n"
                                "../evil|x|prompt-wavs/p1.wav|y\n")
    out, items, audio = str(tmp_path / "r.json"), str(tmp_path / "i.jsonl"), str(tmp_path / "wavs")
    rc = main(["tts", "--model", tiny.hf, "--codec", CODEC, "--data", str(d / "meta.lst"),
               "--audio-dir", audio, "--max-new-tokens", "40", "--device", "cpu",
               "--output", out, "--items", items])
    assert rc == 0
    res, rows = _read(out, items)
    assert [r["id"] for r in rows] == ["utt1", "../evil"]
    assert "safe file name" in rows[1]["error"] and os.listdir(audio) == ["utt1.wav"]
    r = rows[0]
    assert r["stop_reason"] in ("end_marker", "max_tokens", "repetition", "silence")
    assert 0 < r["frames"] <= 40 // tiny.tokenizer.layout.num_codebooks
    wave, sr = sf.read(r["wav"], dtype="float32")
    assert sr == 24000 and wave.size == r["frames"] * 1920
    # the scores, recomputed by calling the scorers and jiwer by hand
    hyp = make_transcriber("pocketsphinx").transcribe([load_audio(r["wav"])], 24000)[0]
    assert r["hypothesis"] == hyp
    want = jiwer.process_words("hello world", hyp.lower() if hyp else "").wer
    assert r["wer"] == pytest.approx(want) and res["wer"] == pytest.approx(want)
    enc = make_speaker_encoder("resemblyzer")
    try:
        sim = similarity(enc.embed(load_audio(r["wav"]), 24000),
                         enc.embed(load_audio(str(d / "prompt-wavs" / "p1.wav")), 24000))
    except ValueError:  # nothing voiced in the random model's audio
        sim = None
    assert r["speaker_similarity"] == (pytest.approx(sim) if sim is not None else None)
    assert res["n"] == 1 and res["n_errors"] == 1 and res["stop_reasons"] == {r["stop_reason"]: 1}
    assert res["asr_scorer"] == "pocketsphinx" and res["speaker_scorer"] == "resemblyzer"
    assert res["sampling"]["temperature"] == 0.9 and res["sampling"]["top_p"] == 0.8
    if sim is not None:
        assert res["speaker_similarity"] == pytest.approx(sim)
    assert np.isfinite(res["wer"])


def test_tts_runner_applies_the_steer_flags(tmp_path, tiny):
    """``eval tts --steer``: alpha 0 writes the unsteered audio bit for bit, a real alpha changes
    it, and the results record the steering."""
    import torch

    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.steer.vectors import SteeringVectors, model_fingerprint, save_vectors

    d = tmp_path / "en"
    _write_speech(str(d / "prompt-wavs" / "p1.wav"), "this is my voice")
    (d / "meta.lst").write_text("utt1|This is my voice.|prompt-wavs/p1.wav|Hello, world!\n")
    loaded = load_model(tiny.hf)
    vec = str(tmp_path / "v.safetensors")
    h = loaded.model.config.hidden_size
    save_vectors(vec, SteeringVectors({1: torch.randn(h, generator=torch.Generator().manual_seed(0))},
                                      "mean_shift", "c", {1: 1.0}, "soda",
                                      model_fingerprint(loaded.model, loaded.tokenizer)))

    def run(tag, *flags):
        out, items = str(tmp_path / f"{tag}.json"), str(tmp_path / f"{tag}.jsonl")
        assert main(["tts", "--model", tiny.hf, "--codec", CODEC, "--data", str(d / "meta.lst"),
                     "--audio-dir", str(tmp_path / tag), "--max-new-tokens", "40", "--device", "cpu",
                     "--output", out, "--items", items, *flags]) == 0
        res, rows = _read(out, items)
        return res, sf.read(rows[0]["wav"], dtype="float32")[0]

    plain_res, plain = run("plain")
    _, zero = run("zero", "--steer", vec, "--steer-alpha", "0")
    res, steered = run("steered", "--steer", vec, "--steer-alpha", "8", "--steer-scope", "all")
    assert plain_res["steer"] is None
    assert np.array_equal(zero, plain)
    assert steered.shape != plain.shape or not np.array_equal(steered, plain)
    assert res["steer"]["layer"] == 1 and res["steer"]["alpha"] == 8 and res["steer"]["scope"] == "all"
