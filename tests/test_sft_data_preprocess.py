"""End to end: a tiny espeak-ng CVSS-T set -> preprocess_data.py (cvss, s2st-jsonl) -> SFT shards
with loss starts, each document checked against an independent build from the clips."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from megatron_soda.data.cli import EXIT_ERROR_RATE, EXIT_FATAL, EXIT_OK, merge_main, preprocess_main
from megatron_soda.format import read_document, validate_shard
from megatron_soda.format.sft import LOSS_START_SUFFIX, read_loss_starts
from megatron_soda.format.shard_verify import check_stats_current
from megatron_soda.testing.cvss_sample import make_cvss_sample
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
N_GOOD = 3


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    s = make_cvss_sample(tmp_path_factory.mktemp("cvss"), n_pairs=N_GOOD + 1, lang="fr")
    os.remove(s.pairs[N_GOOD]["target_audio"])  # the last pair lacks its target clip
    return s


def _run(sample, llama3_path, prefix, *extra) -> int:
    return preprocess_main([
        "--input", sample.cvss_root, "--input-format", "cvss", "--cvss-source-root",
        sample.source_root, "--split", "train", "--output-prefix", str(prefix), "--tokenizer",
        llama3_path, "--codec", "random:tiny:0", "--workers", "1", "--log-level", "WARNING", *extra])


@pytest.fixture(scope="module")
def shards(sample, llama3_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    rc = _run(sample, llama3_path, out / "a")  # 1 error of 7 attempted > 0.01: exit 3, output kept
    rc_text = _run(sample, llama3_path, out / "b", "--sft-prompt-end", "source_text", "--stage",
                   "tokenize", "--codes-dir", str(out / "a.codes"), "--max-error-rate", "0.5")
    return out, rc, rc_text


@pytest.fixture(scope="module")
def reference(sample, llama3_path):
    """Each good pair's document, built without format/sft.py or the preprocessing stages: clips
    decoded and encoded by MimiCodec, the authors' f-string spelled token by token."""
    import torch

    from megatron_soda.audio.codec import MimiCodec
    from megatron_soda.audio.io import load_audio

    tok = SodaTokenizer(llama3_path, num_codebooks=8)
    lay = tok.layout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the codec stage's thread count: bit-identical codes
    codec = MimiCodec("random:tiny:0", num_codebooks=8)

    def audio(path):
        codes = codec.encode([load_audio(path)])[0]
        return [lay.audio_offset + cb * lay.codebook_size + int(codes[cb, f])
                for f in range(codes.shape[1]) for cb in range(8)]

    def span(text):
        return tok.base.encode(text, add_special_tokens=False).ids

    docs = []
    for p in sample.pairs[:N_GOOD]:
        docs.append([lay.bos_id, lay.audio_start_id, *audio(p["source_audio"]), lay.audio_end_id,
                     lay.text_start_id, *span(f"<language>fr</language>{p['source_text']}"),
                     lay.text_end_id, lay.text_start_id,
                     *span(f"<language>en</language>{p['target_text']}"), lay.text_end_id,
                     lay.audio_start_id, *audio(p["target_audio"]), lay.audio_end_id, lay.eos_id])
    torch.set_num_threads(threads)
    return lay, docs


@pytest.mark.parametrize("name,prompt_end,marker_index", [("a", "source_audio", 0),
                                                           ("b", "source_text", 1)])
def test_documents_and_loss_starts_match_an_independent_build(shards, reference, name, prompt_end,
                                                              marker_index):
    out, rc, rc_text = shards
    assert (rc, rc_text) == (EXIT_ERROR_RATE, EXIT_OK)
    lay, want = reference
    prefix = str(out / name)
    summary = validate_shard(prefix, lay, check_boundaries=True, check_stats=True)
    assert summary.loss_starts and summary.documents == N_GOOD
    docs = [read_document(prefix, i).tolist() for i in range(N_GOOD)]
    assert docs == want
    starts = read_loss_starts(prefix)
    assert starts.tolist() == [[i for i, t in enumerate(d) if t == lay.text_start_id][marker_index]
                               for d in want]
    stats = json.load(open(prefix + ".stats.json"))
    assert stats["sft"] == {"format": "s2st", "prompt_end": prompt_end, "documents": N_GOOD}
    assert LOSS_START_SUFFIX in stats["files"] and stats["documents_by_variant"] == {"s2st": N_GOOD}
    (err,) = [json.loads(line) for line in open(prefix + ".errors.jsonl")]
    assert err["item"].startswith("common_voice_fr_1003.mp3") and "target clip" in err["reason"]


def test_prompt_end_changes_only_the_sidecar(shards):
    out = shards[0]
    for ext in (".bin", ".idx"):
        assert open(out / f"a{ext}", "rb").read() == open(out / f"b{ext}", "rb").read()
    assert read_loss_starts(str(out / "a")).tolist() != read_loss_starts(str(out / "b")).tolist()
    # a sidecar swapped in from other shards no longer matches the stats' record
    shutil.copy(out / f"b{LOSS_START_SUFFIX}", out / f"c{LOSS_START_SUFFIX}")
    for ext in (".bin", ".idx", ".stats.json"):
        shutil.copy(out / f"a{ext}", out / f"c{ext}")
    with pytest.raises(ValueError, match="loss_start.npy has sha256"):
        check_stats_current(str(out / "c"), N_GOOD, validate_shard(str(out / "a")).tokens)


def test_s2st_jsonl_gives_the_same_shards_and_merge_keeps_loss_starts(sample, shards, llama3_path,
                                                                        tmp_path):
    out = shards[0]
    jsonl = sample.write_jsonl(str(tmp_path / "pairs.jsonl"))
    rc = preprocess_main(["--input", jsonl, "--input-format", "s2st-jsonl", "--output-prefix",
                          str(tmp_path / "j"), "--tokenizer", llama3_path, "--codec", "random:tiny:0",
                          "--workers", "1", "--log-level", "WARNING", "--max-error-rate", "0.5"])
    assert rc == EXIT_OK
    for ext in (".bin", ".idx", LOSS_START_SUFFIX):
        assert open(tmp_path / f"j{ext}", "rb").read() == open(out / f"a{ext}", "rb").read()
    assert merge_main(["--output-prefix", str(tmp_path / "m"), "--inputs", str(out / "a"),
                       str(tmp_path / "j")]) == EXIT_OK
    starts = read_loss_starts(str(tmp_path / "m"))
    assert starts.tolist() == 2 * read_loss_starts(str(out / "a")).tolist()
    assert validate_shard(str(tmp_path / "m"), check_stats=True).loss_starts


def test_bad_sft_arguments_are_fatal(sample, llama3_path, tmp_path, capsys):
    argv = ["--input", sample.cvss_root, "--input-format", "cvss", "--output-prefix",
            str(tmp_path / "x"), "--tokenizer", llama3_path, "--codec", "random:tiny:0"]
    assert preprocess_main(argv) == EXIT_FATAL
    assert "--cvss-source-root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess_main([*argv, "--cvss-source-root", sample.source_root, "--split", "0.1"])
    assert not np.any([os.path.exists(tmp_path / f"x{e}") for e in (".bin", ".idx")])
