"""A small top-k sparse autoencoder on residual activations (trained here, CPU-fast) or one
loaded from safetensors.

Trained: ``n_features = expansion x hidden`` (default 4x), ``k`` active features per token
(default 8), Adam (lr 1e-3) for ``steps`` full-batch steps (default 300) on the given
activations, decoder rows kept at unit norm after every step (as SAE-Lens' SAEs the authors
load have them: ``models/paligemma_sae_model.py`` line 360), seeded.  On 20 sentences of a
tiny model this takes about a second; for a real model give more text (``--sae-texts``).

Loaded (``--sae FILE``): safetensors with SAE-Lens' tensor names ``W_enc [d, n]``,
``b_enc [n]``, ``W_dec [n, d]``, ``b_dec [d]`` and optionally ``threshold [n]``.  Encoding is
``act((x - b_dec) @ W_enc + b_enc)``.  How ``act`` is chosen:

* with an SAE-Lens ``cfg.json`` beside the file (``SAE.save_model`` writes
  ``sae_weights.safetensors`` and ``cfg.json`` in one folder; read as JSON, never run): its
  ``architecture`` (``standard``: ReLU, or top-k when ``activation_fn_str`` is ``topk``;
  ``topk``; ``jumprelu``: ReLU times ``pre > threshold``, as Gemma Scope), its
  ``apply_b_dec_to_input`` (false: ``b_dec`` is not subtracted, as Gemma Scope's SAEs) and its
  ``k`` (``k`` or ``activation_fn_kwargs.k``).  ``gated`` SAEs and ``normalize_activations``
  other than ``none`` are refused, not approximated;
* without one (the files ``--sae-save`` writes): ``b_dec`` subtracted, JumpReLU when a
  ``threshold`` tensor is present, else ReLU, top-k when the safetensors metadata holds ``k``.

A file that cannot be read as such (not safetensors, truncated, wrong shapes, a malformed
``cfg.json``) raises ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

SAE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass
class SparseAutoencoder:
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    k: int | None = None
    threshold: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True  # SAE-Lens' flag (Gemma Scope: false)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() - self.b_dec if self.apply_b_dec_to_input else x.float()
        pre = x @ self.W_enc + self.b_enc
        act = torch.relu(pre)
        if self.threshold is not None:
            return act * (pre > self.threshold)
        if self.k is not None and self.k < act.shape[-1]:
            top = torch.topk(act, self.k, dim=-1)
            act = torch.zeros_like(act).scatter_(-1, top.indices, top.values)
        return act

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec


def train_sae(x: torch.Tensor, expansion: int = 4, k: int = 8, steps: int = 300, lr: float = 1e-3,
              seed: int = 0) -> SparseAutoencoder:
    x = x.float()
    d = x.shape[1]
    n = expansion * d
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(n, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": w_dec.t().clone().requires_grad_(True),
              "b_enc": torch.zeros(n, requires_grad=True),
              "W_dec": w_dec.requires_grad_(True),
              "b_dec": x.mean(0).clone().requires_grad_(True)}
    opt = torch.optim.Adam(params.values(), lr=lr)
    k = min(k, n)
    with torch.enable_grad():
        for _ in range(steps):
            sae = SparseAutoencoder(**params, k=k)
            loss = (sae.decode(sae.encode(x)) - x).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12)
    return SparseAutoencoder(**{name: t.detach() for name, t in params.items()}, k=k)


def save_sae(path: str, sae: SparseAutoencoder) -> None:
    from safetensors.torch import save_file

    tensors = {name: getattr(sae, name).contiguous() for name in SAE_TENSORS}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.contiguous()
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"k": str(sae.k) if sae.k is not None else ""})
    os.replace(tmp, path)


ARCHITECTURES = ("standard", "topk", "jumprelu")  # of SAE-Lens' cfg.json; "gated" is not supported


def _sae_lens_cfg(path: str) -> dict | None:
    """The SAE-Lens ``cfg.json`` in ``path``'s folder, or None when there is none."""
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "cfg.json")
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{cfg_path}: not JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: a JSON {type(cfg).__name__}, not an object")
    return cfg


def _cfg_options(cfg: dict, has_threshold: bool) -> tuple[int | None, bool, bool]:
    """(k, apply_b_dec_to_input, use the threshold) that an SAE-Lens config asks for."""
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    if cfg.get("normalize_activations", "none") not in ("none", None, False):
        raise ValueError(f"normalize_activations {cfg['normalize_activations']!r} is not supported (none only)")
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise ValueError(f"apply_b_dec_to_input {apply_b_dec!r} is not true/false")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    topk = arch == "topk" or cfg.get("activation_fn_str", cfg.get("activation_fn")) == "topk"
    if topk and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"a top-k SAE needs a whole k >= 1, got {k!r}")
    if arch == "jumprelu" and not has_threshold:
        raise ValueError("a jumprelu SAE needs a threshold tensor")
    return (k if topk else None), apply_b_dec, arch == "jumprelu"


def load_sae(path: str) -> SparseAutoencoder:
    """The SAE in ``path`` (safetensors), configured by a ``cfg.json`` beside it when there is
    one (module docstring).  Untrusted: anything malformed raises ``ValueError`` naming a file."""
    from safetensors import SafetensorError, safe_open

    cfg = _sae_lens_cfg(path)
    try:
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
            missing = [n for n in SAE_TENSORS if n not in names]
            if missing:
                raise ValueError(f"not an SAE (missing {', '.join(missing)})")
            t = {n: f.get_tensor(n).float() for n in names if n in SAE_TENSORS + ("threshold",)}
            meta_k = (f.metadata() or {}).get("k") or None
        if t["W_enc"].dim() != 2:
            raise ValueError(f"W_enc of shape {list(t['W_enc'].shape)}, expected [d, n]")
        d, n = t["W_enc"].shape
        want = {"W_dec": (n, d), "b_enc": (n,), "b_dec": (d,), "threshold": (n,)}
        bad = [f"{k} {list(v.shape)} (expected {list(want[k])})" for k, v in t.items()
               if k in want and tuple(v.shape) != want[k]]
        if bad:
            raise ValueError(f"SAE tensor shapes disagree: {', '.join(bad)}")
        if not all(torch.isfinite(v).all() for v in t.values()):
            raise ValueError("an SAE tensor holds NaN or infinite values")
        if cfg is None:
            k, apply_b_dec, threshold = (int(meta_k) if meta_k else None), True, t.get("threshold")
        else:
            k, apply_b_dec, use_threshold = _cfg_options(cfg, "threshold" in t)
            threshold = t["threshold"] if use_threshold else None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except (SafetensorError, KeyError, TypeError, AttributeError, OSError) as e:
        raise ValueError(f"{path}: not a readable SAE file ({type(e).__name__}: {e})") from e
    return SparseAutoencoder(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], k, threshold, apply_b_dec)
