"""Mimi encoding in batches of clips of similar length: the GPU codec stage's building block.

On a GPU one clip per forward pass leaves the device idle; :func:`encode_batched` sorts the
clips by duration and packs neighbours into batches of at most ``max_batch_seconds`` of
*padded* audio, so little compute goes to padding.  Each clip is first cut into the codec's
pieces (``MimiCodec.chunk_samples``, 60 s for SODA) exactly as :meth:`MimiCodec.encode` cuts
it, each piece zero-padded to the longest piece of its batch (a whole number of 1920-sample
frames), and each piece's codes trimmed to its own ``ceil(samples / 1920)`` frames; codes come
back in input order.

Why the valid frames do not see the padding: Mimi's SEANet convolutions are causal and its
encoder transformer is causal, and padding is on the right.  ``MimiModel.encode`` accepts a
``padding_mask`` but transformers 5.x does not use it in the encoder (``MimiEncoderModel.forward``
in ``transformers/models/mimi/modeling_mimi.py``: "TODO: ... make the encoder support
padding_mask"); it is passed anyway so a version that uses it sees the right one.  Batched codes
are nonetheless not always bit-identical to one clip at a time: the kernels' floating-point
results depend on the batch shape (issue 19 measured different downsample bits for clips of
1.5 s or less on CPU), so a fraction of frames can differ; :func:`code_agreement` measures it
(tests/test_batched_encode.py, ``benchmarks/bench_codec.py --batch-seconds``).  This is why the
CPU codec stage keeps one piece per forward pass.

``dtype=torch.bfloat16`` runs the encoder under bf16 autocast and the nearest-centroid search in
fp32, as ``MimiCodec(precision="bf16")`` does; its agreement with fp32 is measured, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from megatron_soda.audio.codec import MimiCodec

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def code_agreement(
    a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray
) -> float:
    """Fraction of identical code entries over all clips (codebooks x frames); clips must
    have the same shapes.  1.0 for no entries at all."""
    a_list = [a] if isinstance(a, np.ndarray) else list(a)
    b_list = [b] if isinstance(b, np.ndarray) else list(b)
    if len(a_list) != len(b_list):
        raise ValueError(f"{len(a_list)} clips vs {len(b_list)}")
    same = total = 0
    for i, (x, y) in enumerate(zip(a_list, b_list)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            raise ValueError(f"clip {i}: shapes {x.shape} vs {y.shape}")
        same += int((x == y).sum())
        total += x.size
    return same / total if total else 1.0


def plan_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (ties in input order), each batch
    closed when one more item would take ``items * longest`` past ``max_batch_samples``;
    an item longer than the budget is a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and lengths[i] * (len(cur) + 1) > max_batch_samples:  # sorted: i is the longest
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _as_wave(w: torch.Tensor | np.ndarray, i: int) -> np.ndarray:
    x = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"wave {i}: expected a non-empty 1-D array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


@torch.inference_mode()
def encode_batched(
    codec: MimiCodec,
    waveforms: Sequence[torch.Tensor | np.ndarray],
    max_batch_seconds: float,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> list[np.ndarray]:
    """24 kHz mono waves -> codes ``int16 [codec.num_codebooks, ceil(len / 1920)]`` each, in
    input order, encoded in duration-sorted batches of at most ``max_batch_seconds`` of padded
    audio.  ``device`` must be the codec's (default); ``dtype``: fp32 or bf16 (autocast)."""
    dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    dev = codec.device if device is None else torch.device(device)
    if dev.type != codec.device.type or (dev.index or 0) != (codec.device.index or 0):
        raise ValueError(f"codec is on {codec.device}, asked for {dev}: build it on {dev}")
    spf, piece = codec.samples_per_frame, codec.chunk_samples
    waves = [_as_wave(w, i) for i, w in enumerate(waveforms)]
    # pieces exactly as MimiCodec.encode cuts them (CodesStream: whole pieces, then the rest)
    items: list[tuple[int, np.ndarray]] = []
    for i, w in enumerate(waves):
        items += [(i, w[s : s + piece]) for s in range(0, w.size, piece)]
    frames = [codec.num_frames(p.size) for _, p in items]
    budget = max(int(max_batch_seconds * codec.model.config.sampling_rate), 1)
    out: list[np.ndarray | None] = [None] * len(items)
    for batch in plan_batches([f * spf for f in frames], budget):
        width = max(frames[j] for j in batch) * spf
        x = np.zeros((len(batch), 1, width), np.float32)
        mask = np.zeros((len(batch), width), np.int64)
        for row, j in enumerate(batch):
            p = items[j][1]
            x[row, 0, : p.size] = p
            mask[row, : p.size] = 1
        xt = torch.from_numpy(x).to(dev, non_blocking=True)
        mt = torch.from_numpy(mask).to(dev, non_blocking=True)
        codes_t = codec.forward_codes(xt, "fp32" if dtype == torch.float32 else "bf16", padding_mask=mt)
        codes = codes_t.to("cpu", torch.int16).numpy()
        for row, j in enumerate(batch):
            out[j] = codes[row, :, : frames[j]].copy()
    per_clip: list[list[np.ndarray]] = [[] for _ in waves]
    for (i, _), c in zip(items, out):
        assert c is not None
        per_clip[i].append(c)
    return [c[0] if len(c) == 1 else np.concatenate(c, axis=1) for c in per_clip]

