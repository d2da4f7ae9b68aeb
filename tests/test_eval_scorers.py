"""WER (against an independent Levenshtein) and the pluggable scorers: pocketsphinx and
Resemblyzer on espeak-ng speech (real models, real audio), Whisper and WavLM plumbing on tiny
random models saved as safetensors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from megatron_soda.eval import wer as W
from megatron_soda.eval.scorers import (
    ScorerError,
    make_speaker_encoder,
    make_transcriber,
    similarity,
)
from megatron_soda.testing.sample_data import speak

AUTHORS_PUNCT = set('.,!?;:"\'-()[]{}\u2018\u2019\u201c\u201d')


def levenshtein(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def authors_norm(s: str) -> list[str]:  # a second path: per-character filter, split
    return "".join(c for c in s if c not in AUTHORS_PUNCT).lower().split()


def seedtts_norm(s: str) -> list[str]:
    import string

    drop = {ord(c): None for c in string.punctuation if c != "'"}
    drop.update({ord(c): None for c in "\u2018\u2019\u201c\u201d\u2014\u3002\uff0c"})
    return s.translate(drop).lower().split()


def random_pairs(seed: int, n: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["The", "cat", "sat", "on", "mat", "don't", "dog's", "a", "ran", "Hello", "world"]
    marks = ["", "", ",", ".", "!", "?", ";", "\u201c", "\u2019", "-", " "]

    def sentence(k: int) -> str:
        return " ".join(rng.choice(vocab) + rng.choice(marks) for _ in range(k))

    refs = [sentence(rng.randint(1, 9)) for _ in range(n)]
    hyps = []
    for r in refs:
        words = r.split()
        edits = rng.randint(0, 4)
        for _ in range(edits):
            op = rng.choice("sdi")
            pos = rng.randrange(len(words) + 1)
            if op == "i" or not words:
                words.insert(pos, rng.choice(vocab))
            elif op == "d":
                words.pop(min(pos, len(words) - 1))
            else:
                words[min(pos, len(words) - 1)] = rng.choice(vocab).upper()
        hyps.append(" ".join(words))
    return refs, hyps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wer_matches_independent_levenshtein(seed):
    refs, hyps = random_pairs(seed, 40)
    hyps[3] = ""  # an empty hypothesis: all deletions
    errs = [levenshtein(authors_norm(r), authors_norm(h)) for r, h in zip(refs, hyps)]
    words = [len(authors_norm(r)) for r in refs]
    assert all(w > 0 for w in words)
    assert W.corpus_wer(refs, hyps) == pytest.approx(sum(errs) / sum(words), abs=1e-12)
    m = W.corpus_measures(refs, hyps)
    assert (m["errors"], m["words"]) == (sum(errs), sum(words))
    assert W.utterance_wers(refs, hyps) == pytest.approx([e / w for e, w in zip(errs, words)])
    assert W.utterance_wers(refs, hyps)[3] == 1.0
    per = [levenshtein(seedtts_norm(r), seedtts_norm(h)) / len(seedtts_norm(r)) for r, h in zip(refs, hyps)]
    assert W.seedtts_mean_wer(refs, hyps) == pytest.approx(float(np.mean(per)), abs=1e-12)


def test_normalisations_differ_where_the_authors_differ():
    # the ASR harness drops the apostrophe, seed-tts-eval keeps it (run_wer.py line 36)
    s = "Don't STOP\u2014now, \u201cplease\u201d!"
    assert W.normalize_text(s).split() == authors_norm(s)
    assert W.seedtts_normalize(s).split() == seedtts_norm(s)
    assert "don't" in W.seedtts_normalize(s).split()
    assert "dont" in W.normalize_text(s).split()
    with pytest.raises(ValueError):
        W.corpus_wer(["a"], [])


# espeak-ng's klatt voice is the one pocketsphinx's US-English model follows best
SENTENCES = ["the weather is nice today", "please call me tomorrow morning"]


@pytest.fixture(scope="module")
def speech():
    return [speak(s, voice="en-us+klatt", speed=150) for s in SENTENCES]


def test_pocketsphinx_transcribes_speech(speech, one_torch_thread):
    asr = make_transcriber("pocketsphinx")
    hyps = [asr.transcribe([w], sr)[0] for w, sr in speech]
    own = W.utterance_wers(SENTENCES, hyps)
    swapped = W.utterance_wers(SENTENCES[::-1], hyps)
    assert max(own) < 0.5, hyps
    assert min(swapped) > max(own) + 0.3, hyps  # it listens: the other sentence scores worse
    # a batch gives the same words as one utterance at a time
    assert asr.transcribe([w for w, _ in speech], speech[0][1]) == hyps


def test_resemblyzer_same_voice_beats_other_voice(one_torch_thread):
    enc = make_speaker_encoder("resemblyzer")
    a_text = "the weather is nice today and we will go for a walk in the park"
    b_text = "please call me tomorrow morning before you leave for the office"
    a = enc.embed(*speak(a_text, voice="en-us"))
    b_same = enc.embed(*speak(b_text, voice="en-us"))
    b_other = enc.embed(*speak(b_text, voice="en-us+f3"))
    assert np.linalg.norm(a) == pytest.approx(1.0)
    s_same, s_other = similarity(a, b_same), similarity(a, b_other)
    assert s_same == pytest.approx(float(a @ b_same / np.linalg.norm(a) / np.linalg.norm(b_same)))
    assert s_same > s_other + 0.1, (s_same, s_other)
    raw = np.array([3.0, -1.0, 2.0])  # cosine, not a dot product
    assert similarity(raw, 5 * a[:3]) == pytest.approx(raw @ a[:3] / np.linalg.norm(raw) / np.linalg.norm(a[:3]))


def test_bad_specs_give_clear_errors(tmp_path):
    for spec, pattern in [("whisper:" + str(tmp_path / "nope"), "not a directory"),
                          ("whisper:", "local model directory"), ("kaldi", "unknown ASR scorer")]:
        with pytest.raises(ScorerError, match=pattern):
            make_transcriber(spec)
    with pytest.raises(ScorerError, match="not a directory"):
        make_speaker_encoder("wavlm:" + str(tmp_path / "nope"))
    with pytest.raises(ScorerError, match="unknown speaker scorer"):
        make_speaker_encoder("ecapa")
    with pytest.raises(ScorerError, match="safetensors"):  # a directory without weights
        make_transcriber("whisper:" + str(tmp_path))


def _tiny_whisper(d) -> str:
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    chars = list("abcdefghijklmnopqrstuvwxyz") + ["\u0120"]
    vocab = {c: i for i, c in enumerate(chars)}
    for s in ("<|endoftext|>", "<|startoftranscript|>"):
        vocab[s] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    tok = WhisperTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), unk_token="<|endoftext|>",
                           additional_special_tokens=["<|startoftranscript|>"])
    cfg = WhisperConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_target_positions=32, pad_token_id=eot,
                        bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
                        begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config.max_length = 10
    out = d / "whisper"
    model.save_pretrained(out, safe_serialization=True)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tok).save_pretrained(out)
    return str(out)


def test_whisper_plumbing_on_a_tiny_random_model(tmp_path, one_torch_thread):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = _tiny_whisper(tmp_path)
    asr = make_transcriber("whisper:" + path)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(24000).astype(np.float32) * 0.1, np.zeros(12000, np.float32)]
    got = asr.transcribe(waves, 24000)
    assert isinstance(got, list) and len(got) == 2 and all(isinstance(t, str) for t in got)
    # the same model run directly through transformers on 16 kHz audio
    from megatron_soda.audio.io import resample

    proc = WhisperProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    feats = proc.feature_extractor([resample(w, 24000, 16000) for w in waves], sampling_rate=16000,
                                   return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats)
    assert got == [t.strip() for t in proc.batch_decode(ids, skip_special_tokens=True)]


def test_wavlm_plumbing_on_a_tiny_random_model(tmp_path, one_torch_thread):
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    cfg = WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                      conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, tdnn_dim=(8, 8), tdnn_kernel=(5, 1),
                      tdnn_dilation=(1, 1), xvector_output_dim=12, num_buckets=8, max_bucket_distance=20)
    torch.manual_seed(0)
    WavLMForXVector(cfg).save_pretrained(tmp_path / "wavlm", safe_serialization=True)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "wavlm")
    enc = make_speaker_encoder(f"wavlm:{tmp_path / 'wavlm'}")
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(2))
    ea, eb = enc.embed(a, 16000), enc.embed(b, 16000)
    assert ea.shape == (12,) and np.linalg.norm(ea) == pytest.approx(1.0)
    assert similarity(ea, enc.embed(a.copy(), 16000)) == pytest.approx(1.0)
    assert similarity(ea, eb) < 1.0 - 1e-6
