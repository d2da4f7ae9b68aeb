"""Likelihood scoring (issue 14): item scores recomputed from full logits with plain torch,
semantic-only scoring, the same codes as preprocessing, checkpoint == HF export, prepared
directories, and the `eval pairs` / `eval likelihood` commands end to end."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from megatron_soda.audio.codec import MimiCodec
from megatron_soda.convert.in_memory import load_model
from megatron_soda.eval.cli import main as eval_main
from megatron_soda.tasks.likelihood import score_sequences
from megatron_soda.tasks.prepared import PreparedError, read_prepared
from megatron_soda.tasks.sequences import audio_sequence, text_sequence

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CODEC = "random:tiny:0"


@pytest.fixture(scope="module")
def tiny(tiny_soda):
    return tiny_soda


@pytest.fixture(scope="module")
def hf(tiny):
    return load_model(tiny.hf)


def reference_score(model, seq) -> float:
    """Mean log-probability of the scored tokens from the full logits, plain torch."""
    ids = torch.from_numpy(seq.ids)[None]
    logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    total, n = 0.0, 0
    for t in range(1, len(seq.ids)):
        if seq.scored[t]:
            total += float(logp[t - 1, seq.ids[t]])
            n += 1
    return total / n


def random_codes(rng, frames, n_cb=8):
    return rng.integers(0, 2048, size=(n_cb, frames))


def test_scores_match_plain_torch_and_do_not_depend_on_batching(hf):
    rng = np.random.default_rng(0)
    tok = hf.tokenizer
    seqs = [audio_sequence(tok, random_codes(rng, f)) for f in (3, 7, 1, 12)]
    seqs += [audio_sequence(tok, random_codes(rng, 5), "semantic"), text_sequence(tok, "a cat sat.")]
    one = score_sequences(hf.model, seqs, batch_size=1)
    many = score_sequences(hf.model, seqs, batch_size=4)
    for seq, (s1, n1), (s4, n4) in zip(seqs, one, many):
        assert n1 == n4 == int(seq.scored.sum())
        assert s1 / n1 == pytest.approx(reference_score(hf.model, seq), abs=1e-9)
        assert s4 / n4 == pytest.approx(s1 / n1, abs=1e-5)


def test_authors_prompt_and_semantic_positions(hf):
    tok = hf.tokenizer
    lay = tok.layout
    codes = random_codes(np.random.default_rng(1), 6)
    seq = audio_sequence(tok, codes)
    assert seq.ids[:2].tolist() == [tok.bos, lay.audio_start_id] and seq.ids[-1] == lay.audio_end_id
    # all_audio: exactly the audio ids are scored, markers' predictions excluded
    is_audio = (seq.ids >= lay.audio_offset) & (seq.ids < lay.audio_offset + lay.num_audio_tokens)
    assert np.array_equal(seq.scored, is_audio)
    # semantic: exactly the ids of codebook 0, i.e. in [audio_offset, audio_offset + 2048)
    sem = audio_sequence(tok, codes, "semantic")
    cb0 = (seq.ids >= lay.audio_offset) & (seq.ids < lay.audio_offset + lay.codebook_size)
    assert np.array_equal(sem.scored, cb0) and sem.scored.sum() == codes.shape[1]
    assert np.array_equal(seq.ids[sem.scored] - lay.audio_offset, codes[0])
    txt = text_sequence(tok, "hello there")
    body = tok.encode_text("hello there")
    assert txt.ids.tolist() == [tok.bos, lay.text_start_id, *body, lay.text_end_id]
    assert txt.scored.sum() == len(body) and not txt.scored[-1]


def test_megatron_checkpoint_scores_like_its_hf_export(tiny, hf):
    ckpt = load_model(tiny.save)
    assert ckpt.kind == "megatron" and ckpt.info["iteration"] == 1
    rng = np.random.default_rng(2)
    seqs = [audio_sequence(hf.tokenizer, random_codes(rng, 4)) for _ in range(3)]
    assert score_sequences(ckpt.model, seqs) == score_sequences(hf.model, seqs)


def _wav(path, text, speed=170):
    from megatron_soda.testing.sample_data import speak

    x, sr = speak(text, speed=speed)
    sf.write(path, x, sr)
    return path


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i, (good, bad) in enumerate([("the dog runs", "the dog run"), ("brick", "blick")]):
        rows.append({"id": f"a{i}", "positive": _wav(str(root / f"p{i}.wav"), good),
                     "negative": f"n{i}.wav", "subtask": "audio"})
        _wav(str(root / f"n{i}.wav"), bad)
    rows.append({"id": "t0", "positive": {"text": "the dog runs"}, "negative": {"text": "dog the runs"}})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_same_codes_as_preprocessing(pairs_jsonl, tmp_path, small_bpe_path, hf):
    """The evaluator's audio ids for a file equal the audio span preprocessing writes for it."""
    from megatron_soda.data.cli import preprocess_main
    from megatron_soda.format import read_document

    wav = os.path.join(os.path.dirname(pairs_jsonl), "p0.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u0", "audio": wav, "text": "the dog runs"}) + "\n")
    prefix = str(tmp_path / "shard")
    assert preprocess_main(["--input", str(manifest), "--input-format", "jsonl", "--output-prefix",
                            prefix, "--tokenizer", small_bpe_path, "--codec", CODEC, "--workers",
                            "1", "--interleave", "audio-first", "--log-level", "ERROR"]) == 0
    doc = np.asarray(read_document(prefix, 0))
    lay = hf.tokenizer.layout
    a, b = np.flatnonzero(doc == lay.audio_start_id)[0], np.flatnonzero(doc == lay.audio_end_id)[0]
    from megatron_soda.tasks.build import codec_encoder
    from megatron_soda.tasks.items import Member

    codes = codec_encoder(MimiCodec(CODEC, num_codebooks=8))(Member(audio=wav))
    assert np.array_equal(audio_sequence(hf.tokenizer, codes).ids[1:], doc[a : b + 1])


def test_pairs_command_end_to_end(pairs_jsonl, tiny, hf, tmp_path):
    out, items = str(tmp_path / "r.json"), str(tmp_path / "i.jsonl")
    code = eval_main(["pairs", "--model", tiny.hf, "--codec", CODEC, "--data", pairs_jsonl,
                      "--format", "jsonl", "--output", out, "--items", items, "--batch-size", "2"])
    assert code == 0
    result = json.load(open(out))
    rows = [json.loads(line) for line in open(items)]
    assert [r["id"] for r in rows] == ["a0", "a1", "t0"] and result["n"] == 3
    assert result["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    for r in rows:
        assert r["correct"] == (r["score_positive"] > r["score_negative"])
    # independent recomputation of one audio and the text item's scores
    codec = MimiCodec(CODEC, num_codebooks=8)
    from megatron_soda.audio.io import load_audio

    wave = load_audio(os.path.join(os.path.dirname(pairs_jsonl), "n1.wav"))
    ref = reference_score(hf.model, audio_sequence(hf.tokenizer, codec.encode([wave])[0]))
    assert rows[1]["score_negative"] == pytest.approx(ref, abs=1e-5)
    ref_t = reference_score(hf.model, text_sequence(hf.tokenizer, "dog the runs"))
    assert rows[2]["score_negative"] == pytest.approx(ref_t, abs=1e-5)
    # semantic scoring changes the audio scores, not the text ones
    out2 = str(tmp_path / "r2.json")
    assert eval_main(["pairs", "--model", tiny.save, "--codec", CODEC, "--data", pairs_jsonl,
                      "--format", "jsonl", "--score-span", "semantic", "--output", out2,
                      "--items", items]) == 0
    sem = [json.loads(line) for line in open(items)]
    assert sem[2]["score_positive"] == pytest.approx(rows[2]["score_positive"], abs=1e-5)
    assert sem[0]["score_positive"] != pytest.approx(rows[0]["score_positive"], abs=1e-5)


def test_prepared_directory_scores_the_same(pairs_jsonl, tiny, tmp_path, small_bpe_path):
    prep = str(tmp_path / "prep")
    argv = ["prepare", "--model", tiny.hf, "--codec", CODEC, "--task", f"mine={pairs_jsonl}:jsonl",
            "--output", prep]
    assert eval_main(argv) == 0
    out = str(tmp_path / "all.json")
    assert eval_main(["likelihood", "--model", tiny.save, "--prepared", prep, "--output", out,
                      "--items-dir", str(tmp_path / "items")]) == 0
    direct = str(tmp_path / "d.json")
    assert eval_main(["pairs", "--model", tiny.hf, "--codec", CODEC, "--data", pairs_jsonl,
                      "--format", "jsonl", "--output", direct]) == 0
    got = json.load(open(out))["tasks"]["mine"]
    assert got["accuracy"] == json.load(open(direct))["accuracy"] and got["n"] == 3
    # a second prepare keeps the finished task (resume) ...
    before = os.stat(os.path.join(prep, "mine.jsonl")).st_mtime_ns
    assert eval_main(argv) == 0
    assert os.stat(os.path.join(prep, "mine.jsonl")).st_mtime_ns == before
    # ... and a model with another tokenizer layout is refused
    from megatron_soda.tokenizer import SodaTokenizer

    with pytest.raises(PreparedError, match="layout"):
        read_prepared(prep, SodaTokenizer(small_bpe_path, num_codebooks=4))
    # hostile content: ids outside the vocabulary are refused with the file and line
    lines = open(os.path.join(prep, "mine.jsonl")).read().splitlines()
    rec = json.loads(lines[0])
    rec["positive"]["ids"][3] = 10**9
    open(os.path.join(prep, "mine.jsonl"), "w").write("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    with pytest.raises(PreparedError, match="mine.jsonl line 1 positive: ids outside"):
        read_prepared(prep, SodaTokenizer(small_bpe_path, num_codebooks=8))


def test_bad_item_is_reported_and_the_rest_scored(pairs_jsonl, tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = open(pairs_jsonl).read().splitlines()
    root = os.path.dirname(pairs_jsonl)
    rows = [json.loads(x) for x in lines]
    for r in rows:
        for k in ("positive", "negative"):
            if isinstance(r[k], str):
                r[k] = os.path.join(root, r[k])
    rows[0]["negative"] = str(tmp_path / "missing.wav")
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "r.json")
    argv = ["pairs", "--model", tiny.hf, "--codec", CODEC, "--data", str(bad), "--format", "jsonl",
            "--output", out]
    assert eval_main(argv) == 2
    result = json.load(open(out))
    assert result["n"] == 2 and len(result["errors"]) == 1
    assert result["errors"][0].startswith(f"{bad} line 1") and "missing.wav" in result["errors"][0]
    assert eval_main([*argv, "--max-error-rate", "0.5"]) == 0


@pytest.mark.torchrun
def test_data_parallel_over_two_ranks_gives_the_same_items(pairs_jsonl, tiny, tmp_path):
    import subprocess
    import sys

    from helpers_train import _free_port

    one, two = str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")
    common = ["pairs", "--model", tiny.hf, "--codec", CODEC, "--data", pairs_jsonl, "--format",
              "jsonl", "--device", "cpu", "--batch-size", "1"]
    assert eval_main([*common, "--output", str(tmp_path / "one.json"), "--items", one]) == 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m",
         "megatron_soda.eval", *common, "--output", str(tmp_path / "two.json"), "--items", two],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = [json.loads(x) for x in open(one)]
    b = [json.loads(x) for x in open(two)]
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert x["score_positive"] == pytest.approx(y["score_positive"], abs=1e-6)
        assert x["correct"] == y["correct"]
    assert json.load(open(tmp_path / "two.json"))["world_size"] == 2
