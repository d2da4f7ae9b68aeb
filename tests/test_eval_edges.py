"""Edge cases of the evaluation and generation commands found in review: sampling defaults as
the authors' `generate` call really ran, HellaSwag's lm-eval normalisation, bad counts refused by
the parser, nothing-scored runs failing, stale prepared tasks redone, over-long items skipped
(as the trainer does), clean errors instead of tracebacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.eval.cli import main as eval_main
from megatron_soda.generate.cli import main as generate_main
from megatron_soda.generate.settings import mode_defaults
from megatron_soda.tasks.sequences import continuation_sequence

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CODEC = "random:tiny:0"


@pytest.fixture(scope="module")
def tiny(tiny_soda):
    return tiny_soda


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    from megatron_soda.testing.sample_data import speak

    root = tmp_path_factory.mktemp("speech")
    x, sr = speak("one two", speed=220)
    sf.write(root / "a.wav", x, sr)
    return root


def test_mode_defaults_are_what_the_authors_generate_call_sampled_with():
    """blueberry-eval calls model.generate(do_sample=True, temperature, top_p) without top_k,
    so transformers' default top_k applied."""
    from transformers import GenerationConfig

    hf_top_k = GenerationConfig._get_default_generation_params()["top_k"]
    asr, tts = mode_defaults("asr"), mode_defaults("tts")
    assert (asr.temperature, asr.top_p, asr.top_k, asr.max_new_tokens) == (0.5, 0.8, hf_top_k, 200)
    assert (tts.temperature, tts.top_p, tts.top_k, tts.max_new_tokens) == (0.9, 0.8, hf_top_k, 1500)


def test_hellaswag_continuation_follows_lm_eval(tiny):
    tok = tiny.tokenizer
    for context, ending in (("A man is sitting.", "he stands up."), ("Ctx", " Use soap.")):
        seq, chars = continuation_sequence(tok, context, ending)
        whole = tok.encode_text(context + " " + ending)  # target delimiter + choice, one string
        n_ctx = len(tok.encode_text(context))
        assert seq.ids.tolist() == [tok.bos, *whole]
        assert np.flatnonzero(seq.scored).tolist() == list(range(1 + n_ctx, 1 + len(whole)))
        assert chars == len(ending)  # process_results: len(choice), no delimiter


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--limit", "-1"]])
def test_bad_counts_are_refused_by_the_parser(tiny, tmp_path, flag):
    with pytest.raises(SystemExit) as e:
        eval_main(["pairs", "--model", tiny.hf, "--data", "x.jsonl", "--format", "jsonl",
                   "--output", str(tmp_path / "r.json"), *flag])
    assert e.value.code == 2


def test_asr_with_nothing_to_score_fails(tiny, speech, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(speech / "a.wav"), "text": "one two"}) + "\n")
    argv = ["asr", "--model", tiny.hf, "--codec", CODEC, "--data", str(manifest),
            "--output", str(tmp_path / "r.json"), "--max-new-tokens", "3"]
    assert eval_main([*argv, "--limit", "0"]) == 2
    assert json.load(open(tmp_path / "r.json"))["n"] == 0
    assert eval_main(argv) == 0


def _pairs(path, n):
    rows = [{"id": f"t{i}", "positive": {"text": f"the cat {i}"}, "negative": {"text": f"cat the {i}"}}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prepare_redoes_a_task_whose_limit_or_data_changed(tiny, tmp_path):
    data, prep = tmp_path / "p.jsonl", str(tmp_path / "prep")
    _pairs(data, 5)
    base = ["prepare", "--model", tiny.hf, "--task", f"t={data}:jsonl", "--output", prep]
    n = lambda: json.load(open(f"{prep}/prepared.json"))["tasks"]["t"]["n"]  # noqa: E731
    assert eval_main([*base, "--limit", "2"]) == 0 and n() == 2
    assert eval_main(base) == 0 and n() == 5
    _pairs(data, 7)
    assert eval_main(base) == 0 and n() == 7


def test_items_longer_than_the_model_are_skipped_and_named(tiny, tmp_path):
    data = tmp_path / "p.jsonl"
    _pairs(data, 2)
    long_text = " ".join(["word"] * 400)  # > 256 positions of the tiny model
    with open(data, "a") as f:
        f.write(json.dumps({"id": "long", "positive": {"text": long_text}, "negative": {"text": "x"}}) + "\n")
    out = tmp_path / "r.json"
    argv = ["pairs", "--model", tiny.hf, "--data", str(data), "--format", "jsonl", "--output", str(out)]
    assert eval_main(argv) == 2
    result = json.load(open(out))
    assert result["n"] == 2 and "item long" in result["errors"][0] and "256 positions" in result["errors"][0]


def test_generate_bad_settings_and_table_nulls_give_clean_errors(tiny, speech, tmp_path, capsys):
    argv = ["--model", tiny.hf, "--codec", CODEC, "--mode", "asr", "--audio", str(speech / "a.wav"),
            "--output-json", str(tmp_path / "o.json")]
    for bad in (["--top-p", "0"], ["--max-new-tokens", "0"], ["--temperature", "-1"]):
        assert generate_main([*argv, *bad]) == 2
        assert "generate: error:" in capsys.readouterr().err
    results = tmp_path / "n.json"
    results.write_text(json.dumps({"tasks": {"swuggy": {"accuracy": None}, "sblimp": {"accuracy": 0.5}}}))
    assert eval_main(["table", str(results)]) == 0
    table = capsys.readouterr().out
    assert "| n/a |" in table and "50.0" in table
