"""A small top-k sparse autoencoder on residual activations (trained here, CPU-fast) or one
loaded from safetensors.

Trained: ``n_features = expansion x hidden`` (default 4x), ``k`` active features per token
(default 8), Adam (lr 1e-3) for ``steps`` full-batch steps (default 300) on the given
activations, decoder rows kept at unit norm after every step (as SAE-Lens' SAEs the authors
load have them: ``models/paligemma_sae_model.py`` line 360), seeded.  On 20 sentences of a
tiny model this takes about a second; for a real model give more text (``--sae-texts``).

Loaded: SAE-Lens tensor names ``W_enc [d, n]``, ``b_enc [n]``, ``W_dec [n, d]``, ``b_dec [d]``
and optionally ``threshold [n]`` (JumpReLU, as Gemma Scope); metadata ``k`` for top-k.
"""

from __future__ import annotations

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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x.float() - self.b_dec) @ self.W_enc + self.b_enc
        if self.threshold is not None:
            return pre * (pre > self.threshold)
        act = torch.relu(pre)
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


def load_sae(path: str) -> SparseAutoencoder:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        missing = [n for n in SAE_TENSORS if n not in names]
        if missing:
            raise ValueError(f"{path}: not an SAE (missing {', '.join(missing)})")
        t = {n: f.get_tensor(n).float() for n in names if n in SAE_TENSORS + ("threshold",)}
        k = (f.metadata() or {}).get("k") or None
    d, n = t["W_enc"].shape
    if t["W_dec"].shape != (n, d) or t["b_enc"].shape != (n,) or t["b_dec"].shape != (d,):
        raise ValueError(f"{path}: SAE tensor shapes disagree")
    return SparseAutoencoder(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"],
                             int(k) if k else None, t.get("threshold"))
