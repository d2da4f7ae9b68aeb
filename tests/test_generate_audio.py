"""Codes -> WAV (chunked decoding, the writer), silence codes, the generate CLI end to end, and
inspect_shards.py --to-wav."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from helpers_train import write_shard

from megatron_soda.audio.codec import MimiCodec
from megatron_soda.audio.synthesis import codes_to_wave, write_wav
from megatron_soda.data.inspect import inspect_main
from megatron_soda.format import read_document
from megatron_soda.generate import prompts
from megatron_soda.generate.cli import main as generate_main
from megatron_soda.generate.engine import generate
from megatron_soda.generate.settings import mode_defaults
from megatron_soda.generate.silence import SKIP_FRAMES, silence_codes

SPEC = "random:tiny:0"


@pytest.fixture(scope="module")
def codec(one_torch_thread):
    return MimiCodec(SPEC, num_codebooks=8, decoder=True)


@pytest.fixture(scope="module")
def tiny(tiny_soda, one_torch_thread):
    return tiny_soda


def test_chunked_decode_matches_whole(codec):
    codes = np.random.default_rng(0).integers(0, 2048, (8, 40))
    whole = codec.decode(codes)
    scale = np.abs(whole).max()
    rel = lambda w: np.abs(w - whole).max() / scale  # noqa: E731
    assert rel(codes_to_wave(codec, codes, chunk_frames=16, overlap_frames=40)) < 1e-5  # full history
    assert rel(codes_to_wave(codec, codes, chunk_frames=16, overlap_frames=8)) < 1e-4  # measured 3.5e-6
    assert rel(codes_to_wave(codec, codes, chunk_frames=16, overlap_frames=0)) > 1e-2  # context matters


def test_write_wav_is_24khz_pcm(codec, tmp_path):
    codes = np.random.default_rng(1).integers(0, 2048, (8, 7))
    wave = codes_to_wave(codec, codes) / 100.0
    path = str(tmp_path / "x.wav")
    write_wav(path, wave)
    data, sr = sf.read(path, dtype="float32")
    assert sr == 24000 and data.shape == (7 * 1920,)
    np.testing.assert_allclose(data, np.clip(wave, -1, 1), atol=1.0 / 32000)
    assert not os.path.exists(path + ".tmp")


def test_silence_codes_are_those_of_encoded_zeros(codec):
    sil = silence_codes(codec)
    (codes,) = codec.encode([np.zeros(24000 * 5, np.float32)])  # a different length
    steady = codes[:, SKIP_FRAMES:]
    assert (steady == sil.codes[:, None]).all()
    assert all(sil.is_silent(f, 8) for f in steady.T)
    assert not sil.is_silent(codes[:, 0] + 1, 1) or codes[0, 0] + 1 in sil.allowed[0]
    assert silence_codes(codec) is sil  # cached by fingerprint


def _wav(path, seconds, seed):
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(24000 * seconds))).astype(np.float32), 16000)
    return path


def test_cli_asr_and_tts_end_to_end(tiny, codec, tmp_path):
    from megatron_soda.audio.io import load_audio
    from megatron_soda.convert.in_memory import load_model

    audio = _wav(str(tmp_path / "in.wav"), 0.3, 0)
    out = str(tmp_path / "asr.json")
    common = ["--model", tiny.hf, "--codec", SPEC, "--seed", "3", "--device", "cpu"]
    assert generate_main([*common, "--mode", "asr", "--audio", audio, "--max-new-tokens", "12",
                          "--output-json", out]) == 0
    rec = json.load(open(out))
    # the second path: the library with the same prompt and settings
    loaded = load_model(tiny.hf)
    tok = loaded.tokenizer
    prompt = prompts.asr_prompt(tok, codec.encode([load_audio(audio)])[0])
    s = mode_defaults("asr").with_overrides(max_new_tokens=12, seed=3)
    (g,) = generate(loaded.model, tok, [prompt], s, silence_codes(codec), "text_end")
    assert rec["token_ids"] == g.token_ids.tolist() and rec["stop_reason"] == g.stop_reason
    assert rec["text"] == g.text and rec["audio_seconds"] == 0.0
    assert rec["prompt_length"] == prompt.size and rec["settings"]["temperature"] == 0.5

    voice = _wav(str(tmp_path / "voice.wav"), 0.25, 1)
    out, wav = str(tmp_path / "tts.json"), str(tmp_path / "tts.wav")
    assert generate_main([*common, "--mode", "tts", "--text", "hello", "--prompt-audio", voice,
                          "--prompt-text", "a voice", "--max-new-tokens", "30",
                          "--output-json", out, "--output-wav", wav]) == 0
    rec = json.load(open(out))
    assert rec["stop_reason"] in ("end_marker", "max_tokens", "repetition", "silence")
    assert rec["settings"]["temperature"] == 0.9 and rec["settings"]["max_new_tokens"] == 30
    ids = np.array(rec["token_ids"])
    audio_ids = ids[ids >= tok.layout.audio_offset]
    frames = audio_ids.size // 8 - rec["trimmed_frames"]
    assert rec["audio_seconds"] == pytest.approx(frames / 12.5) and frames > 0
    data, sr = sf.read(wav, dtype="float32")
    assert sr == 24000 and data.size == frames * 1920
    expect = codes_to_wave(codec, tok.layout.ids_to_codes(audio_ids[: frames * 8]))
    np.testing.assert_allclose(data, np.clip(expect, -1, 1), atol=1.0 / 32000)


def test_cli_refuses_missing_inputs(tiny, tmp_path):
    with pytest.raises(SystemExit):
        generate_main(["--model", tiny.hf, "--codec", SPEC, "--mode", "asr",
                       "--output-json", str(tmp_path / "x.json")])


def test_inspect_shards_to_wav(tiny, codec, tmp_path):
    prefix = write_shard(str(tmp_path / "sh" / "shard"), tiny.tokenizer, "speech", 3, seed=5,
                         codec=SPEC)
    lay = tiny.tokenizer.layout
    out = str(tmp_path / "wavs")
    assert inspect_main([prefix, "--to-wav", out, "--doc", "1", "--codec", SPEC]) == 0
    doc = read_document(prefix, 1).tolist()
    starts = [i for i, t in enumerate(doc) if t == lay.audio_start_id]
    assert sorted(os.listdir(out)) == [f"doc1_span{k}.wav" for k in range(len(starts))]
    for k, s in enumerate(starts):
        e = doc.index(lay.audio_end_id, s)
        frames = np.array(doc[s + 1 : e]).reshape(-1, 8) - lay.audio_offset
        codes = (frames % 2048).T
        data, sr = sf.read(os.path.join(out, f"doc1_span{k}.wav"), dtype="float32")
        assert sr == 24000 and data.size == codes.shape[1] * 1920
        np.testing.assert_allclose(data, np.clip(codec.decode(codes), -1, 1), atol=1e-3)
    with pytest.raises(SystemExit):
        inspect_main([prefix, "--to-wav", out])  # --codec required
