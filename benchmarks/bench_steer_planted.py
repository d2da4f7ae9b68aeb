#!/usr/bin/env python
"""The planted-concept curve (megatron_soda/testing/planted_concept.py): for each training seed,
a tiny SODA-format model is trained on documents whose hidden switch sets both a word class in
the text and a range of codebook-0 codes in the audio; mean-shift vectors are extracted from
text-only sentences of three concepts (the switch's own word class ``concept``, its
``opposite``, an ``unrelated`` word class: animals) and a random direction of the concept's
norm (the same computation as ``steer extract --method mean_shift``, each vector in units of
its own sentences' median residual norm); each steers audio continuations (every audio position, prompt and generated, alpha in
units of the layer's median residual norm).  Printed per layer x alpha: the held-out share of
generated audio tokens in the switched range, and the held-out documents' NLL (damage); then
the ``steer.sweep`` choice (tuned on the tune prompts with the 0.1 NLL guard) on held-out.

    .venv/bin/python benchmarks/bench_steer_planted.py --seeds 0,1,2 --json planted.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from megatron_soda.models.steering import in_units
from megatron_soda.steer import extract as methods
from megatron_soda.steer.activations import collect
from megatron_soda.steer.concepts import read_concepts
from megatron_soda.steer.hooks import Steering
from megatron_soda.steer.sweep import sweep
from megatron_soda.testing import planted_concept as pc

ALPHAS = (0.25, 0.5, 1.0, 2.0)
VECTORS = ("concept", "opposite", "unrelated", "random")


def run_seed(seed: int, root: str, steps: int) -> dict:
    from megatron_soda.convert.in_memory import load_model

    trained = pc.train_planted_model(os.path.join(root, f"seed{seed}"), seed=seed, steps=steps)
    loaded = load_model(trained.hf)
    model, tok = loaded.model, loaded.tokenizer
    vecs, median = {}, {}
    for name, path in pc.write_concept_files(os.path.join(root, f"concepts{seed}")).items():
        _, items, _ = read_concepts(path)
        acts = collect(model, tok, items)
        vecs[name], median[name] = methods.mean_shift(acts), acts.median_norm
    layers = range(model.config.num_hidden_layers)
    vecs["random"] = {layer: pc.random_like(vecs["concept"][layer], seed) for layer in layers}
    median["random"] = median["concept"]
    measure = pc.share_measure(model, tok)

    def make(name: str, layer: int, alpha: float) -> Steering:
        return Steering(in_units(vecs[name][layer], "norm", median[name][layer]), layer, alpha, "audio", "all")

    base = measure(None, "heldout")
    grid = {name: {layer: {alpha: measure(make(name, layer, alpha), "heldout") for alpha in ALPHAS}
                   for layer in layers} for name in VECTORS}
    res = sweep(measure, lambda layer, a: make("concept", layer, a), layers, ALPHAS[1:], 0.1)
    print(f"\nseed {seed}: final training loss {trained.final_loss:.3f}; unsteered held-out share "
          f"{base.score:.2f}, NLL {base.nll:.3f}")
    print("layer alpha | " + " | ".join(f"{n:>9s} share/NLL" for n in VECTORS))
    for layer in layers:
        for alpha in ALPHAS:
            cells = " | ".join(f"{grid[n][layer][alpha].score:5.2f}/{grid[n][layer][alpha].nll:.3f}"
                               for n in VECTORS)
            print(f"{layer:5d} {alpha:5.2f} | {cells}")
    print(f"sweep (tune split, NLL guard 0.1): layer {res.best_layer} alpha {res.best_alpha}: held-out "
          f"share {res.best_heldout.score:.2f} vs {res.baseline_heldout.score:.2f} unsteered")
    return {"seed": seed, "final_loss": trained.final_loss, "baseline": vars(base),
            "grid": {n: {str(layer): {str(a): vars(m) for a, m in row.items()} for layer, row in g.items()}
                     for n, g in grid.items()},
            "sweep": res.to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="one is fastest for this model size")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        out = [run_seed(int(s), root, args.steps) for s in args.seeds.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"alphas": ALPHAS, "steps": args.steps, "seeds": out}, f, indent=1)


if __name__ == "__main__":
    main()
