"""Steering the megatron-core model (steer/megatron_hooks.py, models/steering.py) and the trainer's
steered task evaluation (``--eval-tasks-steer*``).

The independent computation is the HF hook path (steer/hooks.py, the flags of
steer/cli_args.py as ``python -m megatron_soda.eval pairs --steer ...`` parses them) on the saved
checkpoint, one sequence at a time: the steered in-training item scores at TP=2 with
``--sequence-parallel`` must equal it within SCORE_ATOL (the unsteered tolerance of
tests/test_train_task_eval.py; a vector added on the wrong sequence block moved item scores by ~1e-4, over ten times the tolerance).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from helpers_train import base_args, make_dataset, read_metrics, torchrun
from test_train_task_eval import SCORE_ATOL, check_items, write_prepared

from megatron_soda.config.cli import parse_argv
from megatron_soda.format.kinds import KIND_TEXT, token_kinds
from megatron_soda.models.steering import in_units, layer_mask, position_mask, read_layer
from megatron_soda.steer import hooks
from megatron_soda.steer.vectors import SteeringVectors, load_vectors, save_vectors
from megatron_soda.tokenizer import SodaTokenizer

LAYER, ALPHA, MEDIAN_NORM = 1, 0.6, 2.5


@pytest.fixture(scope="module")
def tok(small_bpe_path):
    return SodaTokenizer(small_bpe_path, num_codebooks=8)


def write_vector(path: str, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vectors = {layer: torch.randn(hidden, generator=g) for layer in range(4)}
    save_vectors(path, SteeringVectors(vectors, "mean_shift", "test", {k: MEDIAN_NORM + k for k in range(4)},
                                       "soda", "0" * 64))
    return vectors[LAYER]


def _ids(tok: SodaTokenizer, b: int, s: int, seed: int = 0) -> torch.Tensor:
    """Random ids of every kind: text, markers, audio codes, BOS/EOS."""
    lay = tok.layout
    rng = np.random.default_rng(seed)
    special = np.array([*lay.marker_ids, tok.bos, tok.eod])
    kind = rng.integers(0, 3, (b, s))  # text, audio or not steered, a third each
    ids = np.where(kind == 0, rng.integers(300, 400, (b, s)),
                   np.where(kind == 1, rng.integers(lay.audio_offset, lay.audio_offset + 500, (b, s)),
                            rng.choice(special, (b, s))))
    return torch.from_numpy(ids.astype(np.int64))


# ---------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_each_sequence_parallel_rank_masks_its_own_block(tok, packed, tp):
    lay = tok.layout
    ids = _ids(tok, 3, 16)
    flat = ids.reshape(1, -1) if packed else ids  # the packed THD micro-batch is one row

    def steered(x):
        return position_mask(x, lay, "both")

    # by hand: row t, column j of the layer output is token (j, t) (sbhd; THD: token t of the
    # one row); sequence-parallel rank r holds rows r*n/tp .. (r+1)*n/tp - 1
    kinds = token_kinds(flat.numpy(), lay)
    cols, rows = flat.shape
    n = rows // tp
    blocks = []
    for r in range(tp):
        want = torch.zeros(n, cols, dtype=torch.bool)
        for t in range(r * n, (r + 1) * n):
            for j in range(cols):
                want[t - r * n, j] = bool(flat[j, t] >= lay.audio_offset or kinds[j, t] == KIND_TEXT)
        assert torch.equal(layer_mask(flat, steered, r, tp, sequence_parallel=True), want), (r, tp)
        blocks.append(want)
        # without sequence parallel every tensor-parallel rank holds the whole sequence
        assert layer_mask(flat, steered, r, tp, sequence_parallel=False).shape == (rows, cols)
    # the data can tell the blocks apart (a rank masking another rank's block would fail)
    assert all(not torch.equal(blocks[0], other) for other in blocks[1:])
    with pytest.raises(ValueError, match="do not split over 5"):
        layer_mask(flat, steered, 0, 5, sequence_parallel=True)


def test_vector_file_and_units_match_the_steer_reader(tmp_path):
    path = str(tmp_path / "v.safetensors")
    vec = write_vector(path)
    layer, got, norm = read_layer(path, LAYER)
    sv = load_vectors(path)
    assert layer == LAYER and torch.equal(got, sv.vector(LAYER)) and torch.equal(got, vec)
    assert norm == sv.median_norm[LAYER] == MEDIAN_NORM + LAYER
    assert torch.equal(in_units(got, "raw", norm), vec)
    np.testing.assert_allclose(in_units(got, "norm", norm).numpy(),
                               vec.numpy() / np.linalg.norm(vec.numpy()) * (MEDIAN_NORM + LAYER), rtol=1e-6)
    with pytest.raises(ValueError, match="holds layers"):
        read_layer(path, None)
    with pytest.raises(ValueError, match="no vector for layer 7"):
        read_layer(path, 7)


def _argv(small_bpe_path, tmp_path, *extra):
    return base_args(small_bpe_path, str(tmp_path / "speech"), str(tmp_path / "text"), str(tmp_path / "m.jsonl"),
                     *extra)


def test_steer_flags_are_checked_before_training(small_bpe_path, tok, tmp_path, capsys):
    write_prepared(str(tmp_path / "prep"), tok)
    vec = str(tmp_path / "v.safetensors")
    write_vector(vec)
    data = ["--eval-tasks-data", str(tmp_path / "prep")]
    cases = [(["--eval-tasks-steer-alpha", "1"], "--eval-tasks-steer-alpha needs --eval-tasks-steer"),
             (["--eval-tasks-steer-positions", "both"], "--eval-tasks-steer-positions needs --eval-tasks-steer"),
             (["--eval-tasks-steer", vec], "needs --eval-tasks-steer-alpha"),
             (["--eval-tasks-steer", vec, "--eval-tasks-steer-alpha", "1"], "holds layers [0, 1, 2, 3]: choose"),
             (["--eval-tasks-steer", vec, "--eval-tasks-steer-alpha", "1", "--eval-tasks-steer-layer", "9"],
              "no vector for layer 9"),
             (["--eval-tasks-steer", str(tmp_path / "none"), "--eval-tasks-steer-alpha", "1"], "no such file")]
    for flags, message in cases:
        with pytest.raises(SystemExit):
            parse_argv(_argv(small_bpe_path, tmp_path, *data, *flags))
        assert message in capsys.readouterr().err, message
    cfg = parse_argv(_argv(small_bpe_path, tmp_path, *data, "--eval-tasks-steer", vec, "--eval-tasks-steer-alpha",
                           "1", "--eval-tasks-steer-layer", "2"))
    assert cfg.task_eval.eval_tasks_steer_layer == 2
    # a vector made for another model: refused when the evaluator is built (before any process
    # group), not at the first evaluation
    from megatron_soda.config import ConfigError
    from megatron_soda.training.task_eval import TaskEvaluator

    for hidden, layer, message in ((64, 7, "the model has layers 0..3"), (65, 2, "hidden size is 64")):
        other = str(tmp_path / f"v{hidden}_{layer}.safetensors")
        save_vectors(other, SteeringVectors({layer: torch.ones(hidden)}, "mean_shift", "x", {layer: 1.0}, "soda",
                                            "0" * 64))
        cfg = parse_argv(_argv(small_bpe_path, tmp_path, *data, "--eval-tasks-steer", other,
                               "--eval-tasks-steer-alpha", "1"))
        with pytest.raises(ConfigError, match=message):
            TaskEvaluator.from_config(cfg, tok, 256)


# ---------------------------------------------------------------------------- end to end
def hf_scores(model: torch.nn.Module, task) -> list[tuple[float, int]]:
    from megatron_soda.tasks.scoring import masked_sum, token_logprobs

    out = []
    with torch.no_grad():
        for seq in task.sequences():
            ids = torch.from_numpy(seq.ids)[None]
            total, count = masked_sum(token_logprobs(model(input_ids=ids).logits, ids),
                                      torch.from_numpy(seq.scored)[None])
            out.append((float(total[0]), int(count[0])))
    return out


@pytest.mark.torchrun
@pytest.mark.usefixtures("one_torch_thread")
def test_steered_scores_at_tp2_sequence_parallel_equal_the_hf_hook(small_bpe_path, tok, tmp_path):
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.steer.cli_args import add_steer_args, steering_from_args
    from megatron_soda.tasks.prepared import item_results, read_prepared

    speech, text = make_dataset(str(tmp_path / "data"), tok, speech_docs=60, text_docs=30)
    prep, save, vec = str(tmp_path / "prep"), str(tmp_path / "save"), str(tmp_path / "v.safetensors")
    write_prepared(prep, tok)
    write_vector(vec)
    steer = ["--steer-layer", str(LAYER), "--steer-alpha", str(ALPHA), "--steer-alpha-units", "norm",
             "--steer-positions", "both"]
    metrics, items = str(tmp_path / "m.jsonl"), str(tmp_path / "items.jsonl")
    proc = torchrun(2, base_args(small_bpe_path, speech, text, metrics, "--tensor-model-parallel-size", "2",
                                 "--sequence-parallel", "--train-iters", "1", "--eval-interval", "1",
                                 "--eval-tasks", "apairs,tpairs", "--eval-tasks-data", prep,
                                 "--eval-tasks-items", items, "--save", save, "--eval-tasks-steer", vec,
                                 *[f"--eval-tasks-{f[2:]}" if f.startswith("--") else f for f in steer]))
    assert f"task evaluation also steered: {vec} layer {LAYER}" in proc.stdout

    loaded = load_model(save)
    tasks = {n: t for n, t in read_prepared(prep, tok).items() if n in ("apairs", "tpairs")}
    plain = {n: item_results(t, hf_scores(loaded.model, t)) for n, t in tasks.items()}
    p = argparse.ArgumentParser()
    add_steer_args(p, scope=False)  # what eval pairs parses
    steering = steering_from_args(p.parse_args(["--steer", vec, *steer]), loaded.model, loaded.tokenizer,
                                  warn=lambda m: None)
    with hooks.steering(loaded.model, loaded.tokenizer.layout, steering):
        steered = {n: item_results(t, hf_scores(loaded.model, t)) for n, t in tasks.items()}

    logged = [json.loads(line) for line in open(items)]
    worst = check_items([r for r in logged if not r.get("steered")], 1, tasks, plain)
    worst = max(worst, check_items([r for r in logged if r.get("steered")], 1, tasks, steered))
    assert all(r["steered"] is True for r in logged if "steered" in r)
    moved = max(abs(s["score_positive"] - p["score_positive"]) for n in tasks
                for s, p in zip(steered[n], plain[n], strict=True))
    assert moved > 100 * SCORE_ATOL  # the vector changes the scores: the hook is not a no-op
    record = read_metrics(metrics, "tasks")[-1]
    assert record["steered/apairs/margin"] == pytest.approx(
        np.mean([r["score_positive"] - r["score_negative"] for r in steered["apairs"]]), abs=SCORE_ATOL)
    assert record["apairs/margin"] != record["steered/apairs/margin"]
    print(f"max |in-training - HF| item score: {worst:.2e}; steering moved scores by up to {moved:.3f}")


def test_megatron_steering_adds_the_vector_to_the_chosen_layer_only(tok):
    """One process, TP=1: layer ``LAYER``'s output (sbhd) gains exactly alpha x vector at the
    steered tokens and nowhere else; the other layers' hooks see it; alpha 0 changes no bit."""
    from helpers_train import SingleProcessMegatron, build_tiny_model

    from megatron_soda.steer.megatron_hooks import megatron_steering

    ids = _ids(tok, 2, 16, seed=1)
    mask = torch.tensor([[bool(hooks.position_mask(torch.tensor(int(i)), tok.layout, "audio")) for i in row]
                         for row in ids])
    vec = torch.randn(64, generator=torch.Generator().manual_seed(3))
    with SingleProcessMegatron():
        model, _ = build_tiny_model(vocab_size=tok.layout.vocab_size)
        model.eval()

        def run():
            # recorders registered last: they see each layer's output after the steering hook
            outputs: dict[int, torch.Tensor] = {}
            handles = [layer.register_forward_hook(lambda m, a, out: outputs.__setitem__(m.layer_number - 1, out[0]))
                       for layer in model.decoder.layers]
            causal = torch.ones(16, 16, dtype=torch.bool).triu(1)[None, None]
            with torch.no_grad():
                logits = model(ids, torch.arange(16).expand(2, 16), causal)
            for h in handles:
                h.remove()
            return logits, outputs

        plain_logits, plain = run()
        with megatron_steering([model], tok.layout, hooks.Steering(vec, LAYER, 0.0)):
            assert torch.equal(run()[0], plain_logits)
        with megatron_steering([model], tok.layout, hooks.Steering(vec, LAYER, ALPHA, "audio")):
            logits, steered = run()
        assert torch.equal(run()[0], plain_logits)  # the hooks are gone
    for layer in range(LAYER):
        assert torch.equal(steered[layer], plain[layer])
    # by hand: [s, b, h] output, token (j, t) in row t, column j
    want = plain[LAYER] + (ALPHA * vec)[None, None] * mask.t()[..., None]
    torch.testing.assert_close(steered[LAYER], want, rtol=0, atol=1e-6)
    assert not torch.equal(steered[LAYER + 1], plain[LAYER + 1]) and not torch.equal(logits, plain_logits)
