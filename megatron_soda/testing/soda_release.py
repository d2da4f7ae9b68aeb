"""Hugging Face directories laid out like the released SODA models, with small random weights.

The released models (``soda-research/soda-{135m,600m,1.7b,4b}-base``; earlier mirrors such as
``potsawee/soda-600m-base``) were exported from Levanter checkpoints by Levanter's HF converter
(marin ``lib/marin/src/marin/export/levanter_checkpoint.py`` -> levanter
``src/levanter/main/export_lm_to_hf.py``).  Their actual ``config.json`` and
``tokenizer_config.json`` could not be retrieved here (no hub access, no copy found in public
code or pages), so these fixtures reproduce what that code writes (levanter @ 9263f81):

* ``config.json`` = ``transformers.Qwen3Config(...).to_dict()`` built by ``Qwen3Config.to_hf_config``
  (``src/levanter/models/qwen.py:323-349``: ``max_position_embeddings`` = seq_len 4096,
  ``sliding_window`` 4096 with ``use_sliding_window`` false, ``rms_norm_eps`` 1e-5,
  ``tie_word_embeddings`` false, ``rope_theta`` 500000 + ``rope_scaling`` llama3 (factor 8, 1, 4,
  8192; ``src/levanter/layers/rotary.py:152-180``), ``no_bias`` true, ``attention_bias`` false,
  ``head_dim``), then ``architectures`` copied from the model's reference checkpoint, which
  SODA's configs leave at LlamaConfig's ``NousResearch/Llama-2-7b-hf`` (``llama.py:80``;
  ``compat/hf_checkpoints.py:187-190, 714-720``), so ``LlamaForCausalLM``, and the tokenizer's
  BOS/EOS as ``bos_token_id``, ``eos_token_id``, ``decoder_start_token_id``,
  ``begin_suppress_tokens`` (``hf_checkpoints.py:732-746``).  ``vocab_size`` = the tokenizer's
  size, 144,644 (``export_lm_to_hf.py:53``).  Two transformers generations are mirrored:
  ``"4.57"`` (``dtype``, ``layer_types``, ``sliding_window`` nulled by Qwen3Config) and ``"4.51"``
  (``torch_dtype``, ``sliding_window`` 4096, no ``layer_types``); the dump of
  ``PretrainedConfig.to_dict`` also carries transformers' generic fields.
* weights: one ``model.safetensors`` (shards only above 10 GB, ``hf_checkpoints.py:81, 819``),
  float32 (trained with ``p=f32``; Levanter saves parameters in their dtype), Qwen3 names.
* tokenizer: the Marin (= Llama-3) tokenizer extended as ``codec_bpe.extend_tokenizer`` did
  (potsawee/tokenize-audio ``codec-bpe/train_bpe_recipe.txt:53-57``): the 4 markers as special
  tokens, then the 16,384 audio characters ``chr(0xE000 + i)`` as special, unnormalised added
  tokens; saved with ``tokenizer.save_pretrained`` (``hf_checkpoints.py:931``): ``tokenizer.json``,
  ``tokenizer_config.json`` (no ``soda_layout``), ``special_tokens_map.json``.  No
  ``generation_config.json``.

Tests build these on a small tokenizer in Llama-3's format
(:func:`~megatron_soda.testing.text_tokenizers.write_llama3_format_tokenizer`) to stay cheap, and
check the real ids (144,644) on the real Llama-3 base once.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from megatron_soda.format.layout import CODEBOOK_SIZE, MARKERS

# (layers, hidden, heads, kv heads, head dim, ffn): SODA_SPEC.md section 4, and the small
# stand-ins used with random weights (same head/GQA ratios; head_dim vs hidden/heads as in
# the real model).
RELEASE_SHAPES = {
    "135m": (15, 512, 8, 8, 64, 1792),
    "600m": (28, 1024, 16, 8, 128, 3072),
    "1.7b": (28, 2048, 16, 8, 128, 6144),
    "4b": (36, 2560, 32, 8, 128, 9728),
}
SMALL_SHAPES = {
    "135m": (2, 32, 4, 4, 8, 64),
    "600m": (2, 32, 4, 2, 16, 96),
    "1.7b": (2, 32, 4, 2, 8, 96),
    "4b": (2, 40, 8, 2, 8, 96),
}
GENERATIONS = {"135m": "4.51", "600m": "4.57", "1.7b": "4.51", "4b": "4.57"}
RELEASE_VOCAB = 144644
LLAMA3_BOS, LLAMA3_EOS = 128000, 128001
AUDIO_CHAR_BASE = 0xE000

# transformers' generic PretrainedConfig fields, as PretrainedConfig.to_dict() dumps them (4.5x)
_GENERIC = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "bad_words_ids": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "pad_token_id": None,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torchscript": False,
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def release_config(
    size: str,
    small: bool = True,
    vocab_size: int = RELEASE_VOCAB,
    bos: int = LLAMA3_BOS,
    eos: int = LLAMA3_EOS,
) -> dict[str, Any]:
    """The ``config.json`` of release ``size`` as Levanter writes it; ``small``: with the small
    stand-in dimensions (layers, widths, heads, head_dim), everything else unchanged; the
    vocabulary size and BOS/EOS ids are the tokenizer's."""
    layers, hidden, heads, kv, head_dim, ffn = (SMALL_SHAPES if small else RELEASE_SHAPES)[size]
    generation = GENERATIONS[size]
    config = {
        **_GENERIC,
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "begin_suppress_tokens": sorted({bos, eos}),
        "bos_token_id": bos,
        "decoder_start_token_id": bos,
        "eos_token_id": eos,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "max_position_embeddings": 4096,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "no_bias": True,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    if generation == "4.57":
        config.update(
            dtype=None,
            layer_types=["full_attention"] * layers,
            sliding_window=None,
            transformers_version="4.57.3",
        )
    else:
        config.update(torch_dtype=None, sliding_window=4096, transformers_version="4.51.3")
    return dict(sorted(config.items()))


def write_release_tokenizer(base_tokenizer_json: str, out_dir: str, num_codebooks: int = 8) -> str:
    """The SODA tokenizer files of a release (see the module docstring) on ``base_tokenizer_json``
    (a Llama-3-format tokenizer with ``<|begin_of_text|>``/``<|end_of_text|>``)."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(base_tokenizer_json)
    new = [*MARKERS, *(chr(AUDIO_CHAR_BASE + i) for i in range(num_codebooks * CODEBOOK_SIZE))]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    spec = json.loads(tok.to_str())
    decoder = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in spec["added_tokens"]
    }
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    config = {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(MARKERS),
        **specials,
        "clean_up_tokenization_spaces": True,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"additional_special_tokens": list(MARKERS), **specials}, f, indent=2)
    return out_dir


def write_release_model(out_dir: str, size: str, tokenizer_dir: str, seed: int = 0) -> str:
    """A release-shaped HF directory: :func:`release_config` (small dims, vocabulary = the
    tokenizer's), random float32 weights under Qwen3's names (norm weights ``1 + N(0, 0.1)``,
    matrices ``N(0, 0.05)``), and the tokenizer files copied from ``tokenizer_dir``."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    vocab = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    bos, eos = (tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>"))
    config = release_config(size, vocab_size=vocab, bos=bos, eos=eos)
    layers, hidden, heads, kv = (config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"))
    d, ffn = config["head_dim"], config["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * d, hidden),
            p + "self_attn.k_proj.weight": (kv * d, hidden),
            p + "self_attn.v_proj.weight": (kv * d, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * d),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
        })
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen)
        tensors[name] = t.mul_(0.1).add_(1.0) if "norm" in name else t.mul_(0.05)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    return out_dir
