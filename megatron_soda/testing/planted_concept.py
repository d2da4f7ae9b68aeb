"""A planted concept: does a direction found on text spans steer audio at all?

A tiny SODA-format model is trained (plain torch, the HF Qwen3 architecture our exports use) on
synthetic interleaved documents in which one hidden switch ``s`` sets both

* the text spans: with ``s = 1`` every sentence holds one or two *concept* words
  (``CONCEPT_WORDS``: bright, sunny, ...), with ``s = 0`` one or two *opposite* words
  (``OPPOSITE_WORDS``: dark, gloomy, ...), so that only a word class tells ``s``, not the mere
  presence of text; the other words are drawn from ``NEUTRAL_WORDS``, whose animals
  (``UNRELATED_WORDS``) are the control concept: as frequent whatever ``s`` is;
* the audio spans: every span opens with one neutral frame (codebook-0 code in
  ``NEUTRAL_RANGE``), then its codebook-0 codes come from ``SWITCHED_RANGE`` when ``s = 1`` and
  from ``PLAIN_RANGE`` when ``s = 0``; the other codebooks are noise.

Then a steering vector is extracted from text-only sentences (``concept_items``: the concept
words as anchors), audio continuations of audio-only prompts (one neutral frame, so the model
cannot know ``s``) are generated with it, and :func:`switched_share` counts the generated
codebook-0 codes that fall in ``SWITCHED_RANGE``.  ``benchmarks/bench_steer_planted.py`` prints
the layer x alpha curve with its controls (a random vector of equal norm, the unrelated
concept) and held-out NLL; ``tests/test_steer_planted.py`` asserts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NEUTRAL_WORDS = ("the", "a", "cat", "dog", "horse", "fish", "bird", "mouse", "man", "woman",
                 "house", "tree", "road", "sees", "walks", "runs", "near", "under", "old", "small",
                 "big", "river", "hill", "city")
CONCEPT_WORDS = ("bright", "sunny", "golden", "shining", "glowing", "radiant", "vivid",
                 "brilliant", "gleaming", "luminous", "sparkling", "dazzling", "beaming", "lit",
                 "blazing", "clear")
# s = 0 text holds these instead: neither state is told by plain text, only by a word class
OPPOSITE_WORDS = ("dark", "gloomy", "dim", "shadowy", "murky", "grey", "dull", "dusky", "black",
                  "unlit", "bleak", "sombre", "faded", "cloudy", "dismal", "foggy")
# the control concept: animals, a word class of the neutral text, as frequent whatever s is
UNRELATED_WORDS = ("cat", "dog", "horse", "fish", "bird", "mouse")
PLAIN_RANGE = (0, 16)  # codebook-0 codes of s = 0 audio
SWITCHED_RANGE = (16, 32)  # codebook-0 codes of s = 1 audio
NEUTRAL_RANGE = (32, 40)  # the first frame of every audio span
NOISE_RANGE = (0, 16)  # every other codebook
NUM_CODEBOOKS = 1
FRAMES_PER_SPAN = 4  # one neutral frame, then three switched or plain ones
WORDS_PER_SENTENCE = 5


def write_word_tokenizer(path: str) -> str:
    """A word-level ``tokenizer.json`` over the planted vocabulary (whitespace split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = ["[UNK]", *NEUTRAL_WORDS, *CONCEPT_WORDS, *OPPOSITE_WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(path)
    return path


def _sentence(rng: np.random.Generator, switched: bool) -> list[str]:
    words = list(rng.choice(NEUTRAL_WORDS, WORDS_PER_SENTENCE))
    slots = rng.permutation(WORDS_PER_SENTENCE)
    marked = CONCEPT_WORDS if switched else OPPOSITE_WORDS
    for k in range(int(rng.integers(1, 3))):
        words[slots[k]] = str(rng.choice(marked))
    return words


def _frames(rng: np.random.Generator, switched: bool, n: int) -> np.ndarray:
    """``[NUM_CODEBOOKS, n]`` codes: codebook 0 in the switched or plain range, others noise."""
    lo, hi = SWITCHED_RANGE if switched else PLAIN_RANGE
    codes = rng.integers(*NOISE_RANGE, size=(NUM_CODEBOOKS, n))
    codes[0] = rng.integers(lo, hi, size=n)
    return codes


def neutral_frame(rng: np.random.Generator) -> np.ndarray:
    codes = rng.integers(*NOISE_RANGE, size=(NUM_CODEBOOKS, 1))
    codes[0, 0] = rng.integers(*NEUTRAL_RANGE)
    return codes


def make_document(tok, rng: np.random.Generator, switched: bool, spans: int = 4) -> np.ndarray:
    """``<bos>`` + ``spans`` alternating text / audio spans (either first) + ``<eos>``."""
    lay = tok.layout
    ids: list[int] = [lay.bos_id]
    audio_first = bool(rng.random() < 0.5)
    for k in range(spans):
        if (k % 2 == 0) == audio_first:
            codes = np.concatenate([neutral_frame(rng), _frames(rng, switched, FRAMES_PER_SPAN - 1)], 1)
            ids += [lay.audio_start_id, *tok.encode_audio(codes).tolist(), lay.audio_end_id]
        else:
            text = " ".join(_sentence(rng, switched))
            ids += [lay.text_start_id, *tok.encode_text(text), lay.text_end_id]
    return np.asarray(ids + [lay.eos_id], dtype=np.int64)


def make_documents(tok, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [make_document(tok, rng, bool(rng.random() < 0.5)) for _ in range(n)]


def concept_items(seed: int, n: int = 64, words: Sequence[str] = CONCEPT_WORDS) -> list[dict]:
    """Text-only concept sentences (``{"sentence", "anchor"}``), one of ``words`` each; the other
    words are neutral, so the anchor is the only sign of the concept."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sentence = list(rng.choice(NEUTRAL_WORDS, WORDS_PER_SENTENCE))
        anchor = str(rng.choice(words))
        sentence[int(rng.integers(WORDS_PER_SENTENCE))] = anchor
        out.append({"sentence": " ".join(sentence), "anchor": anchor})
    return out


def write_concepts(path: str, items: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)
    return path


def audio_prompts(tok, n: int, seed: int) -> list[np.ndarray]:
    """``<bos><audio_start>`` + one neutral frame: nothing tells the model ``s``."""
    rng = np.random.default_rng(seed)
    lay = tok.layout
    return [np.asarray([lay.bos_id, lay.audio_start_id, *tok.encode_audio(neutral_frame(rng)).tolist()],
                       dtype=np.int64) for _ in range(n)]


def switched_share(tok, token_ids: Sequence[np.ndarray]) -> float:
    """Share of the generated audio tokens that are codebook-0 codes in ``SWITCHED_RANGE`` (a model
    pushed off its data makes other codes, which lowers the share: damage does not count as success)."""
    lay = tok.layout
    ids = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_ids])
    audio = ids >= lay.audio_offset
    lo, hi = lay.audio_offset + SWITCHED_RANGE[0], lay.audio_offset + SWITCHED_RANGE[1]
    return float(((ids >= lo) & (ids < hi)).sum() / audio.sum()) if audio.any() else float("nan")


@dataclass(frozen=True)
class PlantedModel:
    hf: str  # the HF export directory (tokenizer included)
    final_loss: float


def train_planted_model(out_dir: str, seed: int = 0, steps: int = 300, batch: int = 32,
                        lr: float = 3e-3, size: str = "tiny") -> PlantedModel:
    """Train the planted model and write it as an HF export (``out_dir/hf``) that
    :func:`~megatron_soda.convert.in_memory.load_model` reads."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_soda.convert.hf_config import hf_config
    from megatron_soda.convert.hf_tokenizer import SODA_TOKENIZER_DIR
    from megatron_soda.models import preset
    from megatron_soda.tokenizer import SodaTokenizer
    from megatron_soda.tokenizer.hf_export import export_hf_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    tok = SodaTokenizer(write_word_tokenizer(os.path.join(out_dir, "words.json")),
                        num_codebooks=NUM_CODEBOOKS)
    cfg = preset(size).with_overrides(vocab_size=tok.vocab_size)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**hf_config(cfg, tok, "fp32")))
    docs = make_documents(tok, steps * batch, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * (1 - i / steps))
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        rows = docs[step * batch:(step + 1) * batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.layout.eos_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.from_numpy(r)
            labels[i, :len(r)] = torch.from_numpy(r)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    hf = os.path.join(out_dir, "hf")
    model.save_pretrained(hf, safe_serialization=True)
    export_hf_tokenizer(tok, hf, model_max_length=cfg.seq_length)
    tok.save(os.path.join(hf, SODA_TOKENIZER_DIR))
    return PlantedModel(hf, loss.item())


@torch.no_grad()
def heldout_nll(model: torch.nn.Module, docs: Sequence[np.ndarray]) -> float:
    """Mean next-token NLL over ``docs`` (one padded batch)."""
    width = max(len(d) for d in docs)
    ids = torch.zeros((len(docs), width), dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, d in enumerate(docs):
        ids[i, :len(d)] = torch.from_numpy(d)
        labels[i, :len(d)] = torch.from_numpy(d)
    return float(model(input_ids=ids, labels=labels).loss)


# ----------------------------------------------------------------------------- the measurement
CONCEPTS = {"concept": CONCEPT_WORDS, "opposite": OPPOSITE_WORDS, "unrelated": UNRELATED_WORDS}


def write_concept_files(directory: str, seed: int = 1) -> dict[str, str]:
    """One JSONL concept file per entry of ``CONCEPTS`` (text-only sentences, anchors marked)."""
    os.makedirs(directory, exist_ok=True)
    return {name: write_concepts(os.path.join(directory, f"{name}.jsonl"), concept_items(seed + k, words=words))
            for k, (name, words) in enumerate(CONCEPTS.items())}


def sampling(max_new_tokens: int = 8):
    """Temperature-1 sampling, no filter, no stop rule but the span's end: the share of codes
    reflects the model's distribution."""
    from megatron_soda.generate.settings import SamplingSettings

    return SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                            seed=0, repetition_ngram=0, silence_frames=0)


def share_measure(model: torch.nn.Module, tok, n_prompts: int = 64, n_docs: int = 64):
    """``(steering or None, split) -> Measure``: the switched share of audio continuations of
    the split's prompts (steering every audio position, generated ones too) and the NLL of the
    split's held-out documents under the same steering (the damage guard)."""
    from megatron_soda.generate.engine import generate
    from megatron_soda.steer.hooks import steering
    from megatron_soda.steer.sweep import Measure

    prompts = {"tune": audio_prompts(tok, n_prompts, 11), "heldout": audio_prompts(tok, n_prompts, 12)}
    docs = {"tune": make_documents(tok, n_docs, 21), "heldout": make_documents(tok, n_docs, 22)}
    settings = sampling()

    def measure(steer, split: str) -> Measure:
        with steering(model, tok.layout, steer):
            gens = generate(model, tok, prompts[split], settings)
            nll = heldout_nll(model, docs[split])
        return Measure(switched_share(tok, [g.token_ids for g in gens]), nll)

    return measure


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with ``vector``'s norm."""
    r = torch.randn(vector.shape, generator=torch.Generator().manual_seed(seed))
    return r / r.norm() * vector.norm()
