"""GPU memory of one training rank, per term, and the largest micro-batch that fits.

An estimate from the model's shape and the run's options, not a measurement: every term is the
byte count of tensors the code holds (read from megatron-core 0.16.1 and our modules, checked on
CPU by tests/test_memory_estimate.py), plus a stated allowance for what no formula sees.

Static (per rank; ``n`` = parameters on the rank, ``dp`` = data-parallel size):

* weights: ``n x 2`` (bf16, ``Float16Module``) or ``n x 4`` (fp32).  With the distributed
  optimizer the DDP parameter buffer *is* the weights (params become views of it).
* grads: megatron's DDP ``main_grad`` buffer, fp32 in both precisions (training/model_setup.py
  ``build_model``: ``grad_reduce_in_fp32=low_precision``; fp32 params give fp32 grads), ``n x 4``.
* optimizer: exp_avg + exp_avg_sq in fp32 (CautiousAdamC keeps torch Adam's state,
  optim/cautious.py L164-171) plus, under bf16, the fp32 main parameters
  (``Float16OptimizerWithFloat16Params``/``DistributedOptimizer``): ``12 n`` (bf16) or ``8 n``
  (fp32), divided by ``dp`` with the distributed optimizer.  Bucket padding (<= 64 elements a
  parameter and lcm(dp, 128) a bucket, megatron ``param_and_grad_buffer.py`` L635-665) is left out.

Activations (saved for backward, per layer and token; ``a`` = 2 bf16 / 4 fp32, heads, ffn and
``hd`` per tensor-parallel rank, ``h'`` = h/tp under sequence parallelism else h).  Korthikanti
et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", eq. 1: 34sbh +
5as^2b for GPT with dropout and a 4h GELU MLP) counted the same way for this block (no dropout,
RMSNorm, QK-norm, GQA, SwiGLU):

* two RMSNorms: input ``a h'`` + fp32 rstd (fused: torch's ``rms_norm`` calls ``_fused_rms_norm``
  when weight and input dtypes agree, PyTorch aten/src/ATen/native/layer_norm.cpp, end of
  ``rms_norm_symint``; not seen here: no GPU).  On CPU torch decomposes it and keeps the fp32
  input and normalised output, ``8h'``, and the QK-norms' likewise (``norms="composite"``: pessimistic,
  what the CPU test checks);
* linear_qkv input ``a h'``; its output ``a (nq + 2 nkv) hd`` (v and k are views of it); under GQA
  the query is reshaped out of it with a copy, ``a nq hd``, kept by the QK-norm; rstd ``4 (nq + nkv)``;
* core attention, flash-style (sdpa, flex; te counted alike, its fused LayerNormLinear unchecked):
  roped q, k ``a (nq + nkv) hd``, output ``a nq hd`` (linear_proj's input is a view of it),
  log-sum-exp ``4 nq``.  ``local`` (megatron's DotProductAttention): q and the GQA-repeated k, v
  and the context ``4 a nq hd``, the fp32 softmax and its ``a`` cast ``(4 + a) nq s`` per token
  (Korthikanti's ``5as^2b``), and the dense ``[b, 1, s, s]`` bool mask once for all layers;
* linear_fc1 input ``a h'``, SwiGLU: fc1 output ``2 a f``, silu output, ``x_linear + 0``
  (megatron ``mlp.py`` glu L219-226) and the product ``a f`` each: ``5 a f``;
* RoPE's cos/sin ``4 s hd a`` per layer (not per token).

``recompute="selective"`` (megatron's default module, core_attn) keeps only q, k, v and the
context; ``"full"`` (uniform, one layer) keeps each layer's input ``a h'`` and rebuilds one layer
in backward.  With pipeline parallelism (1F1B) the first stage holds ``pp`` micro-batches in flight.

Output head (this rank's ``V/tp`` rows, T = b s tokens): materialised (megatron's output layer +
models/loss.py) ``6 T V/tp`` in bf16: the bf16 logits and their fp32 copy in forward, the fp32
softmax (kept, turned into the gradient in place) and the bf16 gradient in backward (the logits
are freed after the forward; bench_head_memory.py keeps them in a variable and so measures 8);
``4 T V/tp`` in fp32; ``--head-chunk-tokens N`` (models/chunked_head.py, eager) holds
per chunk one fp32 ``[N, V/tp]`` buffer (the logits, turned into ``exp(logits - max)`` in place;
backward: into the gradient in place) plus, in bf16, the bf16 matmul product it is cast from (the
gradient's bf16 copy in backward): ``(4 + 2) N V/tp`` in either pass (:data:`CHUNK_BYTES`), and
in backward the fp32 ``[V/tp, h]`` weight-gradient accumulator plus, in bf16, each chunk's bf16
product: ``(4 + 2) V/tp h``.  ``--torch-compile head`` fuses the chunk math (less; not modelled).
The peak of a step is the end of the forward / start of the backward: static + every saved
activation + the head (+ the few per-token tensors of ``other``); the optimizer step
(activations freed) needs ``~13 bytes`` an element of the largest parameter shard.
:data:`CUDA_RESERVED_BYTES` and :data:`FRAGMENTATION` cover the CUDA context, cuBLAS/NCCL
workspaces and the caching allocator's slack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from megatron_soda.scaling.flops import ModelShape, model_shape

GIB = 2**30
# CUDA context (~0.5 GiB with torch's kernels loaded), cuBLAS workspaces, NCCL buffers: a stated
# allowance, not derived.  Fragmentation: the caching allocator reserves more than it allocates;
# 10% of the dynamic (activation + head) peak.
CUDA_RESERVED_BYTES = int(1.5 * GIB)
FRAGMENTATION = 0.10
# CautiousAdamC's step temporaries per element of one parameter (optim/cautious.py _direction:
# m_hat, denom, u * grad in fp32 and the bool mask).
STEP_BYTES_PER_ELEMENT = 13
# Bytes per chunk token and vocabulary row of the eager chunked head beside the low-precision
# copy (chunk_stats / chunk_grad_logits in models/chunked_head.py: one fp32 [N, V/tp] buffer,
# worked on in place).
CHUNK_BYTES = 4
BACKENDS = ("flex", "sdpa", "te", "local")
RECOMPUTE = ("none", "selective", "full")

# Dense bf16 peak TFLOP/s per GPU and the peak the MFU target is quoted against.  H100 SXM:
# NVIDIA H100 datasheet, BF16 Tensor Core 1,979 TFLOPS "with sparsity", i.e. 989 dense.  H200:
# same datasheet figure (989), but issue 17 quotes the H200's *measured* dense bf16 ~790 TFLOP/s,
# the peak its 35% MFU target refers to.  Keyed by the GPU memory in GiB the CLI takes.
GPU_PEAKS: dict[int, tuple[str, float, str]] = {
    80: ("H100 SXM 80GB", 989.0, "NVIDIA H100 datasheet, dense BF16 (1,979 with sparsity / 2)"),
    141: ("H200 141GB", 790.0, "issue 17: measured dense bf16 (datasheet 989)"),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the busiest rank (all terms in bytes; ``total`` is the sum that must fit)."""

    micro_batch: int
    seq_length: int
    params: int  # on this rank
    weights: int
    grads: int
    optimizer: int
    activations: int  # all layers' saved tensors (+ the one being recomputed under full recompute)
    activations_per_layer: int
    head: int
    other: int  # final norm, head input, ids, loss, the dense mask of ``local``
    step_transient: int
    reserved: int  # CUDA context + fragmentation allowance

    @property
    def static(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> int:
        dynamic = self.activations + self.head + self.other
        return self.static + max(dynamic, self.step_transient) + self.reserved

    def to_dict(self) -> dict[str, int]:
        d = dataclasses.asdict(self)
        d.update(static=self.static, total=self.total)
        return d


def _shape(arch: Any, seq_length: int | None) -> ModelShape:
    shape = arch if isinstance(arch, ModelShape) else model_shape(arch)
    return dataclasses.replace(shape, seq_length=seq_length) if seq_length else shape


def rank_params(shape: ModelShape, *, tp: int = 1, pp: int = 1) -> dict[str, int]:
    """Parameters on the first and the last pipeline stage's tensor-parallel rank (norm weights
    are replicated over TP; embedding and head split by vocabulary rows)."""
    d, hd, nq, nkv = shape.hidden_size, shape.kv_channels, shape.num_attention_heads, shape.num_query_groups
    split = d * (nq + 2 * nkv) * hd + nq * hd * d + (3 if shape.swiglu else 2) * d * shape.ffn_hidden_size
    norms = 2 * d + (2 * hd if shape.qk_norm else 0)
    layers = math.ceil(shape.num_layers / pp) * (split // tp + norms)
    vocab = shape.vocab_size * d // tp
    head = 0 if shape.tied_embeddings else vocab
    if pp == 1:
        return {"first": layers + vocab + head + d, "last": layers + vocab + head + d, "largest": vocab}
    return {"first": layers + vocab, "last": layers + head + d, "largest": vocab}


def layer_activation_bytes(shape: ModelShape, *, micro_batch: int, tp: int = 1, sequence_parallel: bool = False,
                           precision: str = "bf16", attention_backend: str = "flex", recompute: str = "none",
                           norms: str = "fused") -> int:
    """Bytes one layer keeps for backward for one micro-batch (see the module docstring).
    ``norms="composite"``: torch's CPU RMSNorm (what the CPU test measures)."""
    if attention_backend not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {attention_backend!r}")
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    a = _act_bytes(precision)
    s, b = shape.seq_length, micro_batch
    hs = shape.hidden_size / tp if sequence_parallel else shape.hidden_size
    rows = 1 / tp if sequence_parallel else 1  # per-token scalars of sequence-split tensors
    nq, nkv, hd = shape.num_attention_heads / tp, shape.num_query_groups / tp, shape.kv_channels
    f = shape.ffn_hidden_size / tp
    if recompute == "full":
        return int(s * b * a * hs)  # the layer's input; its insides are rebuilt in backward
    fused = norms == "fused"
    per_token = 2 * ((a * hs if fused else 8 * hs) + 4 * rows)  # input_layernorm, pre_mlp_layernorm
    # QK-norm.  Under GQA megatron reshapes the query out of the fused qkv output with a copy
    # (attention.py get_query_key_value_tensors), which the norm keeps; keys stay views.  Fused:
    # input + rstd; composite: its fp32 output, and an fp32 copy of the input in bf16.
    q_copy = shape.num_attention_heads != shape.num_query_groups
    per_token += 4 * (nq + nkv)
    if fused:
        per_token += a * nq * hd if q_copy else 0
    elif a != 4:
        per_token += 8 * (nq + nkv) * hd
    else:
        per_token += 4 * (nq + nkv) * hd + (4 * nq * hd if q_copy else 0)
    per_token += 2 * a * hs  # linear_qkv and linear_fc1 inputs
    local = attention_backend == "local" and recompute == "none"
    if fused or not local or a == 4:  # QK-norm inputs or v (views) keep linear_qkv's output alive
        per_token += a * (nq + 2 * nkv) * hd
    if local:
        per_token += 4 * a * nq * hd + (4 + (a if a != 4 else 0)) * nq * s
    else:  # roped q, k and the context (linear_proj's input); flash-style kernels add the lse
        per_token += a * (2 * nq + nkv) * hd + (4 * nq if recompute == "none" else 0)
    per_token += 5 * a * f  # SwiGLU
    rope = 4 * s * hd * a
    return int(s * b * per_token + rope)


def head_bytes(tokens: int, vocab_rows: int, hidden: int, *, precision: str = "bf16", chunk_tokens: int = 0) -> int:
    """Peak extra bytes of the output layer + cross-entropy (forward and backward) for ``tokens``
    tokens and ``vocab_rows`` (= padded V / tp) rows of this rank."""
    a = _act_bytes(precision)
    if not chunk_tokens or chunk_tokens >= tokens:
        return int((6 if a != 4 else 4) * tokens * vocab_rows)
    accumulator = (4 + (a if a != 4 else 0)) * vocab_rows * hidden
    low_precision_copy = a if a != 4 else 0  # the bf16 product / gradient beside the fp32 buffer
    return int((CHUNK_BYTES + low_precision_copy) * chunk_tokens * vocab_rows + accumulator)


def estimate_memory(arch: Any, *, micro_batch: int, seq_length: int | None = None, tp: int = 1, pp: int = 1,
                    dp: int = 1, cp: int = 1, sequence_parallel: bool = False, distributed_optimizer: bool = True,
                    precision: str = "bf16", recompute: str = "none", attention_backend: str = "flex",
                    head_chunk_tokens: int = 0, norms: str = "fused") -> MemoryEstimate:
    """The busiest rank's memory for a training step (``arch``: a ``SodaModelConfig`` with its
    vocabulary, or a :class:`ModelShape`).  Pipeline parallelism: the larger of the first stage
    (``pp`` micro-batches in flight under 1F1B, embedding) and the last (one, head).  Context
    parallelism (docs/context_parallel.md): each rank holds S / cp tokens of every row, plus each
    layer's K and V all-gathered to the full S (kept for flex's backward), the document ids stay
    [b, S], and the distributed optimizer shards over DP x CP."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    for name, v in (("tp", tp), ("pp", pp), ("dp", dp), ("cp", cp)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    shape = _shape(arch, seq_length)
    a = _act_bytes(precision)
    full_s, b, h = shape.seq_length, micro_batch, shape.hidden_size
    s = full_s // cp  # this rank's tokens of a row
    local_shape = dataclasses.replace(shape, seq_length=s)
    sequence_parallel = sequence_parallel and tp > 1
    counts = rank_params(shape, tp=tp, pp=pp)
    layers = math.ceil(shape.num_layers / pp)
    per_layer = layer_activation_bytes(local_shape, micro_batch=b, tp=tp, sequence_parallel=sequence_parallel,
                                       precision=precision, attention_backend=attention_backend,
                                       recompute=recompute, norms=norms)
    if cp > 1:  # the other ranks' K and V, gathered (this rank's own are counted above)
        kv_heads = max(shape.num_query_groups // tp, 1)
        per_layer += int(2 * (full_s - s) * b * kv_heads * shape.kv_channels * a)
    rebuilt = 0
    if recompute == "full":  # one layer's insides exist again while its backward runs
        rebuilt = layer_activation_bytes(local_shape, micro_batch=b, tp=tp, sequence_parallel=sequence_parallel,
                                         precision=precision, attention_backend=attention_backend, norms=norms)
    dp = dp * cp  # megatron's distributed optimizer shards over the data-parallel group with CP
    tokens = s * b
    hs = h / tp if sequence_parallel else h
    mask = b * s * s if attention_backend == "local" else 4 * b * full_s  # bool [b,1,s,s] or int32 doc ids
    head = head_bytes(tokens, shape.vocab_size // tp, h, precision=precision, chunk_tokens=head_chunk_tokens)
    last_other = int(tokens * (2 * a * hs + 4 + 8 + 8)) + mask  # final norm + head input, ids, ce/lse
    stages = {"last": (counts["last"], layers * per_layer + rebuilt, head, last_other)}
    if pp > 1:
        stages["first"] = (counts["first"], pp * layers * per_layer + rebuilt, 0,
                           pp * (8 * tokens + mask))
    best = None
    for n, acts, hd_bytes, other in stages.values():
        main = 4 if a != 4 else 0
        optimizer = (main + 8) * n
        if distributed_optimizer:
            optimizer = math.ceil(optimizer / dp)
        largest = counts["largest"] / (dp if distributed_optimizer else 1)
        dynamic = acts + hd_bytes + other
        est = MemoryEstimate(
            micro_batch=b, seq_length=full_s, params=n, weights=a * n, grads=4 * n, optimizer=optimizer,
            activations=int(acts), activations_per_layer=per_layer, head=hd_bytes, other=int(other),
            step_transient=int(STEP_BYTES_PER_ELEMENT * largest),
            reserved=CUDA_RESERVED_BYTES + int(FRAGMENTATION * dynamic))
        if best is None or est.total > best.total:
            best = est
    assert best is not None
    return best


def max_micro_batch(arch: Any, gpu_bytes: float, *, limit: int = 4096, **options: Any) -> int:
    """The largest micro-batch (<= ``limit``) whose :func:`estimate_memory` total fits in
    ``gpu_bytes``; 0 when not even one sequence fits.  Memory grows with the micro-batch, so a
    doubling search then bisection finds it."""
    def fits(b: int) -> bool:
        return estimate_memory(arch, micro_batch=b, **options).total <= gpu_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # fits(lo), not fits(hi) (or hi beyond the limit)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def tokens_per_second_for_mfu(train_flops_per_token: float, peak_tflops: float, mfu: float = 0.35) -> float:
    """Tokens/s one GPU must process to reach ``mfu`` of ``peak_tflops``."""
    return mfu * peak_tflops * 1e12 / train_flops_per_token


def _act_bytes(precision: str) -> int:
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    return 2 if precision == "bf16" else 4


# ----------------------------------------------------------------------------- the CLI's table
def memory_table(presets: list[str], gpu_gib: list[float], *, seq_length: int, vocab_size: int,
                 micro_batch: int | None = None, mfu: float = 0.35, peak_tflops: float | None = None,
                 **options: Any) -> list[dict[str, Any]]:
    """One row per (preset, GPU size): the largest fitting micro-batch (or ``micro_batch``), the
    terms there, and the true training FLOPs/token (the trainer's MFU count, models/config.py
    shapes with the padded vocabulary) with the tokens/s that ``mfu`` of the GPU's peak needs."""
    from megatron_soda.models.config import preset
    from megatron_soda.scaling.flops import training_flops_per_token

    if not presets or not gpu_gib:
        raise ValueError("give at least one preset and one GPU size")
    rows = []
    for name in presets:
        arch = preset(name).with_overrides(vocab_size=vocab_size, seq_length=seq_length)
        arch.check_tensor_parallel(options.get("tp", 1))
        if options.get("pp", 1) > arch.num_layers:
            raise ValueError(f"--pp {options['pp']}: {name} has only {arch.num_layers} layers")
        flops = training_flops_per_token(model_shape(arch))
        for gib in gpu_gib:
            gpu, peak, source = GPU_PEAKS.get(int(round(gib)), (f"{gib:g} GiB", None, "no known peak"))
            peak = peak_tflops or peak
            b = micro_batch or max_micro_batch(arch, gib * GIB, **options)
            est = estimate_memory(arch, micro_batch=max(b, 1), **options)
            rows.append({"preset": name, "gpu_gib": gib, "gpu": gpu, "micro_batch": b,
                         "fits": est.total <= gib * GIB, **{k: v for k, v in est.to_dict().items() if k != "micro_batch"},
                         "train_flops_per_token": flops, "peak_tflops": peak,
                         "peak_source": "--peak-tflops" if peak_tflops else source, "mfu": mfu,
                         "tokens_per_s_for_mfu": tokens_per_second_for_mfu(flops, peak, mfu) if peak else None})
    return rows


def format_memory_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (GiB; micro-batch 0: not even one sequence fits, terms shown at 1)."""
    cols = ["preset", "GPU GiB", "micro-batch", "weights", "grads", "optim", "activations", "head",
            "other+reserve", "total", "train GFLOP/token", "tokens/s at MFU"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        g = lambda k, r=r: f"{r[k] / GIB:.1f}"  # noqa: E731
        rest = (r["other"] + r["reserved"]) / GIB
        tps = f"{r['tokens_per_s_for_mfu']:,.0f}" if r["tokens_per_s_for_mfu"] else "-"
        mb = str(r["micro_batch"]) if r["fits"] else (
            f"0 (1 needs {r['total'] / GIB:.0f})" if not r["micro_batch"] else f"{r['micro_batch']} (too big)")
        out.append(f"| {r['preset']} | {r['gpu_gib']:g} | {mb} | {g('weights')} | {g('grads')} | {g('optimizer')} | "
                   f"{g('activations')} | {g('head')} | {rest:.1f} | {g('total')} | "
                   f"{r['train_flops_per_token'] / 1e9:.2f} | {tps} |")
    first = rows[0] if rows else {}
    peaks = sorted({(r["gpu"], r["peak_tflops"], r["peak_source"]) for r in rows}, key=str)
    out.append("")
    out.append(f"seq {first.get('seq_length')}; tokens/s at MFU {first.get('mfu', 0):.0%} of: "
               + "; ".join(f"{g} {p:g} TFLOP/s ({s})" for g, p, s in peaks if p))
    out.append("Estimates from megatron_soda/scaling/memory.py, not GPU measurements.")
    return "\n".join(out)


def add_memory_parser(sub: Any) -> None:
    """The ``memory`` subcommand of ``python -m megatron_soda.scaling``."""
    from megatron_soda.scaling.rules import SODA_VOCAB_SIZE

    def csv(kind):
        def parse(text: str) -> list:
            try:
                return [kind(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
        return parse

    def at_least(low: int | float, kind=int):
        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
            if value < low:
                raise argparse.ArgumentTypeError(f"{text} must be >= {low}")
            return value
        return parse

    def positive(text: str) -> float:
        value = at_least(0.0, float)(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    p = sub.add_parser("memory", help="estimated GPU memory per preset: the largest micro-batch that fits, "
                       "its terms, true training FLOPs/token and the tokens/s an MFU target needs")
    p.add_argument("--presets", type=csv(str), default=["135m", "600m", "1.7b", "4b"])
    p.add_argument("--gpu-gib", type=csv(float), default=[80.0, 141.0], help="GPU memory sizes in GiB")
    p.add_argument("--seq-length", type=at_least(1), default=4096)
    p.add_argument("--vocab-size", type=at_least(1), default=SODA_VOCAB_SIZE, help="unpadded (SODA: 144,644)")
    p.add_argument("--micro-batch", type=at_least(1), help="the terms at this micro-batch instead of the largest")
    p.add_argument("--attention-backend", choices=BACKENDS, default="flex")
    p.add_argument("--head-chunk-tokens", type=at_least(0), default=0)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--recompute", choices=RECOMPUTE, default="none")
    p.add_argument("--tp", type=at_least(1), default=1)
    p.add_argument("--pp", type=at_least(1), default=1)
    p.add_argument("--dp", type=at_least(1), default=1)
    p.add_argument("--cp", type=at_least(1), default=1, help="context-parallel size (flex attention)")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--no-distributed-optimizer", action="store_true")
    p.add_argument("--mfu", type=positive, default=0.35, help="MFU target of the tokens/s column")
    p.add_argument("--peak-tflops", type=positive, help="dense peak for every GPU size (default: GPU_PEAKS)")
    p.add_argument("--norms", choices=("fused", "composite"), default="fused",
                   help="RMSNorm's saved tensors: fused (torch's CUDA kernel: input + rstd) or composite "
                   "(torch's decomposition, as on CPU: fp32 input and output copies)")
    p.add_argument("--format", choices=("table", "json"), default="table")


def run_memory_command(args: argparse.Namespace) -> str:
    """The ``memory`` subcommand's output (ValueError for impossible options)."""
    rows = memory_table(args.presets, args.gpu_gib, seq_length=args.seq_length, vocab_size=args.vocab_size,
                        micro_batch=args.micro_batch, mfu=args.mfu, peak_tflops=args.peak_tflops, tp=args.tp,
                        pp=args.pp, dp=args.dp, cp=args.cp, sequence_parallel=args.sequence_parallel,
                        distributed_optimizer=not args.no_distributed_optimizer, precision=args.precision,
                        recompute=args.recompute, attention_backend=args.attention_backend,
                        head_chunk_tokens=args.head_chunk_tokens, norms=args.norms)
    return json.dumps(rows, indent=2) if args.format == "json" else format_memory_table(rows)
