"""Pluggable scorers for the prompted tasks, each a real model, chosen by a spec string.

Transcribers (``.transcribe(waves, sample_rate) -> list[str]``):

* ``pocketsphinx`` (default, offline): CMU PocketSphinx 5 with the US-English acoustic model,
  language model and dictionary its wheel ships (``pocketsphinx.Decoder()`` default config,
  16 kHz mono int16).  A weak recogniser: fine for tests and smoke runs, not for paper numbers.
* ``whisper:DIR``: ``transformers`` Whisper from a local directory (safetensors only, no hub
  access), English transcription, as seed-tts-eval's ``run_wer.py`` (lines 21-25, 90-98) runs
  ``openai/whisper-large-v3``; we resample to 16 kHz with soxr where it uses scipy's FFT
  resampler.

Speaker encoders (``.embed(wave, sample_rate) -> unit vector``; :func:`similarity` = cosine):

* ``resemblyzer`` (default, offline): Resemblyzer's GE2E ``VoiceEncoder`` with the
  ``pretrained.pt`` its wheel ships, on ``preprocess_wav`` audio (16 kHz, volume-normalised,
  long silences trimmed by webrtcvad).  Its constructor calls ``torch.load``; we build it inside
  :func:`megatron_soda.safe_loading.restricted_loading`, so that load is ``weights_only=True``.
* ``wavlm:DIR``: ``transformers`` ``WavLMForXVector`` from a local directory (e.g.
  ``microsoft/wavlm-base-plus-sv``).  seed-tts-eval scores with WavLM-large fine-tuned for
  speaker verification through UniSpeech's ECAPA-TDNN head (``cal_sim.sh``,
  ``verification_pair_list_v2.py``); that checkpoint is a pickled ``.pth``, so the transformers
  x-vector model is our documented substitute: numbers are comparable between our runs, not to
  the paper's SIM column.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from megatron_soda.audio.io import resample

ASR_SAMPLE_RATE = 16000
TRANSCRIBERS = ("pocketsphinx", "whisper:DIR")
SPEAKER_ENCODERS = ("resemblyzer", "wavlm:DIR")


class ScorerError(ValueError):
    """A scorer spec that cannot be honoured (unknown name, missing package or directory)."""


class Transcriber(Protocol):
    name: str

    def transcribe(self, waves: Sequence[np.ndarray], sample_rate: int) -> list[str]: ...


class SpeakerEncoder(Protocol):
    name: str

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray: ...


def _to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    w = np.asarray(wave, dtype=np.float32).reshape(-1)
    return resample(w, sample_rate, ASR_SAMPLE_RATE)


def _local_dir(spec: str, prefix: str) -> str:
    path = spec[len(prefix):]
    if not path:
        raise ScorerError(f"{spec!r}: name a local model directory, e.g. {prefix}/models/x")
    if not os.path.isdir(path):
        raise ScorerError(f"{spec!r}: {path} is not a directory (weights are read locally only)")
    return path


def _require(module: str, package: str, flag: str) -> types.ModuleType:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ScorerError(
            f"{flag} needs the {package!r} package: pip install {package} "
            f"(or pip install 'megatron_soda[eval]') ({e})"
        ) from e


def _load_local(flag: str, name: str, what: str, path: str, device: str, processor: str,
                model: str) -> tuple[Any, Any]:
    """(``transformers.<processor>``, ``transformers.<model>`` in eval mode on ``device``) from
    the local directory ``path``: no hub access, safetensors weights only."""
    tr = _require("transformers", "transformers", flag)
    kw = {"local_files_only": True}
    try:
        proc = getattr(tr, processor).from_pretrained(path, **kw)
        net = getattr(tr, model).from_pretrained(path, use_safetensors=True, **kw).to(device)
    except (OSError, ValueError) as e:
        raise ScorerError(f"{name}: cannot load a {what} model (safetensors) ({e})") from e
    return proc, net.eval()


# ----------------------------------------------------------------------------- transcribers

class PocketsphinxTranscriber:
    name = "pocketsphinx"
    PAD_SECONDS = 0.5  # leading/trailing silence: lets cepstral mean normalisation settle

    def __init__(self) -> None:
        ps = _require("pocketsphinx", "pocketsphinx", "--asr-scorer pocketsphinx")
        self._decoder = ps.Decoder(loglevel="FATAL")

    def transcribe(self, waves: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        pad = np.zeros(int(self.PAD_SECONDS * ASR_SAMPLE_RATE), dtype=np.float32)
        out = []
        for wave in waves:
            x = np.concatenate([pad, _to_16k(wave, sample_rate), pad])
            pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
            d = self._decoder
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


class WhisperTranscriber:
    def __init__(self, path: str, device: str = "cpu", batch_size: int = 8) -> None:
        self.name = f"whisper:{path}"
        self.processor, self.model = _load_local(
            "--asr-scorer whisper:DIR", self.name, "Whisper", path, device,
            "WhisperProcessor", "WhisperForConditionalGeneration")
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        out: list[str] = []
        for i in range(0, len(waves), self.batch_size):
            batch = [_to_16k(w, sample_rate) for w in waves[i:i + self.batch_size]]
            feats = self.processor.feature_extractor(
                batch, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt"
            ).input_features.to(self.device, self.model.dtype)
            gen = self.model.generation_config
            kw = {}
            if getattr(gen, "lang_to_id", None):  # multilingual checkpoints: force English
                kw = {"language": "en", "task": "transcribe"}
            ids = self.model.generate(feats, **kw)
            out.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out


def make_transcriber(spec: str, device: str = "cpu") -> Transcriber:
    """``pocketsphinx`` or ``whisper:DIR``."""
    if spec == "pocketsphinx":
        return PocketsphinxTranscriber()
    if spec.startswith("whisper:"):
        return WhisperTranscriber(_local_dir(spec, "whisper:"), device=device)
    raise ScorerError(f"unknown ASR scorer {spec!r}: choose one of {', '.join(TRANSCRIBERS)}")


# ----------------------------------------------------------------------------- speaker encoders

@contextlib.contextmanager
def _pkg_resources_for_webrtcvad() -> Iterator[None]:
    """webrtcvad 2.0.10 (Resemblyzer's VAD) reads its own version through ``pkg_resources``,
    which setuptools >= 81 no longer ships.  While it is imported, and only then, a stand-in
    answers ``get_distribution(name).version`` from importlib.metadata."""
    if "webrtcvad" in sys.modules or "pkg_resources" in sys.modules:
        yield
        return
    try:
        import pkg_resources  # noqa: F401
        have = True
    except ImportError:
        have = False
    if have:
        yield
        return
    shim = types.ModuleType("pkg_resources")
    shim.get_distribution = lambda name: types.SimpleNamespace(  # type: ignore[attr-defined]
        version=importlib.metadata.version(name)
    )
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


class ResemblyzerEncoder:
    name = "resemblyzer"

    def __init__(self, device: str = "cpu") -> None:
        from megatron_soda.safe_loading import restricted_loading

        with _pkg_resources_for_webrtcvad():
            rz = _require("resemblyzer", "resemblyzer", "--speaker-scorer resemblyzer")
        with restricted_loading():  # VoiceEncoder's torch.load of its wheel's pretrained.pt
            self._encoder = rz.VoiceEncoder(device=device, verbose=False)
        self._preprocess = rz.preprocess_wav

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        w = self._preprocess(np.asarray(wave, dtype=np.float32).reshape(-1), source_sr=sample_rate)
        if w.size == 0:
            raise ValueError("no voiced audio left after Resemblyzer's silence trimming")
        return _unit(self._encoder.embed_utterance(w))


class WavLMEncoder:
    def __init__(self, path: str, device: str = "cpu") -> None:
        self.name = f"wavlm:{path}"
        self.extractor, self.model = _load_local(
            "--speaker-scorer wavlm:DIR", self.name, "WavLMForXVector", path, device,
            "AutoFeatureExtractor", "WavLMForXVector")
        self.device = torch.device(device)

    @torch.inference_mode()
    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        x = _to_16k(wave, sample_rate)
        inputs = self.extractor(x, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        emb = self.model(**inputs).embeddings[0].float().cpu().numpy()
        return _unit(emb)


def make_speaker_encoder(spec: str, device: str = "cpu") -> SpeakerEncoder:
    """``resemblyzer`` or ``wavlm:DIR``."""
    if spec == "resemblyzer":
        return ResemblyzerEncoder(device=device)
    if spec.startswith("wavlm:"):
        return WavLMEncoder(_local_dir(spec, "wavlm:"), device=device)
    raise ScorerError(f"unknown speaker scorer {spec!r}: choose one of {', '.join(SPEAKER_ENCODERS)}")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 0.0
