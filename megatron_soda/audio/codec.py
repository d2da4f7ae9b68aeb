"""Mimi audio codec through ``transformers.MimiModel``: waveforms -> discrete codes.

``--codec`` specs:

* a local directory or a Hugging Face id (``kyutai/mimi``): weights from disk or the HF cache
  only, never downloaded at run time;
* ``random:tiny[:seed]`` / ``random:full[:seed]``: the real Mimi architecture (a small test
  config, or the full default config) with deterministic random weights.  A freshly built
  MimiModel has all-zero codebooks (every code would be 0), so codebooks are randomised too.

Codes are batch-invariant: every clip is zero-padded to a whole number of frames (1920
samples) before encoding, which with Mimi's causal convolutions and causal encoder
transformer makes each valid frame depend only on its own clip.  Long audio is encoded in
pieces (SODA: 60 s, a whole number of frames) and concatenated; batches are formed from a
fixed sample budget in input order, so the same inputs give the same batches on every run.
Pieces are encoded as they complete (:mod:`megatron_soda.audio.streaming`), so a recording
that arrives in blocks is encoded in the memory of one piece and gets the same codes as the
whole waveform.

On CPU the default is one piece per forward pass (``batch_seconds=None``): batching buys no
arithmetic throughput there, and padding clips to the longest in a batch wasted compute and
measured 2.2x slower (docs/benchmarks.md).  One piece per pass also makes codes bit-identical
however the inputs are grouped.  Floating-point results of the CPU kernels depend on the
intra-op thread count, so for bit-identical codes keep the thread count fixed (the codec stage
uses one thread per worker process).  ``precision="bf16"`` (opt-in) runs the encoder under
bfloat16 autocast: about 2x faster on CPUs with AVX512-BF16, but codes differ from fp32 for
a measured fraction of frames (docs/benchmarks.md); the quantizer stays in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from megatron_soda.audio.codec_spec import (  # noqa: F401  (the spec's names, also importable here)
    CodecError,
    CodecSpec,
    _resolve_pretrained,
    codec_fingerprint,
    parse_codec_spec,
)
from megatron_soda.audio.io import TARGET_SAMPLE_RATE as SAMPLE_RATE
from megatron_soda.format.layout import (
    CODEBOOK_SIZE,
    DEFAULT_NUM_CODEBOOKS,
    FRAME_RATE,
    MAX_CODEBOOKS,
)

SAMPLES_PER_FRAME = 1920
PRECISIONS = ("fp32", "bf16")
GPU_BATCH_SECONDS = 240.0

# A small Mimi with the real topology (SEANet strides 8*6*5*4, downsample x2 -> 12.5 Hz,
# split RVQ with 1 semantic + 31 acoustic codebooks of 2048 entries) for fast tests.
TINY_CONFIG = dict(
    hidden_size=64,
    num_filters=8,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=4,
    codebook_dim=32,
    vector_quantization_hidden_dimension=32,
    upsample_groups=64,
    sliding_window=250,
)


def _probe_signal(seconds: float, generator: torch.Generator) -> torch.Tensor:
    """A deterministic speech-like probe: amplitude-modulated harmonic tones plus noise."""
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float32) / SAMPLE_RATE
    x = 0.02 * torch.randn(n, generator=generator)
    for _ in range(6):
        f0 = 80 + 220 * torch.rand(1, generator=generator)
        rate = 2 + 6 * torch.rand(1, generator=generator)
        envelope = 0.5 * (
            1 + torch.sin(2 * math.pi * rate * t + 6.28 * torch.rand(1, generator=generator))
        )
        for h in range(1, 6):
            x += 0.05 / h * envelope * torch.sin(2 * math.pi * f0 * h * t)
    return x.view(1, 1, n)


@torch.no_grad()
def _randomise_codebooks(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give random-weight codebooks useful centroids.

    A fresh MimiModel has all-zero codebooks (every code 0).  Each RVQ level's centroids are
    drawn from a Gaussian matched to the mean/std of that level's residuals on a deterministic
    probe signal, so codes spread over the codebook and vary with the input, as real ones do.
    """
    probe = _probe_signal(8.0, generator)
    latents = model.encoder(probe).latents  # [1, hidden, frames]
    split = model.quantizer
    for rvq in (split.semantic_residual_vector_quantizer, split.acoustic_residual_vector_quantizer):
        x = rvq.input_proj(latents) if rvq.input_proj is not None else latents
        residual = x[0].T.float()  # [frames, dim]
        for layer in rvq.layers:
            cb = layer.codebook
            mean, std = residual.mean(0), residual.std(0) + 1e-6
            centroids = mean + std * torch.randn(cb.embed_sum.shape, generator=generator)
            cb.embed_sum.copy_(centroids)
            cb.cluster_usage.fill_(1.0)
            cb._embed = None
            residual = residual - cb.embed[cb.quantize(residual)]


def _build_random(spec: CodecSpec, decoder: bool) -> torch.nn.Module:
    from transformers import MimiConfig, MimiModel

    config = MimiConfig(**(TINY_CONFIG if spec.name == "tiny" else {}))
    generator = torch.Generator().manual_seed(spec.seed)
    fork_devices: list = []
    # always built with its decoder, which draws from the RNG before the quantizer: an
    # encoder-only copy (preprocessing) and a decoding one (generation) get the same weights
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(spec.seed)
        model = MimiModel(config)
    if not decoder:
        model.decoder = None
        model.config.decoder_config = None
    _randomise_codebooks(model, generator)
    return model


def _build_pretrained(spec: CodecSpec, decoder: bool) -> torch.nn.Module:
    from transformers import MimiConfig, MimiModel

    path = _resolve_pretrained(spec.name)
    try:
        config = MimiConfig.from_pretrained(path, local_files_only=True)
        if not decoder:
            config.decoder_config = None
        # safetensors only: a pickled pytorch_model.bin is never read (docs/security.md)
        return MimiModel.from_pretrained(path, config=config, local_files_only=True, use_safetensors=True)
    except Exception as e:
        raise CodecError(f"codec {spec.name!r}: cannot load a MimiModel from {path} ({e})") from e


class MimiCodec:
    """Batched, chunked Mimi encoding (and decoding when built with ``decoder=True``)."""

    def __init__(
        self,
        spec: str | CodecSpec,
        num_codebooks: int = DEFAULT_NUM_CODEBOOKS,
        device: str = "cpu",
        chunk_seconds: float = 60.0,
        batch_seconds: float | None = None,
        decoder: bool = False,
        precision: str = "fp32",
        lean: bool = True,
    ) -> None:
        """``batch_seconds``: padded audio per forward pass; None = one piece per pass on
        CPU, 240 s on other devices.  ``precision``: "fp32" (default) or "bf16" (opt-in,
        encoder under bfloat16 autocast; codes differ from fp32 for some frames).  ``lean``:
        fp32 on CPU through :mod:`megatron_soda.audio.mimi_lean` (bit-identical to
        ``MimiModel.encode``, fewer allocations; falls back to it, logged, when the installed
        transformers' Mimi differs)."""
        self.spec = spec if isinstance(spec, CodecSpec) else parse_codec_spec(spec)
        if not 1 <= num_codebooks <= MAX_CODEBOOKS:
            raise CodecError(f"num_codebooks must be in 1..{MAX_CODEBOOKS}, got {num_codebooks}")
        if precision not in PRECISIONS:
            raise CodecError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        model = (
            _build_random(self.spec, decoder)
            if self.spec.kind == "random"
            else _build_pretrained(self.spec, decoder)
        )
        cfg = model.config
        if cfg.sampling_rate != SAMPLE_RATE or cfg.codebook_size != CODEBOOK_SIZE:
            raise CodecError(
                f"codec {self.spec}: expected 24 kHz and 2048-entry codebooks, got {cfg.sampling_rate} Hz / {cfg.codebook_size}"
            )
        if num_codebooks > cfg.num_quantizers:
            raise CodecError(
                f"codec {self.spec} has {cfg.num_quantizers} codebooks, {num_codebooks} requested"
            )
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self._lean = None
        if lean and precision == "fp32" and self.device.type == "cpu":
            from megatron_soda.audio.mimi_lean import lean_encoder

            self._lean = lean_encoder(self.model)
        self.num_codebooks = num_codebooks
        self.samples_per_frame = int(round(cfg.sampling_rate / cfg.frame_rate))
        if self.samples_per_frame != SAMPLES_PER_FRAME:
            raise CodecError(
                f"codec {self.spec}: frame rate {cfg.frame_rate} Hz, SODA needs 12.5 Hz"
            )
        self.chunk_samples = int(chunk_seconds * FRAME_RATE) * self.samples_per_frame
        if batch_seconds is None:
            batch_seconds = 0.0 if self.device.type == "cpu" else GPU_BATCH_SECONDS
        # 0 = one piece per forward pass; otherwise a padded-sample budget of at least a piece
        self.batch_samples = (
            0 if batch_seconds <= 0 else max(self.chunk_samples, int(batch_seconds * SAMPLE_RATE))
        )

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.samples_per_frame)

    # ---------------------------------------------------------------- encoding
    @torch.inference_mode()
    def encode(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """24 kHz mono float32 waves -> codes ``int16 [num_codebooks, frames]`` each,
        ``frames = ceil(len / 1920)``."""
        from megatron_soda.audio.streaming import PieceEncoder

        for i, w in enumerate(waves):
            if w.ndim != 1 or w.size == 0:
                raise ValueError(f"wave {i}: expected a non-empty 1-D array, got shape {w.shape}")
        encoder = PieceEncoder(self)
        streams = [encoder.stream() for _ in waves]
        for w, stream in zip(waves, streams):
            stream.write(w)
            stream.close()
        encoder.flush()
        return [stream.codes() for stream in streams]

    @torch.inference_mode()
    def _encode_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        frames = [self.num_frames(w.size) for w in waves]
        x = np.zeros((len(waves), 1, max(frames) * self.samples_per_frame), dtype=np.float32)
        for row, w in zip(x, waves):
            row[0, : w.size] = w
        codes = self.forward_codes(torch.from_numpy(x).to(self.device)).to("cpu", torch.int16).numpy()
        return [codes[b, :, :n].copy() for b, n in enumerate(frames)]

    @torch.inference_mode()
    def forward_codes(self, x: torch.Tensor, precision: str | None = None,
                      padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[batch, num_codebooks, frames]`` of padded audio ``x [batch, 1, samples]`` on the
        codec's device: the one forward every encoding path runs.  ``precision`` (default the
        codec's): "fp32", or "bf16" (encoder under autocast, nearest-centroid search in fp32)."""
        precision = precision or self.precision
        if precision == "fp32" and self._lean is not None and padding_mask is None:
            return self._lean.encode(x, self.num_codebooks)
        if precision == "fp32":
            return self.model.encode(x, padding_mask=padding_mask, num_quantizers=self.num_codebooks).audio_codes
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            latents = self.model.encoder(x, padding_mask=padding_mask).latents
        return self.model.quantizer.encode(latents.float(), self.num_codebooks).transpose(0, 1)

    # ---------------------------------------------------------------- decoding
    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[n_cb, frames]`` -> 24 kHz mono float32 (needs ``decoder=True``)."""
        if self.model.decoder is None:
            raise CodecError("this codec was built encoder-only; construct it with decoder=True")
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64))[None].to(self.device)
        return self.model.decode(c).audio_values[0, 0].float().cpu().numpy()
