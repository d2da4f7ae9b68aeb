"""End to end: real espeak-ng speech in every input format -> preprocess_data.py -> shards."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from megatron_soda.audio.codec import codec_fingerprint
from megatron_soda.data.cli import merge_main, preprocess_main
from megatron_soda.data.inspect import inspect_main
from megatron_soda.format import ShardError, read_document, validate_shard
from megatron_soda.testing.bad_inputs import make_bad_inputs
from megatron_soda.testing.sample_data import make_sample_corpus
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "preprocess", "preprocess_data.py")
N_REC, N_UTT = 3, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    summary = make_sample_corpus(
        str(root),
        num_recordings=N_REC,
        utterances_per_recording=N_UTT,
        seed=0,
        text_documents=8,
        text_source="fallback",
    )
    bad = make_bad_inputs(str(root / "bad"))
    return root, summary, bad


INPUTS = {"jsonl": "speech.jsonl", "webdataset": "emilia", "parquet": "yodas", "text": "text.jsonl"}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, llama3_path):
    """The in-process fp32 run of speech.jsonl that several tests compare against (read only).
    ``--chunk-utterances 2`` (several cached chunks for the worker-count test) gives the same
    bytes as the default chunking: chunks only group utterances in the cache."""
    root, _, _ = corpus
    prefix = tmp_path_factory.mktemp("reference") / "ref"
    extra = ["--chunk-utterances", "2", "--workers", "1"]
    assert run(None, llama3_path, prefix, "jsonl", root / "speech.jsonl", extra) == 0
    return prefix


def run(args, llama3_path, out, fmt="jsonl", src=None, extra=()):
    argv = [
        "--input",
        str(src),
        "--input-format",
        fmt,
        "--output-prefix",
        str(out),
        "--tokenizer",
        llama3_path,
        "--codec",
        "random:tiny",
        "--log-level",
        "WARNING",
        "--workers",
        "1",  # in-process; tests that want worker processes pass --workers again (last wins)
        *extra,
    ]
    return preprocess_main(argv)


def shard_docs(prefix):
    n = validate_shard(str(prefix)).documents
    return [read_document(str(prefix), i) for i in range(n)]


def outputs_bytes(prefix):
    return {
        ext: open(f"{prefix}{ext}", "rb").read()
        for ext in (".bin", ".idx", ".stats.json", ".errors.jsonl")
    }


def manifest_texts(root):
    with open(root / "speech.jsonl") as f:
        rows = [json.loads(line) for line in f]
    by_rec = {}
    for r in rows:
        by_rec.setdefault(r["recording_id"], []).append(r["text"])
    return by_rec


@pytest.mark.parametrize("fmt", ["jsonl", "webdataset", "parquet"])
def test_each_speech_format(corpus, tmp_path, llama3_path, soda_tokenizer, fmt):
    root, _, _ = corpus
    prefix = tmp_path / f"out_{fmt}"
    assert run(None, llama3_path, prefix, fmt, root / INPUTS[fmt]) == 0
    stats = json.load(open(f"{prefix}.stats.json"))
    assert stats["recordings"] == N_REC and stats["utterances"] == N_REC * N_UTT
    assert stats["documents"] == 2 * N_REC and stats["errors"] == 0
    assert stats["documents_by_variant"] == {"audio-first": N_REC, "text-first": N_REC}
    assert stats["layout"]["vocab_size"] == 144644 and stats["audio_hours"] > 0
    # the codec is recorded, and said to be random (the trainer compares fingerprints across a blend)
    assert stats["codec"] == "random:tiny" and stats["codec_random"] is True
    assert stats["codec_fingerprint"] == codec_fingerprint("random:tiny")
    docs = shard_docs(prefix)
    lay = soda_tokenizer.layout
    ts, te, as_, ae = lay.marker_ids
    total = {"text": 0, "semantic": 0, "acoustic": 0, "markers": 0}
    for k, doc in enumerate(docs):
        assert doc[0] == lay.bos_id and doc[-1] == lay.eos_id
        assert (
            (doc == ts).sum()
            == (doc == te).sum()
            == (doc == as_).sum()
            == (doc == ae).sum()
            == N_UTT
        )
        first = doc[1]
        assert first == (ts if k % 2 == 0 else as_)  # text-first then audio-first per recording
        for kind, v in lay.count_kinds(doc).items():
            total[kind] += v
        # every audio span is whole 8-codebook frames in frame-major order
        for kind, run_ids in soda_tokenizer.segments(doc):
            if kind == "audio":
                assert soda_tokenizer.decode_audio(run_ids).shape[0] == 8
    assert total == stats["tokens"]
    # both variants of a recording hold the same transcripts and the same codes
    for a, b in zip(docs[0::2], docs[1::2]):
        assert sorted(a.tolist()) == sorted(b.tolist())
    if fmt == "jsonl":
        texts = manifest_texts(root)
        rendered = [
            soda_tokenizer.decode_text(r)
            for kind, r in soda_tokenizer.segments(docs[0])
            if kind == "text"
        ]
        assert rendered == texts[sorted(texts)[0]]


def test_text_documents(corpus, tmp_path, llama3_path, soda_tokenizer):
    root, summary, _ = corpus
    prefix = tmp_path / "text"
    assert run(None, llama3_path, prefix, "text", root / "text.jsonl") == 0
    docs = shard_docs(prefix)
    with open(root / "text.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f]
    assert len(docs) == len(texts) == 8
    for doc, text in zip(docs, texts):
        assert doc[0] == soda_tokenizer.bos and doc[-1] == soda_tokenizer.eos
        assert soda_tokenizer.decode_text(doc[1:-1]) == text
        assert soda_tokenizer.layout.text_start_id not in doc


def test_same_bytes_whatever_the_worker_count(corpus, reference, tmp_path, llama3_path):
    root, _, _ = corpus
    # the reference: --chunk-utterances 2 --workers 1 (in-process)
    extra = ["--chunk-utterances", "2", "--workers", "2"]
    assert run(None, llama3_path, tmp_path / "w2", "jsonl", root / "speech.jsonl", extra) == 0
    assert outputs_bytes(reference) == outputs_bytes(tmp_path / "w2")


def test_killed_run_resumes_to_identical_bytes(corpus, tmp_path, llama3_path):
    root, _, _ = corpus
    # 24 recordings (the corpus's, repeated under new ids) = 24 cached chunks: the run is killed
    # after its first chunk, with most of its ~3 s of encoding (random:tiny) still to do
    n_chunks = 24
    rows = [json.loads(line) for line in open(root / "speech.jsonl")]
    with open(tmp_path / "m.jsonl", "w") as f:
        for k in range(n_chunks):
            for r in rows[k % N_REC * N_UTT : (k % N_REC + 1) * N_UTT]:
                audio = os.path.join(root, r["audio"])
                f.write(
                    json.dumps(
                        {**r, "id": f"{r['id']}-{k}", "recording_id": f"r{k}", "audio": audio}
                    )
                    + "\n"
                )
    src = tmp_path / "m.jsonl"
    extra = ["--chunk-utterances", "1"]
    prefix = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, TOOL, "--input", str(src), "--input-format", "jsonl", "--tokenizer",
         llama3_path, "--codec", "random:tiny", *extra, "--workers", "1", "--log-level", "WARNING",
         "--output-prefix", str(prefix)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    codes = f"{prefix}.codes"

    def chunks() -> list[str]:
        return [
            f
            for _, _, fs in os.walk(codes)
            for f in fs
            if f.startswith("chunk-") and f.endswith(".npz")
        ]

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not chunks():
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert 0 < len(chunks()) < n_chunks, "the run was not interrupted mid-way"
    assert not os.path.exists(f"{prefix}.idx")  # nothing looks finished
    # resumed (in-process: the same entry point as the tool) and an uninterrupted reference run
    assert run(None, llama3_path, prefix, "jsonl", src, extra) == 0
    ref = tmp_path / "ref"
    assert run(None, llama3_path, ref, "jsonl", src, extra) == 0
    assert outputs_bytes(prefix) == outputs_bytes(ref)


def test_bf16_codec_is_opt_in_and_recorded(corpus, reference, tmp_path, llama3_path):
    root, _, _ = corpus
    src = root / "speech.jsonl"
    fp32 = reference  # the default precision
    assert (
        run(
            None,
            llama3_path,
            tmp_path / "bf16",
            "jsonl",
            src,
            ["--codec-precision", "bf16", "--workers", "0"],
        )
        == 0
    )
    fp32_stats = json.load(open(f"{fp32}.stats.json"))
    bf16 = json.load(open(tmp_path / "bf16.stats.json"))
    assert "codec_precision" not in fp32_stats and bf16["codec_precision"] == "bf16"
    assert (
        bf16["documents"] == fp32_stats["documents"]
        and bf16["total_tokens"] == fp32_stats["total_tokens"]
    )
    a, b = shard_docs(fp32), shard_docs(tmp_path / "bf16")
    same = np.mean(np.concatenate(a) == np.concatenate(b))
    assert 0.5 < same < 1.0  # same structure, some codes differ: why it is not the default


def test_stages_apart_reuse_the_codes_cache(corpus, tmp_path, llama3_path, soda_tokenizer, capsys):
    root, _, _ = corpus
    src = root / "speech.jsonl"
    prefix = tmp_path / "staged"
    assert (
        run(None, llama3_path, prefix, "jsonl", src, ["--stage", "tokenize"]) == 2
    )  # no cache yet
    assert run(None, llama3_path, prefix, "jsonl", src, ["--stage", "encode"]) == 0
    assert not os.path.exists(f"{prefix}.bin")
    cached = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, fs in os.walk(f"{prefix}.codes")
        for f in fs
    }
    assert run(None, llama3_path, prefix, "jsonl", src, ["--stage", "tokenize"]) == 0
    eight = shard_docs(prefix)
    one = tmp_path / "one"
    extra = [
        "--stage",
        "tokenize",
        "--codes-dir",
        f"{prefix}.codes",
        "--num-codebooks",
        "1",
        "--interleave",
        "text-first",
    ]
    assert run(None, llama3_path, one, "jsonl", src, extra) == 0
    after = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, fs in os.walk(f"{prefix}.codes")
        for f in fs
    }
    assert after == cached  # the codec stage did not run again
    docs1 = shard_docs(one)
    assert len(docs1) == N_REC
    tok1 = SodaTokenizer(llama3_path, num_codebooks=1)
    a8 = [r for k, r in soda_tokenizer.segments(eight[0]) if k == "audio"]
    a1 = [r for k, r in tok1.segments(docs1[0]) if k == "audio"]
    assert [soda_tokenizer.decode_audio(r)[0].tolist() for r in a8] == [
        tok1.decode_audio(r)[0].tolist() for r in a1
    ]
    too_many = ["--stage", "tokenize", "--codes-dir", f"{prefix}.codes", "--num-codebooks", "16"]
    assert run(None, llama3_path, tmp_path / "x", "jsonl", src, too_many) == 2
    assert "holds 8 codebooks, 16 needed" in capsys.readouterr().err
    # the cache records its codec: codes from another codec are never taken for this one's
    other = ["--stage", "tokenize", "--codes-dir", f"{prefix}.codes", "--codec", "random:tiny:7"]
    assert run(None, llama3_path, tmp_path / "y", "jsonl", src, other) == 2
    assert "unit.json: made with codec" in capsys.readouterr().err
    # a saved tokenizer directory carries its number of codebooks; a flag restating it is checked
    saved = str(tmp_path / "tok1")
    tok1.save(saved)
    again = ["--stage", "tokenize", "--codes-dir", f"{prefix}.codes", "--interleave", "text-first"]
    assert run(None, saved, tmp_path / "dir", "jsonl", src, again) == 0
    assert open(f"{one}.bin", "rb").read() == open(tmp_path / "dir.bin", "rb").read()
    assert json.load(open(tmp_path / "dir.stats.json"))["num_codebooks"] == 1
    assert run(None, saved, tmp_path / "z", "jsonl", src, [*again, "--num-codebooks", "8"]) == 2
    assert "saved with 1 codebooks, 8 requested" in capsys.readouterr().err


def test_split_keeps_both_variants_together(corpus, tmp_path, llama3_path, caplog):
    import pyarrow.parquet as pq

    from megatron_soda.data.split import heldout_score

    root, _, _ = corpus
    ids = [
        r["id"]
        for f in sorted((root / "yodas").glob("*.parquet"))
        for r in pq.read_table(f, columns=["id"]).to_pylist()
    ]
    scores = sorted(heldout_score(i) for i in ids)
    fraction = (scores[0] + scores[1]) / 2  # exactly one recording held out
    prefix = tmp_path / "split"
    assert (
        run(
            None,
            llama3_path,
            prefix,
            "parquet",
            root / "yodas",
            ["--valid-fraction", str(fraction)],
        )
        == 0
    )
    stats = json.load(open(f"{prefix}.stats.json"))
    train, valid = (json.load(open(f"{prefix}_{s}.stats.json")) for s in ("train", "valid"))
    assert (train["recordings"], valid["recordings"]) == (N_REC - 1, 1)
    assert train["documents"] + valid["documents"] == stats["documents"] == 2 * N_REC
    for side in ("train", "valid"):
        docs = shard_docs(f"{prefix}_{side}")
        assert len(docs) == 2 * stats["splits"][side]["recordings"]
        for a, b in zip(docs[0::2], docs[1::2]):  # the two variants of one recording
            assert sorted(a.tolist()) == sorted(b.tolist())
    # the old spelling still works, with a deprecation warning, and gives the same shards
    with caplog.at_level(logging.WARNING):
        assert (
            run(
                None,
                llama3_path,
                tmp_path / "old",
                "parquet",
                root / "yodas",
                ["--split", str(fraction)],
            )
            == 0
        )
    assert "--split is deprecated in preprocess_data.py: use --valid-fraction" in caplog.text
    for side in ("train", "valid"):
        assert (
            open(f"{prefix}_{side}.bin", "rb").read()
            == open(f"{tmp_path}/old_{side}.bin", "rb").read()
        )


def test_slices_and_merge_cover_the_data(corpus, tmp_path, llama3_path):
    root, _, _ = corpus
    src = root / "speech.jsonl"
    assert run(None, llama3_path, tmp_path / "whole", "jsonl", src) == 0
    for i in range(2):
        extra = [
            "--num-shards",
            "2",
            "--shard-index",
            str(i),
            "--codes-dir",
            str(tmp_path / "codes"),
        ]
        assert run(None, llama3_path, tmp_path / "sh", "jsonl", src, extra) == 0
    assert os.path.exists(tmp_path / "sh_00001_of_00002.idx")
    assert merge_main(["--output-prefix", str(tmp_path / "sh"), "--num-shards", "2"]) == 0
    whole = sorted(d.tolist() for d in shard_docs(tmp_path / "whole"))
    merged = sorted(d.tolist() for d in shard_docs(tmp_path / "sh"))
    assert whole == merged
    assert (
        json.load(open(tmp_path / "sh.stats.json"))["tokens"]
        == json.load(open(tmp_path / "whole.stats.json"))["tokens"]
    )
    assert merge_main(["--output-prefix", str(tmp_path / "nope"), "--num-shards", "3"]) == 2


def _expected(bad, fmt):
    if fmt == "jsonl":
        rows = bad["jsonl"]["lines"]
        errors = {
            r["id"] if r["id"] else f"line {r['line']}" for r in rows if r["expect"] == "error"
        }
        return errors, sum(r["expect"] == "ok" for r in rows)
    items = bad[fmt]["items"] if fmt == "webdataset" else bad[fmt]["rows"]
    return {
        i.get("key") or i.get("utt_id") or i.get("id") for i in items if i["expect"] == "error"
    }, None


@pytest.mark.parametrize(
    "fmt,src", [("jsonl", "speech.jsonl"), ("webdataset", "emilia"), ("parquet", "yodas")]
)
def test_bad_inputs_are_logged_and_skipped(corpus, tmp_path, llama3_path, fmt, src):
    root, _, bad = corpus
    prefix = tmp_path / f"bad_{fmt}"
    rc = run(None, llama3_path, prefix, fmt, root / "bad" / src)
    assert rc == 3  # EXIT_ERROR_RATE: the error rate is far above the default 1%, but ...
    errors = [json.loads(line) for line in open(f"{prefix}.errors.jsonl")]
    stats = json.load(open(f"{prefix}.stats.json"))
    assert stats["errors"] == len(errors) > 0
    assert all(e["reason"] and e["file"] for e in errors)
    assert all(
        "0x" not in e["reason"] for e in errors
    )  # no memory addresses: reports are reproducible
    want, n_ok = _expected(bad, fmt)
    if fmt == "jsonl":
        got = {e["item"].split(" (line")[0] for e in errors}
        assert got == want
        assert stats["utterances"] == n_ok  # ... everything good was written
    else:
        assert len(errors) == len(want)
    assert validate_shard(str(prefix)).documents == stats["documents"] > 0
    assert (
        run(
            None,
            llama3_path,
            tmp_path / "lenient",
            fmt,
            root / "bad" / src,
            ["--max-error-rate", "1"],
        )
        == 0
    )


def test_fatal_argument_errors(corpus, tmp_path, llama3_path, capsys):
    root, _, _ = corpus
    assert run(None, llama3_path, tmp_path / "a", "jsonl", tmp_path / "no-such.jsonl") == 2
    assert "no such file" in capsys.readouterr().err
    argv = [
        "--input",
        str(root / "speech.jsonl"),
        "--input-format",
        "jsonl",
        "--output-prefix",
        str(tmp_path / "b"),
        "--tokenizer",
        str(tmp_path / "missing.json"),
        "--codec",
        "random:tiny",
    ]
    assert preprocess_main(argv) == 2
    assert "missing.json" in capsys.readouterr().err


def test_inspect_validates_and_renders(corpus, tmp_path, llama3_path, capsys):
    root, _, _ = corpus
    prefix = tmp_path / "insp"
    assert run(None, llama3_path, prefix, "jsonl", root / "speech.jsonl") == 0
    capsys.readouterr()
    assert inspect_main([str(prefix), "--tokenizer", llama3_path, "--docs", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "<|begin_of_text|><|text_start|>" in out and "[audio " in out
    cut = tmp_path / "cut"
    shutil.copy(f"{prefix}.idx", f"{cut}.idx")
    data = open(f"{prefix}.bin", "rb").read()
    open(f"{cut}.bin", "wb").write(data[: len(data) // 2])
    assert inspect_main([str(cut)]) == 1
    assert "truncated" in capsys.readouterr().err
    # a tokenizer of fewer codebooks is refused (ids out of its range: tests/test_format.py)
    small = SodaTokenizer(llama3_path, 1)
    with pytest.raises(ShardError, match=rf"{prefix}\.stats\.json: token layout"):
        validate_shard(str(prefix), small.layout)
    small.save(str(tmp_path / "tok1"))
    assert inspect_main([str(prefix), "--tokenizer", str(tmp_path / "tok1"), "--docs"]) == 2
    assert "num_codebooks" in capsys.readouterr().err
