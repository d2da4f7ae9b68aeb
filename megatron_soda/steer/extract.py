"""Directions from concept-sentence activations: mean shift, linear probe, SAE features.

Each method maps :class:`~megatron_soda.steer.activations.Activations` to ``{layer: vector}``
(float32 ``[hidden]``).  Mean-shift vectors are kept raw (the released code adds the raw
vector: ``eval.py`` line 118, ``--normalize_features`` off by default); probe and SAE vectors
are unit vectors, as the authors make them.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_soda.steer.activations import Activations
from megatron_soda.steer.sae import SparseAutoencoder, train_sae

METHODS = ("mean_shift", "probe", "sae")
PROBE_SOLVERS = ("sgd", "newton")


def mean_shift(acts: Activations) -> dict[int, torch.Tensor]:
    """Mean at anchor tokens minus mean at the other counted tokens of the same sentences
    (``get_features_mean_shift.py`` lines 96-116)."""
    a = acts.anchor
    if a.all() or not a.any():
        raise ValueError("mean shift needs anchor tokens and other tokens")
    return {layer: x[a].mean(0) - x[~a].mean(0) for layer, x in acts.states.items()}


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components ``[n, hidden]``) of ``x`` by SVD of the centred data (what
    scikit-learn's ``PCA`` computes; signs may differ, which the mapped-back probe ignores)."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:n_components]


def probe_components(n_sentences: int, n_tokens: int, hidden: int) -> int:
    """``max(#sentences // 2, 10)`` bounded by the data (``get_features_linear_probe.py``
    lines 109-111): 10 for the authors' 20 sentences.  ``n_sentences`` here is the count of
    usable sentences (those whose anchor was found); the authors' line 110 uses
    ``len(concept_data)``, which also counts the sentences they skip (lines 66-68), so the two
    can differ only when sentences are skipped from a list of 22 or more."""
    return min(max(n_sentences // 2, 10), n_tokens - 1, hidden)


def _logistic_sgd(z: np.ndarray, y: np.ndarray, seed: int, epochs: int = 400, lr: float = 0.003,
                  batch_size: int = 32) -> np.ndarray:
    """The authors' probe (``get_features_linear_probe.py`` lines 117-151): ``nn.Linear`` without
    bias, sigmoid + BCE, plain SGD, lr 0.003, 400 epochs, batches of 32, shuffled; here the
    initialisation and the shuffles come from a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    zt = torch.from_numpy(z).float()
    yt = torch.from_numpy(y).float()
    bound = 1.0 / np.sqrt(z.shape[1])  # nn.Linear's default init range
    w = ((torch.rand(z.shape[1], generator=g) * 2 - 1) * bound).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(zt), generator=g)
        for s in range(0, len(zt), batch_size):
            idx = order[s: s + batch_size]
            loss = torch.nn.functional.binary_cross_entropy(torch.sigmoid(zt[idx] @ w), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach().double().numpy()


def _logistic_newton(z: np.ndarray, y: np.ndarray, c: float = 1.0, iters: int = 100) -> np.ndarray:
    """L2-regularised logistic regression without intercept, solved exactly (Newton, float64):
    the objective of scikit-learn's ``LogisticRegression(fit_intercept=False, C=c)``."""
    w = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = w + c * z.T @ (p - y)
        hess = np.eye(len(w)) + c * (z.T * (p * (1 - p))) @ z
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-12:
            break
    return w


def probe(acts: Activations, solver: str = "sgd", seed: int = 0) -> dict[int, torch.Tensor]:
    """Per layer: PCA, logistic regression without bias on per-token anchor labels, the weight
    mapped back (``components.T @ w``) and unit-normalised (lines 153-162)."""
    if solver not in PROBE_SOLVERS:
        raise ValueError(f"probe solver {solver!r}: choose one of {PROBE_SOLVERS}")
    y = acts.anchor.numpy().astype(np.float64)
    out = {}
    for layer, x in acts.states.items():
        xn = x.double().numpy()
        n = probe_components(acts.n_sentences, len(xn), xn.shape[1])
        mean, comps = pca(xn, n)
        z = (xn - mean) @ comps.T
        w = _logistic_sgd(z, y, seed) if solver == "sgd" else _logistic_newton(z, y)
        v = comps.T @ w
        norm = np.linalg.norm(v)
        out[layer] = torch.from_numpy(v / norm if norm > 0 else v).float()
    return out


def select_sae_features(codes: torch.Tensor, anchor: torch.Tensor, sentence: torch.Tensor,
                        top_per_sentence: int = 20, top_n: int = 16, min_count: int = 2) -> list[int]:
    """The authors' "ranking" selection (``get_features_sae.py``): per sentence, each feature's
    maximum over the anchor tokens (lines 474-481), its top 20 features ranked from 1 (lines
    495-498; features that stay at 0 are not ranked, a top-k SAE leaves most at 0); a feature
    scores ``1 - (rank - 1) / max_rank`` per sentence (lines 581-597); features seen in fewer
    than ``min_count`` sentences are dropped and the best ``top_n`` by total score kept
    (lines 616-643, 899-902).  Their LLM check of Neuronpedia explanations is not done."""
    scores: dict[int, list[float]] = {}
    for k in sentence.unique().tolist():
        at = (sentence == k) & anchor
        if not at.any():
            continue
        best = codes[at].max(0).values
        top = torch.topk(best, min(top_per_sentence, best.numel()))
        ranked = [int(i) for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0]
        for rank, fid in enumerate(ranked, 1):
            entry = scores.setdefault(fid, [0, 0.0])
            entry[0] += 1
            entry[1] += 1.0 - (rank - 1) / len(ranked)
    kept = [(fid, s[1]) for fid, s in scores.items() if s[0] >= min_count]
    kept.sort(key=lambda t: -t[1])
    return [fid for fid, _ in kept[: min(top_n, len(scores))]]


def sae_direction(sae: SparseAutoencoder, features: list[int]) -> torch.Tensor:
    """Normalised mean of the selected decoder rows (``models/paligemma_sae_model.py``
    lines 349-368)."""
    v = sae.W_dec[features].mean(0)
    return v / v.norm() if v.norm() > 0 else v


def sae(acts: Activations, layer: int, trained: SparseAutoencoder | None = None,
        extra_states: torch.Tensor | None = None, seed: int = 0, **train_kw) -> tuple[dict[int, torch.Tensor], SparseAutoencoder, list[int]]:
    """The SAE direction at ``layer``: ``trained`` (loaded) or one trained here on the concept
    sentences' activations (+ ``extra_states``, e.g. other text's activations at that layer)."""
    x = acts.states[layer]
    if trained is None:
        data = x if extra_states is None else torch.cat([x, extra_states.float()])
        trained = train_sae(data, seed=seed, **train_kw)
    elif trained.W_dec.shape[1] != x.shape[1]:
        raise ValueError(f"the SAE reads width {trained.W_dec.shape[1]}, the model's is {x.shape[1]}")
    features = select_sae_features(trained.encode(x), acts.anchor, acts.sentence)
    if not features:
        raise ValueError("no SAE feature is active at the anchors of two sentences or more")
    return {layer: sae_direction(trained, features)}, trained, features
