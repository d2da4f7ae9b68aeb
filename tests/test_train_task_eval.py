"""In-training task evaluation (``--eval-tasks``): the training model's scores of a prepared
directory equal the standalone evaluator's on the checkpoint it saves.

The standalone side is recomputed independently here: the saved checkpoint loaded as a
transformers Qwen3ForCausalLM (``convert.in_memory.load_model``), one sequence at a time, full
logits, ``tasks.scoring.token_logprobs`` (float64 log-softmax) and ``masked_sum``.

Tolerance: item mean scores within SCORE_ATOL = 1e-5 (the two paths differ by float rounding:
megatron vs transformers logits ~1e-6, fp32 vs float64 log-softmax ~1e-6 per token; measured
max difference is printed by the test), identical correct/incorrect decisions, hence identical
accuracies.  A wrong row, shift, mask, padding leak or data-parallel gather is >1e-2.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from helpers_train import base_args, make_dataset, read_metrics, torchrun

from megatron_soda.audio.codec import codec_fingerprint
from megatron_soda.config import ConfigError
from megatron_soda.config.cli import parse_argv
from megatron_soda.tasks.prepared import PreparedTask, item_results, sequence_record, write_meta
from megatron_soda.tasks.scoring import masked_sum, token_logprobs
from megatron_soda.tasks.sequences import audio_sequence, continuation_sequence, text_sequence
from megatron_soda.tokenizer import SodaTokenizer
from megatron_soda.training.task_eval import (
    MicroBatch,
    TaskEvaluator,
    plan,
    row_multiple,
    schedule_runs,
)

SCORE_ATOL = 1e-5
WORDS = "shall compare thee summer day thou art more lovely temperate question stage world players".split()


def _text(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def write_prepared(directory: str, tok: SodaTokenizer, seed: int = 0, codec: str = "random:tiny") -> dict:
    """Three tasks: audio pairs of 2..28 frames (sequences of 19..227 tokens: four length
    buckets) in two sub-tasks, text pairs, and 4-way text multiple choice."""
    rng = np.random.default_rng(seed)
    lay = tok.layout
    os.makedirs(directory, exist_ok=True)

    def audio() -> dict:
        codes = rng.integers(0, lay.codebook_size, (lay.num_codebooks, int(rng.integers(2, 29))))
        return sequence_record(audio_sequence(tok, codes), "audio")

    tasks = {
        "apairs": [{"id": f"a{i}", "subtask": "ab"[i % 2], "positive": audio(), "negative": audio()}
                   for i in range(11)],
        "tpairs": [{"id": f"t{i}", "subtask": "", "positive": sequence_record(text_sequence(tok, _text(rng, 2, 9)), "text"),
                    "negative": sequence_record(text_sequence(tok, _text(rng, 2, 9)), "text")} for i in range(5)],
        "choice": [],
    }
    for i in range(4):
        context, choices = _text(rng, 3, 12), []
        for _ in range(4):
            seq, chars = continuation_sequence(tok, context, _text(rng, 1, 6))
            choices.append({**sequence_record(seq, "text"), "chars": chars})
        tasks["choice"].append({"id": f"c{i}", "subtask": "", "label": int(rng.integers(4)), "choices": choices})
    for name, records in tasks.items():
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    kinds = {"apairs": "pairs", "tpairs": "pairs", "choice": "choice"}
    write_meta(directory, tok, codec, codec_fingerprint(codec),
               {n: {"kind": kinds[n], "n": len(r)} for n, r in tasks.items()})
    return tasks


# ---------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("mbs,dp", [(1, 1), (2, 2), (3, 4)])
def test_plan_covers_every_sequence_once_in_buckets_that_fit(mbs, dp):
    lengths = [int(x) for x in np.random.default_rng(mbs).integers(2, 300, 23)]
    seen: list[int] = []
    for rank in range(dp):
        batches = plan(lengths, mbs, rank, dp, seq_length=256)
        for mb in batches:
            assert len(mb.rows) == mbs and (mb.length % 64 == 0 or mb.length == 256)
            real = [i for i in mb.rows if i >= 0]
            assert all(min(lengths[i], 256) <= mb.length for i in real)
            seen += real
        runs = schedule_runs(batches, group=2)
        assert all(len(r) % 2 == 0 and len({mb.length for mb in r}) == 1 for r in runs)
        assert [mb for r in runs for mb in r if any(i >= 0 for i in mb.rows)] == batches
    assert sorted(seen) == list(range(len(lengths)))
    assert schedule_runs([MicroBatch((0,), 64)], group=2)[0][1].rows == (-1,)


@pytest.mark.parametrize("tp,cp", [(1, 3), (2, 3), (8, 16), (3, 1)])
def test_row_lengths_split_into_context_and_tensor_parallel_shards(tp, cp):
    """Every planned row splits into 2 x CP equal chunks and each rank's S / CP tokens into TP
    equal shards (sequence parallelism), whatever the sequences' lengths."""
    seq_length = math.lcm(2 * cp if cp > 1 else 1, tp) * 64  # a valid --seq-length for this layout
    lengths = [int(x) for x in np.random.default_rng(tp * cp).integers(2, seq_length, 17)]
    for mb in plan(lengths, 2, 0, 1, seq_length, row_multiple(tp, cp)):
        if cp > 1:
            assert mb.length % (2 * cp) == 0
        assert (mb.length // cp) % tp == 0 and mb.length <= seq_length


# ---------------------------------------------------------------------------- errors at start
@pytest.fixture(scope="module")
def tok(small_bpe_path):
    return SodaTokenizer(small_bpe_path, num_codebooks=8)


def _argv(small_bpe_path, tmp_path, *extra):
    return base_args(small_bpe_path, str(tmp_path / "speech"), str(tmp_path / "text"),
                     str(tmp_path / "m.jsonl"), *extra)


def test_unknown_task_is_refused_before_training(small_bpe_path, tok, tmp_path, capsys):
    write_prepared(str(tmp_path / "prep"), tok)
    with pytest.raises(SystemExit) as e:
        parse_argv(_argv(small_bpe_path, tmp_path, "--eval-tasks", "apairs,swugy", "--eval-tasks-data",
                         str(tmp_path / "prep")))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--eval-tasks: swugy not in" in err and "apairs, choice, tpairs" in err
    with pytest.raises(SystemExit):
        parse_argv(_argv(small_bpe_path, tmp_path, "--eval-tasks", "apairs"))
    assert "--eval-tasks needs --eval-tasks-data" in capsys.readouterr().err
    # the default is every task of the directory, comma lists are split
    cfg = parse_argv(_argv(small_bpe_path, tmp_path, "--eval-tasks-data", str(tmp_path / "prep")))
    assert cfg.task_eval.eval_tasks == ["apairs", "choice", "tpairs"]
    assert cfg.task_eval.eval_tasks_interval == cfg.checkpoint.eval_interval
    cfg = parse_argv(_argv(small_bpe_path, tmp_path, "--eval-tasks", "tpairs,apairs", "--eval-tasks-data",
                           str(tmp_path / "prep")))
    assert cfg.task_eval.eval_tasks == ["tpairs", "apairs"]


def test_prepared_for_another_tokenizer_or_too_long_is_refused(small_bpe_path, tok, tmp_path):
    write_prepared(str(tmp_path / "prep4"), SodaTokenizer(small_bpe_path, num_codebooks=4))
    cfg = parse_argv(_argv(small_bpe_path, tmp_path, "--eval-tasks-data", str(tmp_path / "prep4")))
    with pytest.raises(ConfigError, match="prepared for layout .* prepare it again"):
        TaskEvaluator.from_config(cfg, tok, 256)
    write_prepared(str(tmp_path / "prep"), tok)
    cfg = parse_argv(_argv(small_bpe_path, tmp_path, "--eval-tasks-data", str(tmp_path / "prep")))
    with pytest.raises(ConfigError, match="apairs: an item of .* does not fit --seq-length 128"):
        TaskEvaluator.from_config(cfg, tok, 128)
    assert TaskEvaluator.from_config(cfg, tok, 256).counts  # fits


# ---------------------------------------------------------------------------- end to end
def standalone_scores(save: str, task: PreparedTask) -> list[tuple[float, int]]:
    """HF forward of the saved checkpoint, one sequence at a time, float64 log-softmax."""
    from megatron_soda.convert.in_memory import load_model

    model = load_model(save).model
    out = []
    with torch.no_grad():
        for seq in task.sequences():
            ids = torch.from_numpy(seq.ids)[None]
            total, count = masked_sum(token_logprobs(model(input_ids=ids).logits, ids), torch.from_numpy(seq.scored)[None])
            out.append((float(total[0]), int(count[0])))
    return out


def check_items(logged: list[dict], iteration: int, tasks: dict, expected: dict) -> float:
    """The item records of one evaluation against the standalone's; returns the worst score
    difference."""
    worst = 0.0
    for name, task in tasks.items():
        got = [r for r in logged if r["iteration"] == iteration and r["task"] == name]
        assert [r["id"] for r in got] == [r["id"] for r in expected[name]]
        for g, e in zip(got, expected[name], strict=True):
            for key in ("score_positive", "score_negative") if task.kind == "pairs" else ():
                worst = max(worst, abs(g[key] - e[key]))
                assert g[key] == pytest.approx(e[key], abs=SCORE_ATOL), (name, g["id"], key)
            if task.kind == "choice":
                # sums of log-probabilities of the ending (acc uses them raw, acc_norm per char)
                np.testing.assert_allclose(g["logprobs"], e["logprobs"], atol=SCORE_ATOL * 10)
                assert (g["pred"], g["pred_norm"]) == (e["pred"], e["pred_norm"])
            assert g["correct"] == e["correct"]
    return worst


@pytest.mark.torchrun
@pytest.mark.usefixtures("one_torch_thread")
def test_in_training_scores_equal_the_standalone_evaluator(small_bpe_path, tok, tmp_path):
    from megatron_soda.tasks.prepared import read_prepared, summarize

    speech, text = make_dataset(str(tmp_path / "data"), tok, speech_docs=120, text_docs=60)
    prep, save = str(tmp_path / "prep"), str(tmp_path / "save")
    write_prepared(prep, tok)
    tasks_flags = ["--eval-tasks", "apairs,tpairs,choice", "--eval-tasks-data", prep, "--eval-tasks-interval", "1"]
    # PP=2 x DP=2: the pipeline broadcast from the last stage, items sharded over data-parallel
    # ranks and summed; several length buckets of 2-row micro-batches (the last one part empty).
    # (The scores come from the model's own loss path, vocab-parallel under TP like the training
    # loss, whose TP parity tests/test_train_torchrun.py checks.)
    metrics, items = str(tmp_path / "m.jsonl"), str(tmp_path / "items.jsonl")
    proc = torchrun(4, base_args(small_bpe_path, speech, text, metrics, "--pipeline-model-parallel-size", "2",
                                 "--train-iters", "2", "--eval-interval", "2", *tasks_flags,
                                 "--eval-tasks-items", items, "--save", save))
    assert "task evaluation every 1 iterations: apairs (11), tpairs (5), choice (4)" in proc.stdout
    assert "[tasks] iter 2 | apairs " in proc.stdout

    tasks = read_prepared(prep, tok)
    expected = {name: item_results(task, standalone_scores(save, task)) for name, task in tasks.items()}
    worst = check_items([json.loads(line) for line in open(items)], 2, tasks, expected)
    records = read_metrics(metrics, "tasks")
    assert [r["iteration"] for r in records] == [1, 2]
    for name, task in tasks.items():
        summary = summarize(task, expected[name])
        assert records[1][f"{name}/accuracy"] == summary["accuracy"] and records[1][f"{name}/n"] == summary["n"]
        for sub, m in summary.get("subtasks", {}).items():
            assert records[1][f"{name}/{sub}/accuracy"] == m["accuracy"]
    assert records[0]["apairs/margin"] != records[1]["apairs/margin"]  # the model trained in between
    print(f"max |in-training - standalone| item score: {worst:.2e}")
