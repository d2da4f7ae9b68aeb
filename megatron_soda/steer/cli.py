"""``python -m megatron_soda.steer extract``: a steering vector from a concept file.

    python -m megatron_soda.steer extract --model DIR --concepts concepts.py --concept negation \\
        --method mean_shift --output negation.safetensors [--layers 4,8] [--format soda|plain]

``--model``: an HF export or a megatron_soda checkpoint (or a warm start's text backbone with
the SODA tokenizer).  Per-item problems (an anchor that is not a word of its sentence) are
printed and the item skipped; exit 2 when none is left.  docs/steering.md.
"""

from __future__ import annotations

import argparse
import sys

from megatron_soda.steer.activations import FORMATS
from megatron_soda.steer.extract import METHODS, PROBE_SOLVERS


def _layers(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--layers: 'all' or comma-separated integers ({e})") from e


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
    return p


def _extra_states(model, tok, path: str, layer: int, fmt: str):
    import torch

    from megatron_soda.steer.activations import encode_sentence, hidden_states
    from megatron_soda.steer.concepts import ConceptItem

    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                enc = encode_sentence(tok, ConceptItem(line.strip(), "", f"{path}:{n}"), fmt)
                hs = hidden_states(model, enc.ids)[layer + 1]
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return extract(args)
    except (ValueError, OSError) as e:
        print(f"steer extract: error: {e}", file=sys.stderr)
        return 1
