"""The baseline of bench_train_cpu.py: a plain PyTorch training step of ``transformers``'
Qwen3ForCausalLM with megatron_soda's shapes, loss and optimizer settings.

Same config as the trainer's model (padded vocabulary, untied embeddings, GQA, QK-norm, RoPE
base 1e6), fp32, per-token cross-entropy + 1e-4 * logsumexp^2, ``torch.optim.AdamW`` (no
decay on norms and the input embedding), grad-norm clipping at 1.0, gradient accumulation.
Document masking comes from restarted ``position_ids`` with ``attention_mask=None``; every
run checks that transformers does apply it (``doc_mask_leak`` must be 0.0).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from load_meter import OthersLoad
from torch_profile import profile_table

if TYPE_CHECKING:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM


def _hf_batches(
    spec: dict[str, Any], n: int, eod: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Micro-batches for the HF loop: windows of seq+1 tokens from the same shards, restarted
    position ids from EOS (the trainer's own helper), built before any timing."""
    import torch

    from megatron_soda.format import read_index
    from megatron_soda.training.data import document_ids, restarted_positions

    prefixes = spec["data_path"][1::2] if len(spec["data_path"]) > 1 else spec["data_path"]
    arrays = []
    for p in prefixes:
        dtype, _, _, _ = read_index(p + ".idx")
        arrays.append(np.memmap(p + ".bin", dtype=dtype, mode="r"))
    rng = np.random.default_rng(0)
    s, b = spec["seq_length"], spec["micro_batch_size"]
    out = []
    for _ in range(n):
        rows = []
        for _ in range(b):
            a = arrays[int(rng.integers(len(arrays)))]
            start = int(rng.integers(0, len(a) - s - 1))
            rows.append(np.asarray(a[start : start + s + 1], dtype=np.int64))
        w = torch.from_numpy(np.stack(rows))
        tokens, labels = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        out.append((tokens, labels, restarted_positions(document_ids(tokens, eod))))
    return out


def hf_config(spec: dict[str, Any], attn: str, vocab_size: int) -> Qwen3Config:
    """The Qwen3Config of the run's model preset (``attn``: transformers' attention;
    ``vocab_size``: the tokenizer's, unpadded)."""
    from transformers import Qwen3Config

    from megatron_soda.models import preset

    cfg = preset(spec["model"]).with_overrides(seq_length=spec["seq_length"], vocab_size=vocab_size)
    return Qwen3Config(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.kv_channels,
        max_position_embeddings=cfg.seq_length,
        rms_norm_eps=cfg.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        tie_word_embeddings=False,
        attention_bias=False,
        attention_dropout=0.0,
        use_cache=False,
        initializer_range=cfg.init_method_std,
        attn_implementation=attn,
    )


def run_hf(spec: dict[str, Any], attn: str) -> dict[str, Any]:
    """Warm-up + timed training steps of Qwen3ForCausalLM: wall and CPU seconds per step."""
    import torch
    from transformers import Qwen3ForCausalLM

    from megatron_soda.tokenizer import SodaTokenizer

    torch.manual_seed(1)
    warmup, steps = spec["warmup"], spec["steps"]
    n_micro = spec["global_batch_size"] // spec["micro_batch_size"]
    z_weight = 1e-4
    t_build = time.perf_counter()
    tok = SodaTokenizer.load(spec["tokenizer"], num_codebooks=spec["num_codebooks"])
    model = Qwen3ForCausalLM(hf_config(spec, attn, tok.vocab_size)).float().train()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "embed_tokens" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.dim() > 1 and "embed_tokens" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.033}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.98, 0.98),
        eps=1e-16,
    )
    build_s = time.perf_counter() - t_build
    doc_mask_leak = _document_mask_leak(model, tok.eod)
    data = _hf_batches(spec, (warmup + steps) * n_micro, tok.eod)
    params = list(model.parameters())
    step, cpu, losses = [], [], []
    tokens_per_step = spec["global_batch_size"] * spec["seq_length"]

    def train_step(micro_batches: list) -> float:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for tokens, labels, pos in micro_batches:
            logits = model(input_ids=tokens, position_ids=pos).logits.float()
            lse = torch.logsumexp(logits, dim=-1)
            ce = lse - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            loss = (ce + z_weight * lse.square()).sum() / tokens_per_step
            loss.backward()
            total += float(ce.detach().sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return total / tokens_per_step

    with OthersLoad() as load:
        for i in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            losses.append(train_step(data[i * n_micro : (i + 1) * n_micro]))
            t1, c1 = time.perf_counter(), time.process_time()
            if i == warmup - 1:
                load.__enter__()
            if i >= warmup:
                step.append(t1 - t0)
                cpu.append(c1 - c0)
    if spec.get("profile"):
        profile_table(lambda: train_step(data[:n_micro]))
    return {
        "step_s": step,
        "cpu_s": cpu,
        "losses": losses,
        "build_s": build_s,
        "others_cores": load.cores,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in params),
        "attn_implementation": model.config._attn_implementation,
        "doc_mask_leak": doc_mask_leak,
    }


def _document_mask_leak(model: Qwen3ForCausalLM, eod: int) -> float:
    """Largest change of the second document's logits when the first document changes, with
    restarted position ids and no attention mask (how the HF runs are fed): 0.0 means
    transformers applied a document mask, as the trainer does."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 1000, (1, 64), generator=g)
    a[0, 20] = eod
    b = a.clone()
    b[0, :20] = torch.randint(0, 1000, (20,), generator=g)
    pos = torch.cat([torch.arange(21), torch.arange(43)])[None]
    with torch.no_grad():
        la = model(input_ids=a, position_ids=pos).logits[0, 21:]
        lb = model(input_ids=b, position_ids=pos).logits[0, 21:]
    return float((la - lb).abs().max())
