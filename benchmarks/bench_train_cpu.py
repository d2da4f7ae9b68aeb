#!/usr/bin/env python
"""CPU training benchmark: megatron_soda's training step against a plain PyTorch step of
``transformers``' Qwen3ForCausalLM with the same shapes, in the same run.

Each timed run is a fresh interpreter (the benchmark re-invokes itself with ``--one``), so
thread settings, allocator state and the CPU compatibility layer of one run cannot leak into
the next; runs of the different kinds alternate within every repeat (the order flips from one
repeat to the next) and the ratios are taken between runs of the same repeat.

Kinds of run:

* ``megatron``: the trainer's real pieces in-process, 1 process (gloo, world size 1) under the
  CPU compatibility layer, fp32: ``parse_argv`` with pretrain_soda.py's flags, the
  ``Trainer``'s set-up (SodaGPTModel from the presets, megatron DDP,
  ``get_megatron_optimizer``, WSD scheduler, BlendedMegatronDatasetBuilder/GPTDataset over a
  95/5 speech/text blend), then per iteration what ``Trainer.train`` does: fetch the micro-batches
  (GPTDataset through the DataLoader, then ``make_batch``: document masks from EOS, restarted
  position ids) and ``train_step`` (megatron's forward_backward schedule + optimizer step).
  Data time and step time are timed separately.
* ``megatron-e2e``: ``torchrun --nproc_per_node 1 pretrain_soda.py`` itself; tokens/s is read
  from its metrics JSONL (``tokens_per_sec`` of every iteration after the warm-up, which
  includes the data pipeline and logging).
* ``hf``: ``transformers.Qwen3ForCausalLM`` with the same config (padded vocabulary, untied
  embeddings, GQA, QK-norm, RoPE base 1e6), default attention (SDPA), fp32, the same loss
  (per-token cross-entropy + 1e-4 * logsumexp^2), ``torch.optim.AdamW`` (the class megatron's
  optimizer uses on CPU; same betas/eps/weight decay, no decay on norms and the input
  embedding), grad-norm clipping at 1.0, gradient accumulation over the same micro-batches.
  Document masking: restarted ``position_ids`` with ``attention_mask=None``, from which
  transformers builds a packed-sequence (document) mask; every run checks that it does
  (``doc_mask_leak`` must be 0.0).  Batches are built before the clock.
* ``hf-eager``: the same with ``attn_implementation="eager"``: scores, mask and softmax
  materialised as in megatron-core's local attention.
* ``data``: the trainer's data pipeline alone (tiny model, so building is quick) at another
  sequence length, e.g. the paper's 4096: ms per micro-batch for the GPTDataset fetch and for
  ``make_batch`` (dense mask, as on CPU; and the packed THD layout that TE runs use).
* any kind with ``+keep`` appended (``megatron+keep``): the same under a glibc allocator that
  keeps freed memory for reuse (``--allocator keep`` applies it to every kind).

Timing: tokens/s from the median step time of each run, and tokens per CPU-second of the
process (user + system, so page faults count; robust against other jobs on a shared
machine).  Runs use one thread by default (``--threads``).  ``--profile`` prints a
torch.profiler table of one extra step of each megatron/hf run.

Synthetic shards (default) are SODA-structured documents written with megatron's
IndexedDatasetBuilder: recordings of 1-8 utterances of 2-15 s (100 audio tokens/s, 8
codebooks, frame-major) interleaved with transcripts in both orders, three speech prefixes
weighted 131:73:37 and a text prefix, blended 95/5.  Real shards from
``tools/preprocess/preprocess_data.py`` can be given with ``--data-path`` (blend syntax).

    .venv/bin/python benchmarks/bench_train_cpu.py --models tiny,135m --repeats 3 --json train.json
    .venv/bin/python benchmarks/bench_train_cpu.py --kinds megatron,megatron+keep,hf,hf+keep
    .venv/bin/python benchmarks/bench_train_cpu.py --models 135m --kinds megatron,hf --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_paths import DEFAULT_TOKENIZER, REPO
from hf_baseline import run_hf
from megatron_runs import run_data, run_megatron, run_megatron_e2e
from synthetic_shards import synthetic_blend
from train_summary import fmt_range, print_summary, stats, summarize

from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

PYTHON = sys.executable

# Per model: sequence length, micro-batch size, global batch size (micro-batches per step =
# global / micro on one process), warm-up and timed steps per run.
MODEL_DEFAULTS = {
    "tiny": dict(seq_length=256, micro_batch_size=2, global_batch_size=4, warmup=3, steps=10),
    "135m": dict(seq_length=1024, micro_batch_size=1, global_batch_size=2, warmup=1, steps=4),
}


def one(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["kind"].removesuffix("+keep")
    if kind == "megatron":
        return run_megatron(spec)
    if kind == "megatron-e2e":
        return run_megatron_e2e(spec)
    if kind == "hf":
        return run_hf(spec, "sdpa")
    if kind == "hf-eager":
        return run_hf(spec, "eager")
    if kind == "data":
        return run_data(spec)
    raise ValueError(f"unknown kind {kind!r}")


# glibc keeps freed blocks up to 4 GiB for reuse instead of returning them to the kernel (which
# zeroes fresh pages again on the next first touch): see --allocator.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def launch(spec: dict[str, Any], threads: int | None, allocator: str = "default") -> dict[str, Any]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if allocator == "keep" or spec["kind"].endswith("+keep"):
        env["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY
    t0 = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, os.path.abspath(__file__), "--one", json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{spec['kind']} {spec['model']} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    out = json.loads(lines[-1][len("RESULT ") :])
    out["wall_s"] = wall
    if "PROFILE-BEGIN" in proc.stderr:
        out["profile"] = proc.stderr.split("PROFILE-BEGIN\n", 1)[1].split("\nPROFILE-END", 1)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument(
        "--models", default="tiny,135m", help="comma-separated presets (tiny, 135m, ...)"
    )
    p.add_argument(
        "--kinds",
        default="megatron,hf,hf-eager,megatron-e2e",
        help="runs to interleave: megatron, megatron-e2e, hf, hf-eager; a kind ending in +keep "
        "(e.g. megatron+keep) runs with --allocator keep",
    )
    p.add_argument("--baseline", default="hf", help="the kind ratios are taken against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seq-length", type=int, default=None, help="override the per-model default")
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--global-batch-size", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of every run (default 1: a one-thread run keeps its core when other "
        "jobs share the machine; 0 = torch's default, all cores)",
    )
    p.add_argument(
        "--allocator",
        choices=("default", "keep"),
        default="default",
        help="keep: glibc keeps freed memory for reuse (GLIBC_TUNABLES mmap/trim thresholds 4 GiB) "
        "in every run, so big temporaries do not cost fresh zeroed pages each time",
    )
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--num-codebooks", type=int, default=DEFAULT_NUM_CODEBOOKS)
    p.add_argument(
        "--data-path",
        nargs="*",
        default=None,
        help="real shards in blend syntax (default: synthetic SODA-structured shards, 95/5 blend)",
    )
    p.add_argument(
        "--data-seq-lengths",
        default="4096",
        help="also time the data pipeline alone at these sequence lengths ('' for none)",
    )
    p.add_argument("--data-micro-batch-size", type=int, default=4)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "soda_bench_train"))
    p.add_argument(
        "--profile",
        action="store_true",
        help="print a torch.profiler table of one extra step of every megatron/hf run",
    )
    p.add_argument("--json", default=None, help="write every run and the summary here")
    a = p.parse_args(argv)

    if a.one:
        result = one(json.loads(a.one))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    os.makedirs(a.workdir, exist_ok=True)
    data_path = a.data_path or synthetic_blend(
        os.path.join(a.workdir, "shards"), a.tokenizer, a.num_codebooks
    )
    from megatron_soda.tokenizer import SodaTokenizer

    # the FLOPs per token of the summary: the vocabulary the runs load (tokenizer + codebooks)
    vocab_size = SodaTokenizer.load(a.tokenizer, num_codebooks=a.num_codebooks).vocab_size
    kinds = [k for k in a.kinds.split(",") if k]
    results: dict[str, Any] = {"runs": [], "summary": {}}
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; kinds {kinds}; "
        f"{a.repeats} repeats; OMP_NUM_THREADS={a.threads or 'default'}; allocator {a.allocator}",
        flush=True,
    )
    results["settings"] = {k: v for k, v in vars(a).items() if k != "one"}
    for model in [m for m in a.models.split(",") if m]:
        d = dict(MODEL_DEFAULTS.get(model, MODEL_DEFAULTS["135m"]))
        for key in ("seq_length", "micro_batch_size", "global_batch_size", "warmup", "steps"):
            if getattr(a, key) is not None:
                d[key] = getattr(a, key)
        base = dict(
            model=model,
            tokenizer=a.tokenizer,
            num_codebooks=a.num_codebooks,
            data_path=data_path,
            cache=os.path.join(a.workdir, "cache"),
            workdir=a.workdir,
            **d,
        )
        tokens_per_step = d["global_batch_size"] * d["seq_length"]
        per_kind: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(a.repeats):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for kind in order:
                res = launch(dict(base, kind=kind, profile=a.profile), a.threads, a.allocator)
                res.update(
                    kind=kind,
                    model=model,
                    repeat=r,
                    tokens_per_step=tokens_per_step,
                    tokens_per_sec=tokens_per_step / statistics.median(res["step_s"]),
                )
                per_kind[kind].append(res)
                results["runs"].append(res)
                extra = ""
                if "fetch_s" in res:
                    extra = (
                        f" | data {1e3 * statistics.median(res['fetch_s']):.1f} ms fetch + "
                        f"{1e3 * statistics.median(res['make_batch_s']):.1f} ms make_batch per step"
                    )
                print(
                    f"[{model} r{r}] {kind:13s} {res['tokens_per_sec']:8.0f} tok/s | step "
                    f"{statistics.median(res['step_s']):.3f} s (min {min(res['step_s']):.3f}){extra} | "
                    f"loss {res['losses'][0]:.3f}->{res['losses'][-1]:.3f} | others used "
                    f"{res['others_cores']:.2f} cores",
                    flush=True,
                )
                if "doc_mask_leak" in res and res["doc_mask_leak"] != 0.0:
                    print(
                        f"  warning: HF document mask leak {res['doc_mask_leak']:.3g}", flush=True
                    )
                if res.get("profile"):
                    print(res["profile"], flush=True)
        results["summary"][model] = summarize(model, d, per_kind, a.baseline, vocab_size)
    for seq in [int(s) for s in a.data_seq_lengths.split(",") if s]:
        spec = dict(
            model="tiny",
            tokenizer=a.tokenizer,
            num_codebooks=a.num_codebooks,
            data_path=data_path,
            cache=os.path.join(a.workdir, "cache"),
            workdir=a.workdir,
            kind="data",
            seq_length=seq,
            micro_batch_size=a.data_micro_batch_size,
            global_batch_size=a.data_micro_batch_size,
            warmup=3,
            steps=30,
        )
        res = launch(spec, a.threads, a.allocator)
        res.update(kind="data", seq_length=seq, micro_batch_size=a.data_micro_batch_size)
        results["runs"].append(res)
        f, m, pk = (
            stats([1e3 * x for x in res["fetch_s"]]),
            stats([1e3 * x for x in res["make_batch_s"]]),
            stats([1e3 * x for x in res["make_batch_packed_s"]]),
        )
        results["summary"][f"data_seq{seq}"] = {
            "fetch_ms": f,
            "make_batch_ms": m,
            "make_batch_packed_ms": pk,
            "docs_per_sample": statistics.mean(res["docs_per_sample"]),
        }
        print(
            f"[data] seq {seq} x micro-batch {a.data_micro_batch_size}: GPTDataset fetch "
            f"{fmt_range(f, '.2f')} ms, make_batch {fmt_range(m, '.2f')} ms (dense mask; packed THD "
            f"for TE {fmt_range(pk, '.2f')} ms) per micro-batch "
            f"({statistics.mean(res['docs_per_sample']):.1f} documents per sample) | others used "
            f"{res['others_cores']:.2f} cores",
            flush=True,
        )
    print_summary(results["summary"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
