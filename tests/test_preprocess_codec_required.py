"""The codec is never implicit: no --codec stops a speech run before it touches anything, a
random-weight codec is named and recorded as random, and the stages report their progress
against a total."""

from __future__ import annotations

import json
import logging
import os

import pytest

from megatron_soda.audio.codec import codec_fingerprint
from megatron_soda.data.cli import preprocess_main
from megatron_soda.data.inspect import inspect_main
from megatron_soda.testing.sample_data import make_sample_corpus


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    make_sample_corpus(
        str(root),
        num_recordings=1,
        utterances_per_recording=2,
        formats=("jsonl",),
        text_documents=0,
        text_source="fallback",
        workers=1,
    )
    return root / "speech.jsonl"


def argv(src, prefix, tokenizer, fmt="jsonl", *extra):
    return ["--input", str(src), "--input-format", fmt, "--output-prefix", str(prefix), "--tokenizer",
            tokenizer, "--workers", "1", *extra]  # fmt: skip


def tree(path) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(path)
        for f in files
    }


def test_no_codec_stops_before_reading_and_writes_nothing(speech, tmp_path, llama3_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("already here")
    before = tree(out)
    assert preprocess_main(argv(speech, out / "p", llama3_path)) == 2
    err = capsys.readouterr().err
    assert "preprocess_data: error: --codec is required for speech input" in err
    assert (
        "`hf download kyutai/mimi` (into the Hugging Face cache) and pass --codec kyutai/mimi"
        in err
    )
    assert "`hf download kyutai/mimi --local-dir DIR` and pass --codec DIR" in err
    assert "--codec random:tiny" in err
    assert tree(out) == before  # no shards, no codes cache, no error report
    # the inputs are not even listed first: a missing input gets the same answer
    assert preprocess_main(argv(tmp_path / "not-there.jsonl", out / "p", llama3_path)) == 2
    assert "--codec is required" in capsys.readouterr().err and tree(out) == before


def test_text_needs_no_codec(tmp_path, llama3_path):
    src = tmp_path / "text.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i}."}) + "\n" for i in range(3)))
    assert (
        preprocess_main(argv(src, tmp_path / "t", llama3_path, "text", "--log-level", "WARNING"))
        == 0
    )
    stats = json.load(open(tmp_path / "t.stats.json"))
    assert stats["codec"] is None and "codec_fingerprint" not in stats and stats["documents"] == 3


def test_random_codec_is_recorded_and_progress_has_a_total(
    speech, tmp_path, llama3_path, caplog, capsys
):
    prefix = tmp_path / "p"
    with caplog.at_level(logging.INFO):
        assert (
            preprocess_main(argv(speech, prefix, llama3_path, "jsonl", "--codec", "random:tiny:3"))
            == 0
        )
    stats = json.load(open(f"{prefix}.stats.json"))
    assert stats["codec"] == "random:tiny:3" and stats["codec_random"] is True
    assert stats["codec_fingerprint"] == codec_fingerprint("random:tiny:3")
    # the stages log done/total (stderr is no terminal here: no bar, log lines)
    size = os.path.getsize(speech) / 2**20
    done = [r.getMessage() for r in caplog.records if r.getMessage().endswith("(done)")]
    assert any(m.startswith(f"encode: {size:.1f} MiB/{size:.1f} MiB (100.0%)") for m in done), done
    assert any(m.startswith("tokenize: 1 chunks/1 chunks (100.0%)") for m in done), done
    capsys.readouterr()
    assert inspect_main([str(prefix)]) == 0
    shown = capsys.readouterr().out
    assert (
        '"codec_random": true' in shown
        and "note: codes from a random-weight codec (random:tiny:3)" in shown
    )
