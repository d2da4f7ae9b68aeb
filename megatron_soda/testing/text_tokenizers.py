"""Small text tokenizers in the exact ``tokenizer.json`` format of real base tokenizers, built with
the ``tokenizers`` library at test time (a byte-level BPE trained on a few sentences), so tests
get the real layout rules with a vocabulary of a few hundred ids:

* :func:`write_qwen_format_tokenizer`: Qwen2/Qwen3's format: NFC normaliser, Qwen's split regex
  + byte-level, and Qwen3's 26 added tokens in Qwen3's order (special flags included) right after
  the BPE vocabulary (``<|endoftext|>`` first), no BOS.
* :func:`write_llama3_format_tokenizer`: Llama-3's (and so the Marin tokenizer's) format: Llama-3's
  split regex + byte-level, and a block of 256 special tokens after the BPE vocabulary starting
  with ``<|begin_of_text|>``, ``<|end_of_text|>``; the post-processor prepends BOS as the SODA
  tokenizer does.
"""

from __future__ import annotations

import json
import os

QWEN3_SPECIALS = (  # Qwen3's added tokens, in id order, with their "special" flags
    *(
        (name, True)
        for name in (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        )
    ),
    *(
        (name, False)
        for name in (
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        )
    ),
)
# Qwen2/Qwen3's pre-tokenizer split pattern (from their tokenizer.json)
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama-3's split pattern (from its tokenizer.json)
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NAMED = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "<|eot_id|>"}

_CORPUS = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "All the world's a stage, and all the men and women merely players; 1234 5678.",
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.",
)


def _train(split_regex: str, bpe_size: int, trim_offsets: bool, nfc: bool):
    from tokenizers import Regex, Tokenizer, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pre

    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, trim_offsets=trim_offsets, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(list(_CORPUS) * 10, trainer)  # (at most bpe_size tokens)
    return tok


def _save(spec: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    return path


def write_qwen_format_tokenizer(path: str, bpe_size: int = 360) -> str:
    """A small tokenizer.json in Qwen3's format (see the module docstring); returns ``path``."""
    from tokenizers import AddedToken

    tok = _train(QWEN_SPLIT_REGEX, bpe_size, trim_offsets=False, nfc=True)
    for name, special in QWEN3_SPECIALS:  # one at a time: ids in Qwen3's order
        token = AddedToken(name, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    spec = json.loads(tok.to_str())
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec["decoder"] = spec["post_processor"] = byte_level  # Qwen's (set in JSON: not via the API)
    spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    return _save(spec, path)


def write_llama3_format_tokenizer(path: str, bpe_size: int = 300) -> str:
    """A small tokenizer.json in Llama-3's format (see the module docstring); returns ``path``."""
    from tokenizers import AddedToken

    tok = _train(LLAMA3_SPLIT_REGEX, bpe_size, trim_offsets=True, nfc=False)
    reserved = iter(range(256))
    names = [LLAMA3_NAMED.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(256)]
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    spec = json.loads(tok.to_str())
    bos = {"id": "<|begin_of_text|>", "type_id": 0}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": bos},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [tok.token_to_id("<|begin_of_text|>")], "tokens": ["<|begin_of_text|>"]}},
    }
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    spec["model"]["ignore_merges"] = True
    return _save(spec, path)
