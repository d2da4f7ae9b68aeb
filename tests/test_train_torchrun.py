"""pretrain_soda.py end to end under torchrun (gloo, CPU): parallel layouts against one process,
kill-and-resume, checkpoints across layouts, and the messages a user gets for bad input.

Parity tolerance: fp32 everywhere; the only differences between layouts are the order of float
additions in all-reduces and sharded matmuls, so every iteration's lm_loss must agree within
PARITY_ATOL = 1e-5 (losses are ~9.7, i.e. 1e-6 relative; measured differences are ~3e-8, and a
wrong init, data order or gradient shows up as >1e-3).  Resuming replays the same computation in
the same layout, so resumed losses must be *identical*.

The default optimizer, Cautious, is discontinuous in the gradient: an element whose update and
gradient nearly cancel (``u * g`` ~ 0) is kept or masked by the last bit of ``g``.  Under tensor
parallelism (sharded matmuls sum in another order) a handful of such elements flip from about
iteration 4 on (measured: 1 of 49,152 at iteration 4), and the runs then drift apart
chaotically, by 1.2e-4 at iteration 9.  So:

* data parallel with the distributed optimizer is tested *bit-identical* to one process, in a
  setting where the gradients are too (one micro-batch per rank, so the all-reduce adds the same
  two terms as one process's accumulation, halving is exact, and no clipping rescales them):
  any error in the mask statistic over sharded parameters would show;
* tensor parallel runs Cautious to PARITY_ATOL for the first MASK_EXACT_ITERS iterations (the
  statistic over vocabulary-parallel and q/k/v-split tensors enters every update) and within
  MASK_DRIFT_ATOL after; with Adam it keeps PARITY_ATOL throughout (sequence parallel case);
* pipeline parallel keeps the reduction order and PARITY_ATOL throughout, with Cautious.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers_train import base_args, losses, read_metrics, torchrun, train_workspace, write_shard

from megatron_soda.audio.codec import codec_fingerprint
from megatron_soda.checkpointing import layout
from megatron_soda.config import TrainConfig
from megatron_soda.config.cli import parse_argv
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.torchrun

PARITY_ATOL = 1e-5
MASK_EXACT_ITERS = 3
MASK_DRIFT_ATOL = 1e-3
ITERS = 12
# One micro-batch per data-parallel rank and a clip threshold above every gradient norm: the
# gradients of DP2 and of one process are the same bits (see the module docstring).
ORDER_EXACT = ["--global-batch-size", "4", "--clip-grad", "100"]
DP_ITERS = 8


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_bpe_path):
    return train_workspace(tmp_path_factory.mktemp("train"), small_bpe_path)


def launch(work, name: str, nproc: int, *extra: str, check: bool = True):
    metrics = str(work["root"] / f"{name}.jsonl")
    proc = torchrun(nproc, base_args(work["tok"], work["speech"], work["text"], metrics, *extra), check=check)
    return metrics, proc


def launch_together(work, *runs: tuple) -> list:
    """Independent launches ``(name, nproc, extra, check)`` at the same time (a one-process run
    leaves the other core of a 2-core CI machine idle); ``launch``'s results, in order."""
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = [pool.submit(launch, work, name, nproc, *extra, check=check) for name, nproc, extra, check in runs]
        return [f.result() for f in futures]


@pytest.fixture(scope="module")
def baseline(work):
    """The issue's command, one process, checkpoints every 6 iterations."""
    ckpt = str(work["root"] / "ck_base")
    metrics, proc = launch(work, "baseline", 1, "--save", ckpt, "--save-interval", "6")
    return {"metrics": metrics, "losses": losses(metrics), "ckpt": ckpt, "stdout": proc.stdout}


SP_ADAM = ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--optimizer", "adam"]


@pytest.fixture(scope="module")
def adam_runs(work):
    """One process and TP2 + sequence parallel, both with Adam: independent, launched together."""
    (one, _), (sp, _) = launch_together(work, ("baseline_adam", 1, ["--optimizer", "adam"], True),
                                        ("tp2_sp_adam", 2, SP_ADAM, True))
    return {"one": losses(one), "tp2_sp": losses(sp)}


@pytest.fixture(scope="module")
def baseline_adam(adam_runs):
    return {"losses": adam_runs["one"]}


@pytest.fixture(scope="module")
def tp2(work):
    ckpt, tb = str(work["root"] / "ck_tp2"), str(work["root"] / "tb_tp2")
    metrics, _ = launch(work, "tp2", 2, "--tensor-model-parallel-size", "2", "--save", ckpt, "--save-interval", "6",
                        "--tensorboard-dir", tb)
    return {"metrics": metrics, "losses": losses(metrics), "ckpt": ckpt, "tensorboard": tb}


def assert_parity(got: dict[int, float], want: dict[int, float], iterations) -> None:
    for it in iterations:
        assert abs(got[it] - want[it]) <= PARITY_ATOL, f"iteration {it}: {got[it]} vs {want[it]}"


def wsd_lr(step: int, peak: float, warmup: int, total: int, decay: int) -> float:
    if step <= warmup:
        return peak * step / warmup
    start = total - decay
    return peak if step <= start else peak * (1 - (step - start) / decay)


def test_single_process_run_writes_the_metrics_and_checkpoints(work, baseline):
    records = read_metrics(baseline["metrics"])
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    for r in records:
        assert math.isfinite(r["lm_loss"]) and r["lm_loss"] > 0
        assert r["loss"] == pytest.approx(r["lm_loss"] + 1e-4 * r["z_loss"])
        for kind in ("text", "semantic", "acoustic", "markers"):
            assert math.isfinite(r[f"loss_{kind}"])
        assert r["tokens_per_sec"] > 0 and r["tflops_per_device"] > 0 and r["grad_norm"] > 0
        assert r["mfu"] is None  # no known peak on a CPU
        assert r["consumed_samples"] == 8 * r["iteration"]
    # WSD: 10% linear warmup from 0, constant, linear decay over the last 20% (lr used by each step)
    want = [wsd_lr(i, 1e-3, warmup=1, total=ITERS, decay=2) for i in range(ITERS)]
    assert [r["lr"] for r in records] == pytest.approx(want)
    (valid,) = read_metrics(baseline["metrics"], "valid")
    assert valid["iteration"] == ITERS and math.isfinite(valid["lm_loss"]) and valid["tokens"] == 8 * 256

    ck = baseline["ckpt"]
    assert layout.read_tracker(ck) == ITERS
    meta = layout.read_meta(layout.iteration_dir(ck, 6))
    assert meta["train_state"] == {"iteration": 6, "consumed_samples": 48, "skipped_iterations": 0}
    assert meta["model"]["num_layers"] == 4 and meta["model"]["padded_vocab_size"] % 128 == 0
    # the codec of the training data (speech shards record it; the text shard has none)
    assert meta["data"] == {"codec": "random:tiny", "codec_fingerprint": codec_fingerprint("random:tiny"),
                            "codec_random": True}
    saved_tok = SodaTokenizer.from_pretrained(os.path.join(layout.iteration_dir(ck, 6), "tokenizer"))
    assert dict(saved_tok.unique_identifiers)["layout"] == meta["tokenizer"]["layout"]
    # run_args.json: the typed config (it rebuilds the run) and what the run derived from it
    with open(os.path.join(layout.iteration_dir(ck, 6), "run_args.json")) as f:
        record = json.load(f)
    argv = base_args(work["tok"], work["speech"], work["text"], baseline["metrics"], "--save", ck,
                     "--save-interval", "6")
    assert TrainConfig.from_dict(record).validate() == parse_argv(argv)
    derived = record["derived"]
    assert derived["architecture"] == meta["model"] and derived["lr"] == 1e-3
    assert (derived["num_codebooks"], derived["data_parallel_size"], derived["num_micro_batches"]) == (8, 1, 4)


def assert_cautious_parity(got: dict[int, float], want: dict[int, float]) -> None:
    assert_parity(got, want, range(1, MASK_EXACT_ITERS + 1))
    for it in range(MASK_EXACT_ITERS + 1, ITERS + 1):
        assert abs(got[it] - want[it]) <= MASK_DRIFT_ATOL, f"iteration {it}: {got[it]} vs {want[it]}"


def test_tensor_parallel_matches_one_process(baseline, tp2):
    assert_cautious_parity(tp2["losses"], baseline["losses"])
    grad = {r["iteration"]: r["grad_norm"] for r in read_metrics(tp2["metrics"])}
    base = {r["iteration"]: r["grad_norm"] for r in read_metrics(baseline["metrics"])}
    # megatron computes the norm in fp32 (its no-Apex fallback sums ~1e6 squares): ~3e-5 relative noise
    assert all(grad[i] == pytest.approx(base[i], rel=1e-3) for i in range(1, MASK_EXACT_ITERS + 1))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tp2["tensorboard"]))


@pytest.mark.parametrize("name,flags", [
    ("pp2", ["--pipeline-model-parallel-size", "2"]),
    ("pp2_vpp2", ["--pipeline-model-parallel-size", "2", "--num-virtual-stages-per-pipeline-rank", "2"]),
])
def test_pipeline_layouts_match_one_process(work, baseline, name, flags):
    metrics, _ = launch(work, name, 2, *flags)
    assert_parity(losses(metrics), baseline["losses"], range(1, ITERS + 1))


def test_sequence_parallel_with_adam_matches_one_process(adam_runs):
    assert sorted(adam_runs["tp2_sp"]) == list(range(1, ITERS + 1))
    assert_parity(adam_runs["tp2_sp"], adam_runs["one"], range(1, ITERS + 1))


def test_cautious_differs_from_adam(baseline, baseline_adam):
    assert baseline["losses"][1] == baseline_adam["losses"][1]  # same model, same first batch
    assert all(abs(baseline["losses"][i] - baseline_adam["losses"][i]) > 1e-4 for i in range(3, ITERS + 1))


def test_data_parallel_distributed_optimizer_is_exact_and_survives_a_crash_while_saving(work):
    # DP_ITERS: bit-identity shows from the first update on (no warmup at 8 iterations), the
    # resume from DP_ITERS // 2 runs into the WSD decay; the one-process reference (independent)
    # runs beside the first DP2 run
    ckpt, iters = str(work["root"] / "ck_dp2"), ["--train-iters", str(DP_ITERS)]
    flags = [*ORDER_EXACT, *iters, "--use-distributed-optimizer", "--save", ckpt, "--save-interval", str(DP_ITERS // 2)]
    (one, _), (first, proc) = launch_together(
        work, ("one_order_exact", 1, [*ORDER_EXACT, *iters], True),
        ("dp2", 2, [*flags, "--inject-crash-in-save", str(DP_ITERS)], False))
    assert proc.returncode != 0
    uninterrupted = losses(first)  # every step ran; the crash hit while writing the last checkpoint
    assert sorted(uninterrupted) == list(range(1, DP_ITERS + 1))
    assert uninterrupted == losses(one)  # Cautious's statistic over the shards is the whole one's
    assert layout.read_tracker(ckpt) == DP_ITERS // 2  # the half-written checkpoint was never published
    assert os.path.isdir(layout.iteration_dir(ckpt, DP_ITERS) + ".tmp")

    resumed, proc = launch(work, "dp2_resumed", 2, *flags)  # auto-resume from --save
    assert "loaded " + layout.iteration_dir(ckpt, DP_ITERS // 2) in proc.stdout
    got = losses(resumed)
    assert sorted(got) == list(range(DP_ITERS // 2 + 1, DP_ITERS + 1))
    assert all(got[i] == uninterrupted[i] for i in got), (got, uninterrupted)
    assert layout.read_tracker(ckpt) == DP_ITERS and not os.path.exists(layout.iteration_dir(ckpt, DP_ITERS) + ".tmp")


@pytest.fixture(scope="module")
def restarts(work, baseline):
    """The one-process runs of two tests, launched in pairs (independent runs, one core each): a
    run killed after its checkpoint of 6 beside a fine-tune of the baseline stopped at 2 by
    --exit-interval, then both restarted with the same command.  Each test checks its own."""
    kill_ckpt, own = str(work["root"] / "ck_kill"), str(work["root"] / "ck_ft")
    kill = ["--save", kill_ckpt, "--save-interval", "6"]
    ft = ["--load", baseline["ckpt"], "--finetune", "--train-iters", "4", "--save", own, "--save-interval", "2"]
    # killed one iteration after its checkpoint of 6: iteration 7 is lost and redone
    killed, ft_first = launch_together(work, ("killed", 1, [*kill, "--inject-crash-at-iteration", "7"], False),
                                       ("ft", 1, [*ft, "--exit-interval", "2"], False))
    kill_tracker = layout.read_tracker(kill_ckpt)
    resumed, ft_again = launch_together(work, ("killed_resumed", 1, kill, False), ("ft", 1, ft, False))
    return {"killed": killed, "kill_tracker": kill_tracker, "resumed": resumed, "own": own, "ft_first": ft_first,
            "ft_again": ft_again}


def succeeded(proc) -> bool:
    """Whether a launch of ``restarts`` exited 0; prints the output's tail where not."""
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-6000:])
    return proc.returncode == 0


def test_one_process_kill_and_resume_equals_never_stopping(baseline, restarts):
    killed, proc = restarts["killed"]
    assert proc.returncode != 0 and restarts["kill_tracker"] == 6
    assert losses(killed) == {i: baseline["losses"][i] for i in range(1, 8)}
    resumed, proc = restarts["resumed"]
    assert succeeded(proc)
    assert losses(resumed) == {i: baseline["losses"][i] for i in range(7, ITERS + 1)}


@pytest.mark.parametrize("name,nproc,flags", [("tp2_to_tp1", 1, []),
                                              ("tp2_to_pp2", 2, ["--pipeline-model-parallel-size", "2"])])
def test_tensor_parallel_checkpoint_loads_in_other_layouts(work, tp2, name, nproc, flags):
    metrics, proc = launch(work, name, nproc, *flags, "--load", layout.iteration_dir(tp2["ckpt"], 6))
    assert "RNG state not restored" in proc.stdout  # other TP/PP: weights, optimizer, schedule, data only
    got = losses(metrics)
    assert sorted(got) == list(range(7, ITERS + 1))
    assert_parity(got, tp2["losses"], range(7, 7 + MASK_EXACT_ITERS))  # then Cautious's drift:
    assert all(abs(got[i] - tp2["losses"][i]) <= MASK_DRIFT_ATOL for i in got)  # see the docstring


def test_checkpoint_of_another_shape_is_refused(work, baseline):
    _, proc = launch(work, "wrong_shape", 1, "--num-layers", "2", "--load", baseline["ckpt"], check=False)
    assert proc.returncode != 0
    assert (f"pretrain_soda.py: error: {layout.iteration_dir(baseline['ckpt'], ITERS)}: checkpoint of another "
            "model shape (num_layers: checkpoint 4 vs this run 2)") in proc.stderr


def test_missing_data_prefix_is_reported_with_its_path(work):
    missing = str(work["root"] / "data" / "nowhere" / "shard")
    _, proc = launch(work, "missing", 1, "--data-path", work["speech"], missing, check=False)
    assert proc.returncode != 0
    assert f"pretrain_soda.py: error: {missing}.idx: missing" in proc.stderr


def test_a_blend_of_two_codecs_is_refused(work):
    other = write_shard(str(work["root"] / "data" / "other" / "shard"), SodaTokenizer(work["tok"], num_codebooks=8),
                        "speech", 50, seed=3, codec="random:tiny:7")
    _, proc = launch(work, "mixed", 1, "--data-path", "0.5", work["speech"], "0.5", other, check=False)
    assert proc.returncode != 0
    assert (f"pretrain_soda.py: error: the data blend mixes shards made differently: {work['speech']} has "
            f"codec_fingerprint {codec_fingerprint('random:tiny')}, {other} has codec_fingerprint "
            f"{codec_fingerprint('random:tiny:7')}") in proc.stderr


def test_resuming_on_shards_of_another_codec_is_refused(work, baseline):
    """The baseline checkpoint records random:tiny; its speech re-made with random:tiny:7."""
    other = write_shard(str(work["root"] / "data" / "other7" / "shard"), SodaTokenizer(work["tok"], num_codebooks=8),
                        "speech", 400, seed=3, codec="random:tiny:7")
    blend = ("--data-path", "0.5", other, "0.5", work["text"])
    _, proc = launch(work, "other_codec", 1, *blend, "--load", baseline["ckpt"], check=False)
    assert proc.returncode != 0
    assert "pretrain_soda.py: error: " in proc.stderr and "trained on shards of codec random:tiny " in proc.stderr
    assert "resuming would mix the codes of two codecs" in proc.stderr


def test_global_batch_that_does_not_split_into_micro_batches_is_reported(work):
    _, proc = launch(work, "bad_batch", 1, "--micro-batch-size", "3", check=False)
    assert proc.returncode != 0
    assert "AssertionError" not in proc.stderr  # stopped before megatron's calculator asserts
    assert ("pretrain_soda.py: error: global batch 8 is not a multiple of micro batch 3 x data-parallel "
            "size 1") in proc.stderr


def test_non_finite_loss_stops_or_skips(work):
    flags = ["--lr", "1e30", "--lr-warmup-iters", "0", "--train-iters", "3"]
    (_, proc), (metrics, _) = launch_together(work, ("nan_stop", 1, flags, False),
                                              ("nan_skip", 1, [*flags, "--on-nonfinite-loss", "skip"], True))
    assert proc.returncode != 0
    assert "pretrain_soda.py: error: non-finite loss" in proc.stderr and "iteration 2" in proc.stderr
    records = read_metrics(metrics)
    assert [r["skipped_iterations"] for r in records] == [0, 1, 2]
    assert json.loads(json.dumps(records[-1]["lm_loss"])) == "nan"


def test_requeued_finetune_resumes_from_its_own_save_not_from_load(restarts):
    """A fine-tune started with --load BASE --finetune --save OWN, stopped and restarted with the
    same command (a Slurm requeue), continues from OWN, not from BASE's weights again."""
    metrics, first = restarts["ft_first"]
    assert succeeded(first) and "from iteration 0" in first.stdout  # --finetune: weights only, a fresh run
    _, again = restarts["ft_again"]
    assert succeeded(again)
    assert f"loaded {restarts['own']}" in again.stdout and "from iteration 2" in again.stdout
    assert [r["iteration"] for r in read_metrics(metrics)] == [1, 2, 3, 4]
