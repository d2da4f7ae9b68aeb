"""``python -m megatron_soda.steer extract|sweep``: a steering vector from a concept file; the
layer x alpha grid tuned on one split of a prepared task and reported on the held-out split.

    python -m megatron_soda.steer extract --model DIR --concepts concepts.py --concept negation \\
        --method mean_shift --output negation.safetensors [--layers 4,8] [--format soda|plain]
    python -m megatron_soda.steer sweep --model DIR --steer negation.safetensors \\
        --data PREPARED --task salmon --alphas 0.5,1,2,4 --output sweep.json [--layers 4,8]

``--model``: an HF export or a megatron_soda checkpoint (or a warm start's text backbone with
the SODA tokenizer).  Per-item problems (an anchor that is not a word of its sentence) are
printed and the item skipped; exit 2 when none is left.  docs/steering.md.
"""

from __future__ import annotations

import argparse
import math
import sys

from megatron_soda.models.steering import ALPHA_UNITS, POSITIONS
from megatron_soda.steer.activations import FORMATS
from megatron_soda.steer.extract import METHODS, PROBE_SOLVERS
from megatron_soda.tasks.sequences import SCORE_SPANS


def _comma_list(text: str, convert, flag: str, expected: str, example: str) -> list:
    """``text`` split at commas and converted (argparse type helper): empty entries skipped, an
    empty result refused."""
    try:
        values = [convert(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{flag}: {expected} ({e})") from e
    if not values:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: nothing given (e.g. {example})")
    return values


def _layers(text: str) -> list[int] | None:
    if text == "all":
        return None
    return _comma_list(text, int, "--layers", "'all' or comma-separated integers", "'all' or 4,8")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} < 1: give at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_soda.steer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="a steering vector from sentences with anchor words")
    e.add_argument("--model", required=True)
    e.add_argument("--iteration", type=int, default=None, help="checkpoint iteration")
    e.add_argument("--concepts", required=True,
                   help="the paper's Python dict file (read, never run) or JSONL {sentence, anchor}")
    e.add_argument("--concept", default=None, help="which concept of a file holding several")
    e.add_argument("--method", required=True, choices=METHODS)
    e.add_argument("--output", required=True, help="VEC.safetensors")
    e.add_argument("--layers", type=_layers, default=None,
                   help="'all' or e.g. 4,8 (default: all; sae: the middle layer)")
    e.add_argument("--format", default="soda", choices=FORMATS,
                   help="soda: <bos><text_start>...<text_end>; plain: <bos>...")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--probe-solver", default="sgd", choices=PROBE_SOLVERS,
                   help="sgd: the authors' (lr 0.003, 400 epochs, batch 32); newton: converged, L2 C=1")
    e.add_argument("--sae", default=None, help="load this SAE (safetensors) instead of training one")
    e.add_argument("--sae-save", default=None, help="write the trained SAE here")
    e.add_argument("--sae-texts", default=None, help="extra training text for the SAE, one per line")
    e.add_argument("--sae-steps", type=int, default=300)
    e.add_argument("--sae-k", type=int, default=8)
    e.add_argument("--sae-expansion", type=int, default=4)
    w = sub.add_parser("sweep", help="layer x alpha grid: tune on one split, report the held-out one")
    w.add_argument("--model", required=True)
    w.add_argument("--iteration", type=int, default=None, help="checkpoint iteration")
    w.add_argument("--steer", required=True, metavar="VEC.safetensors",
                   help="vectors of the layers to try (steer extract --layers ...)")
    w.add_argument("--data", required=True, help="a prepared-task directory (eval prepare)")
    w.add_argument("--task", required=True, help="the likelihood task of --data to tune and report")
    w.add_argument("--layers", type=_layers, default=None, help="default: every layer of --steer")
    w.add_argument("--alphas", type=_alphas, required=True, help="e.g. 0.5,1,2,4 (0 is always measured)")
    w.add_argument("--alpha-units", default="raw", choices=ALPHA_UNITS,
                   help="raw: alpha x the stored vector; norm: alpha x the layer's median residual "
                        "norm x the unit vector")
    w.add_argument("--positions", default="audio", choices=POSITIONS)
    w.add_argument("--score-span", default="all_audio", choices=SCORE_SPANS)
    w.add_argument("--heldout", type=int, default=None,
                   help="items held out for the report (default: half); the rest tune")
    w.add_argument("--split-seed", type=int, default=0)
    w.add_argument("--max-nll-increase", type=float, default=None,
                   help="skip settings that raise the tune split's mean per-token NLL by more")
    w.add_argument("--batch-size", type=_positive_int, default=8)
    w.add_argument("--output", required=True, help="sweep.json")
    w.add_argument("--device", default="cpu")
    w.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    return p


def _alphas(text: str) -> list[float]:
    alphas = _comma_list(text, float, "--alphas", "comma-separated numbers", "0.5,1,2,4")
    bad = [a for a in alphas if not math.isfinite(a)]
    if bad:
        raise argparse.ArgumentTypeError(f"--alphas: {bad[0]} is not a finite number")
    return alphas


def _extra_states(model, tok, path: str, layer: int, fmt: str):
    import torch

    from megatron_soda.steer.activations import encode_sentence, layer_outputs
    from megatron_soda.steer.concepts import ConceptItem

    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                enc = encode_sentence(tok, ConceptItem(line.strip(), "", f"{path}:{n}"), fmt)
                hs = layer_outputs(model, enc.ids)[layer]
                out.append(hs[torch.from_numpy(enc.counted).to(hs.device)].float().cpu())
    return torch.cat(out) if out else None


def extract(args: argparse.Namespace) -> int:
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.steer import extract as methods
    from megatron_soda.steer.activations import collect
    from megatron_soda.steer.concepts import read_concepts
    from megatron_soda.steer.sae import load_sae, save_sae
    from megatron_soda.steer.vectors import SteeringVectors, model_fingerprint, save_vectors

    concept, items, errors = read_concepts(args.concepts, args.concept)
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    if not items:
        print("steer extract: error: no usable concept item", file=sys.stderr)
        return 2
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, iteration=args.iteration)
    model, tok = loaded.model, loaded.tokenizer
    layers = args.layers
    if args.method == "sae":
        layers = layers or [model.config.num_hidden_layers // 2]
        if len(layers) != 1:
            print("steer extract: error: --method sae takes one layer", file=sys.stderr)
            return 2
    acts = collect(model, tok, items, layers, args.format)
    for msg in acts.skipped:
        print(f"skipped: {msg}", file=sys.stderr)
    extra: dict = {"n_sentences": acts.n_sentences, "n_tokens": int(acts.anchor.numel()),
                   "n_anchor_tokens": int(acts.anchor.sum()), "skipped": [str(e) for e in errors]
                   + acts.skipped}
    if args.method == "mean_shift":
        vectors = methods.mean_shift(acts)
    elif args.method == "probe":
        vectors = methods.probe(acts, args.probe_solver, args.seed)
        extra |= {"probe_solver": args.probe_solver, "seed": args.seed}
    else:
        layer = layers[0]
        sae = load_sae(args.sae) if args.sae else None
        more = _extra_states(model, tok, args.sae_texts, layer, args.format) if args.sae_texts else None
        vectors, sae, features = methods.sae(acts, layer, sae, more, seed=args.seed,
                                             steps=args.sae_steps, k=args.sae_k,
                                             expansion=args.sae_expansion)
        if args.sae_save and not args.sae:
            save_sae(args.sae_save, sae)
        extra |= {"sae": args.sae or "trained", "sae_features": features, "seed": args.seed,
                  "sae_size": [int(d) for d in sae.W_dec.shape], "sae_k": sae.k}
    sv = SteeringVectors(vectors, args.method, concept, acts.median_norm, args.format,
                         model_fingerprint(model, tok), extra)
    save_vectors(args.output, sv)
    norms = ", ".join(f"{k}: {float(v.norm()):.4g}" for k, v in sorted(vectors.items()))
    print(f"{args.method} {concept!r}: {acts.n_sentences} sentences, layers {{{norms}}} -> {args.output}")
    return 0


def sweep(args: argparse.Namespace) -> int:
    from megatron_soda.atomic_files import write_json_atomic
    from megatron_soda.convert.in_memory import load_model
    from megatron_soda.models.steering import in_units
    from megatron_soda.steer.hooks import Steering
    from megatron_soda.steer.sweep import split_items, sweep, task_measure
    from megatron_soda.steer.vectors import load_vectors
    from megatron_soda.tasks.prepared import drop_longer_than, read_prepared

    loaded = load_model(args.model, device=args.device, dtype=args.dtype, iteration=args.iteration)
    model, tok = loaded.model, loaded.tokenizer
    sv = load_vectors(args.steer, model, tok, warn=lambda m: print(m, file=sys.stderr))
    layers = args.layers if args.layers is not None else sorted(sv.vectors)
    for layer in layers:
        sv.vector(layer)  # every layer asked for is in the file
    task = read_prepared(args.data, tok, args.score_span, [args.task])[args.task]
    task, too_long = drop_longer_than(task, getattr(model.config, "max_position_embeddings", None))
    for msg in too_long:
        print(f"skipped: {msg}", file=sys.stderr)
    splits = split_items(len(task.items), args.heldout, args.split_seed)
    measure = task_measure(model, tok.layout, task, splits, args.batch_size)

    def make(layer: int, alpha: float) -> Steering:
        vec = in_units(sv.vector(layer), args.alpha_units, sv.median_norm.get(layer),
                       f"{args.steer} layer {layer}")
        return Steering(vec, layer, alpha, args.positions)

    def show(p) -> None:
        print(f"layer {p.layer:3d} alpha {p.alpha:g}: tune {p.tune.score:.4f} nll {p.tune.nll:.4f}"
              + ("" if p.allowed else " (over --max-nll-increase)"), file=sys.stderr)

    result = sweep(measure, make, layers, args.alphas, args.max_nll_increase, progress=show)
    record = {"model": args.model, "steer": args.steer, "method": sv.method, "concept": sv.concept,
              "task": args.task, "data": args.data, "score_span": args.score_span,
              "alpha_units": args.alpha_units, "positions": args.positions,
              "tune_ids": [task.items[i].id for i in splits["tune"]],
              "heldout_ids": [task.items[i].id for i in splits["heldout"]],
              "split_seed": args.split_seed, "max_nll_increase": args.max_nll_increase,
              "skipped": too_long, **result.to_dict()}
    write_json_atomic(args.output, record, indent=1)
    best = ("alpha 0 (no setting beat it on the tune split)" if result.best_layer is None
            else f"layer {result.best_layer} alpha {result.best_alpha:g}")
    print(f"{args.task}: {best}; held-out {result.best_heldout.score:.4f} vs unsteered "
          f"{result.baseline_heldout.score:.4f} ({len(splits['heldout'])} items) -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return extract(args) if args.command == "extract" else sweep(args)
    except (ValueError, OSError) as e:
        print(f"steer {args.command}: error: {e}", file=sys.stderr)
        return 1
