"""Issue 15 end to end: a tiny CVSS-T set made with espeak-ng (German source voice, English
targets) -> preprocess_data.py (cvss) -> SFT shards -> finetune_soda.py from an HF export
(megatron-core) and the DeepSpeed ZeRO-2 path on the same shards -> eval s2st of the fine-tuned
checkpoint.  Each stage's own correctness is tested in its own file; this checks they connect:
the shards' layout is the model's, every stage trains on response tokens only, and the
fine-tuned checkpoint is evaluated directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers_train import REPO, _free_port, read_metrics

from megatron_soda.data.cli import preprocess_main
from megatron_soda.eval.cli import main as eval_main
from megatron_soda.format.sft import read_loss_starts
from megatron_soda.testing.cvss_sample import make_cvss_sample

pytestmark = [pytest.mark.torchrun,
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")]
CODEC = "random:tiny:0"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="",
           DS_ACCELERATOR="cpu")


def test_cvss_to_shards_to_finetuning_to_s2st_evaluation(tmp_path, small_bpe_path, tiny_soda):
    tiny = tiny_soda
    train = make_cvss_sample(tmp_path / "train", n_pairs=3, lang="de", split="train")
    test = make_cvss_sample(tmp_path / "test", n_pairs=1, lang="de", split="test")
    prefix = str(tmp_path / "shards" / "cvss_train")
    assert preprocess_main([
        "--input", train.cvss_root, "--input-format", "cvss", "--cvss-source-root", train.source_root,
        "--split", "train", "--output-prefix", prefix, "--tokenizer", small_bpe_path,
        "--codec", CODEC, "--workers", "1", "--log-level", "WARNING"]) == 0
    assert len(read_loss_starts(prefix)) == 3

    # megatron-core: fine-tune the HF export (converted once into SAVE/init_from_hf)
    save, metrics = str(tmp_path / "sft"), str(tmp_path / "sft.jsonl")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "1",
         "--master_port", str(_free_port()), os.path.join(REPO, "finetune_soda.py"),
         "--load", tiny.hf, "--save", save, "--data-path", prefix, "--device", "cpu",
         "--seq-length", "256", "--micro-batch-size", "1", "--global-batch-size", "2",
         "--train-iters", "2", "--lr", "1e-3", "--split", "100,0,0", "--log-interval", "1",
         "--data-check", "quick", "--metrics-jsonl", metrics],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = read_metrics(metrics)
    assert [r["iteration"] for r in records] == [1, 2]
    for r in records:  # both kinds of target in every window; only the response is trained
        assert r["response_tokens"] > 0 and r["prompt_tokens"] > 0
        assert r["response_loss"] == pytest.approx(r["lm_loss"], abs=1e-6)

    # the HF path on the same shards: the plain-torch engine in process, and DeepSpeed ZeRO-2
    # (CPU, gloo) where DeepSpeed is installed: the same first step
    from megatron_soda.finetune.deepspeed_main import build_parser, train

    hf_flags = ["--load", tiny.hf, "--data-path", prefix, "--seq-length", "256", "--micro-batch-size",
                "1", "--global-batch-size", "2", "--train-iters", "1", "--lr", "1e-3"]
    (plain,) = train(build_parser().parse_args(
        [*hf_flags, "--engine", "torch", "--device", "cpu", "--save", str(tmp_path / "plain")]))
    assert plain["response_tokens"] > 0 and plain["prompt_tokens"] > 0
    if _has_deepspeed():
        ds = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", "finetune", "finetune_deepspeed.py"), *hf_flags,
             "--engine", "deepspeed", "--zero-stage", "2", "--save", str(tmp_path / "ds"),
             "--metrics-jsonl", str(tmp_path / "ds.jsonl")],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert ds.returncode == 0, ds.stdout[-3000:] + ds.stderr[-5000:]
        (step,) = [json.loads(line) for line in open(tmp_path / "ds.jsonl")]
        assert step["response_tokens"] == plain["response_tokens"]
        assert step["lm_loss"] == pytest.approx(plain["lm_loss"], abs=1e-5)

    # the fine-tuned checkpoint, evaluated as saved (converted in memory)
    out = tmp_path / "s2st.json"
    assert eval_main([
        "s2st", "--model", save, "--codec", CODEC, "--data", test.cvss_root, "--split", "test",
        "--cvss-source-root", test.source_root, "--audio-dir", str(tmp_path / "wavs"),
        "--max-new-tokens", "48", "--device", "cpu", "--output", str(out)]) == 0
    result = json.load(open(out))
    assert result["n"] == 1 and result["model"]["kind"] == "megatron"
    assert result["model"]["iteration"] == 2 and "asr_bleu" in result


def _has_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None
