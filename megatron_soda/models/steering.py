"""Steering the megatron-core GPTModel: add ``delta`` to the output of one TransformerLayer at
chosen token positions, under tensor, sequence and pipeline parallelism.

This sits in ``models/`` (below ``config/`` and ``training/``) because the trainer's task
evaluator (``training/task_eval.py``, flags ``--eval-tasks-steer*``) steers too, and
``tests/test_layering.py`` forbids ``training`` to import ``steer`` (even inside a function).
``steer/megatron_hooks.py`` is the steer-side entry (a :class:`~megatron_soda.steer.hooks.Steering`);
the pure pieces both share are here: the position scopes, the strength units and the reading of
one layer of a steering-vector file.  Importing this module imports neither torch nor megatron.

Where the addition lands (megatron-core 0.16.1, ``transformer_layer.py`` ``forward`` returns
``(output, context)``):

* the layer output is ``[s, b, h]`` (sbhd), so the mask of ids ``[b, s]`` is transposed;
  under Transformer Engine's packed THD batches (``training/data.py`` ``make_batch(packed=True)``)
  ids are ``[1, b*s]`` and the output ``[b*s, 1, h]``: the same transpose;
* with ``--sequence-parallel`` the output is sharded along its first dimension: tensor-parallel
  rank ``r`` holds rows ``r*n/tp .. (r+1)*n/tp``, and adds only to those (:func:`local_rows`);
* the hidden dimension is never sharded in the layer output: the full vector on every rank;
* the layer is found by its global number (``layer_number`` is 1-based over all pipeline
  stages and virtual chunks); only the chunk holding it adds.  The ids come from a forward
  pre-hook on the chunk's GPTModel: ``training/task_eval.py`` gives every stage its tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

POSITIONS = ("audio", "text", "both")
ALPHA_UNITS = ("raw", "norm")
# steering-vector files (steer/vectors.py writes them): JSON metadata entry, format and version
META_KEY = "soda_steer"
FORMAT = "soda-steering-vector"
VERSION = 1


def position_mask(ids: torch.Tensor, layout: Any, positions: str) -> torch.Tensor:
    """Bool mask of the ids steered under ``positions`` (markers, BOS/EOS never)."""
    from megatron_soda.format.kinds import KIND_TEXT, token_kinds_torch

    if positions not in POSITIONS:
        raise ValueError(f"steer positions {positions!r}: choose one of {POSITIONS}")
    audio = ids >= layout.audio_offset
    text = token_kinds_torch(ids, layout) == KIND_TEXT
    return {"audio": audio, "text": text, "both": audio | text}[positions]


def in_units(vector: torch.Tensor, units: str, median_norm: float | None, what: str = "") -> torch.Tensor:
    """The vector that ``alpha`` multiplies: ``raw`` the stored vector; ``norm`` the unit vector
    times the layer's median residual norm (alpha 1 = a shift as large as a typical residual)."""
    if units not in ALPHA_UNITS:
        raise ValueError(f"steer alpha units {units!r}: choose one of {ALPHA_UNITS}")
    if units == "raw":
        return vector
    if median_norm is None:
        raise ValueError(f"{what}: no median residual norm stored (use alpha units raw)")
    n = float(vector.norm())
    return vector / n * median_norm if n > 0 else vector


# metadata every steering-vector file holds, and the JSON type of each (steer/vectors.py load_vectors)
_META_STR = ("method", "concept", "text_format", "model_fingerprint")
_META_NORMS = ("median_residual_norm", "norm")  # {"<layer>": number}; "norm" optional


def _check_metadata(meta: Any) -> dict:
    """``meta`` (parsed JSON) as a steering-vector file's metadata, or ValueError (no path)."""
    import math

    if not isinstance(meta, dict):
        raise ValueError(f"metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}, "
                         f"expected {FORMAT!r} version {VERSION}")
    for key in _META_STR:
        if not isinstance(meta.get(key), str):
            raise ValueError(f"metadata {key!r} is {meta.get(key)!r}, not a string")
    for key in _META_NORMS:
        norms = meta.get(key, {} if key == "norm" else None)
        if not isinstance(norms, dict):
            raise ValueError(f"metadata {key!r} is {norms!r}, not an object {{layer: number}}")
        for layer, value in norms.items():
            if not (_is_number(layer) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)):
                raise ValueError(f"metadata {key!r}: {layer!r}: {value!r} is not a layer and a finite number")
    return meta


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _layer_number(name: str) -> int:
    prefix, _, number = name.partition(".")
    if prefix != "layer" or not _is_number(number):
        raise ValueError(f"tensor {name!r}: expected only tensors named layer.<L>")
    return int(number)


def read_vector_file(path: str) -> tuple[dict, dict[int, torch.Tensor]]:
    """(metadata, {layer: float32 vector}) of a steering-vector file (``steer/vectors.py`` writes
    them: safetensors, tensors ``layer.<L>``, JSON metadata under ``META_KEY``).  The file is
    untrusted: anything malformed (not safetensors, truncated, metadata that is not the expected
    JSON object, a tensor that is not a finite 1-D ``layer.<L>`` vector, layers of different
    sizes) raises ``ValueError`` naming ``path``.  Safetensors only: nothing is unpickled."""
    import json

    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            if raw is None:
                raise ValueError(f"not a steering-vector file (no {META_KEY} metadata; "
                                 "python -m megatron_soda.steer extract writes them)")
            meta = _check_metadata(json.loads(raw))
            vectors = {}
            for name in f.keys():
                layer, vec = _layer_number(name), f.get_tensor(name)
                if vec.dim() != 1 or not (vec.is_floating_point() and vec.numel()):
                    raise ValueError(f"tensor {name!r} of shape {list(vec.shape)} and dtype {vec.dtype}: "
                                     "expected a float vector [hidden]")
                vectors[layer] = vec.float()
                if not torch.isfinite(vectors[layer]).all():
                    raise ValueError(f"layer {layer}: the vector holds NaN or infinite values")
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"{path}: {e}") from e
    except (SafetensorError, KeyError, TypeError, AttributeError, OSError) as e:
        raise ValueError(f"{path}: not a readable steering-vector file ({type(e).__name__}: {e})") from e
    if not vectors:
        raise ValueError(f"{path}: holds no layer.<L> tensor")
    if len({v.numel() for v in vectors.values()}) > 1:
        raise ValueError(f"{path}: vectors of different sizes "
                         f"{ {k: v.numel() for k, v in sorted(vectors.items())} }")
    return meta, vectors


def read_layer(path: str, layer: int | None) -> tuple[int, torch.Tensor, float | None]:
    """(layer, float32 vector, the layer's median residual norm or None) of a steering-vector
    file (``layer`` None: the file's only layer)."""
    meta, vectors = read_vector_file(path)
    layers = sorted(vectors)
    if layer is None:
        if len(layers) != 1:
            raise ValueError(f"{path} holds layers {layers}: choose one")
        layer = layers[0]
    if layer not in vectors:
        raise ValueError(f"{path}: no vector for layer {layer} (the file has layers {layers})")
    norm = meta.get("median_residual_norm", {}).get(str(layer))
    return layer, vectors[layer], None if norm is None else float(norm)


def local_rows(mask: torch.Tensor, tp_rank: int, tp_size: int, sequence_parallel: bool) -> torch.Tensor:
    """The rows of ``mask`` (first dimension = the layer output's) this tensor-parallel rank
    holds: all of them, or under sequence parallel its ``1/tp`` block."""
    if not sequence_parallel or tp_size == 1:
        return mask
    n = mask.shape[0]
    if n % tp_size:
        raise ValueError(f"sequence parallel: {n} rows do not split over {tp_size} tensor-parallel ranks")
    step = n // tp_size
    return mask[tp_rank * step:(tp_rank + 1) * step]


def layer_mask(ids: torch.Tensor, mask_fn: Callable[[torch.Tensor], torch.Tensor], tp_rank: int,
               tp_size: int, sequence_parallel: bool) -> torch.Tensor:
    """``[rows, b]`` bool mask in the layer output's layout from ids ``[b, s]`` (or packed
    ``[1, b*s]``): transposed to sbhd/THD order, then this rank's sequence-parallel rows."""
    return local_rows(mask_fn(ids).t(), tp_rank, tp_size, sequence_parallel)


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunk)  # DDP / Float16Module -> GPTModel, as megatron does


@contextmanager
def layer_addition(model_chunks: list[torch.nn.Module], layer: int, delta: torch.Tensor,
                   mask_fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While inside, TransformerLayer ``layer`` (0-based, global) adds ``delta`` ``[h]`` to its
    output where ``mask_fn(input_ids)`` is true."""
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_layer import TransformerLayer

    chunks = [_unwrap(c) for c in model_chunks]
    cfg = chunks[0].config
    if cfg.context_parallel_size > 1:
        raise ValueError("steering the megatron model under context parallelism is not supported "
                         f"(context_parallel_size {cfg.context_parallel_size}); use 1")
    if getattr(cfg, "cuda_graph_impl", "none") not in (None, "none") or getattr(cfg, "enable_cuda_graph", False):
        raise ValueError("steering needs module hooks, which CUDA graphs bypass: turn CUDA graphs off")
    if not 0 <= layer < cfg.num_layers:
        raise ValueError(f"steer layer {layer}: the model has layers 0..{cfg.num_layers - 1}")
    if delta.numel() != cfg.hidden_size:
        raise ValueError(f"steering vector of size {delta.numel()}, the model's hidden size is {cfg.hidden_size}")
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    handles = []
    for chunk in chunks:
        owners = [m for m in chunk.modules() if isinstance(m, TransformerLayer) and m.layer_number - 1 == layer]
        if not owners:
            continue
        state: dict[str, torch.Tensor | None] = {"ids": None}

        def capture(module, args, kwargs, state=state):
            state["ids"] = kwargs.get("input_ids", args[0] if args else None)

        def add(module, args, output, state=state):
            import torch

            ids = state["ids"]
            if ids is None:
                raise ValueError(f"steer layer {layer}: its pipeline stage got no input_ids to find "
                                 "the steered positions (give every stage the tokens)")
            hidden, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
            mask = layer_mask(ids, mask_fn, tp_rank, tp_size, module.config.sequence_parallel)
            if mask.shape != hidden.shape[:2]:
                raise ValueError(f"steering mask {tuple(mask.shape)} does not match the layer output "
                                 f"{tuple(hidden.shape)} (sbhd or THD expected)")
            d = delta.to(hidden.device, hidden.dtype)
            steered = torch.where(mask[..., None].to(hidden.device), hidden + d, hidden)
            return steered if rest is None else (steered, *rest)

        handles.append(chunk.register_forward_pre_hook(capture, with_kwargs=True))
        handles += [m.register_forward_hook(add) for m in owners]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
