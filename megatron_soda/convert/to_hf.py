"""megatron_soda checkpoint -> Hugging Face Qwen3ForCausalLM directory with the SODA tokenizer.

Streams: one megatron tensor (one layer's slice of a stacked tensor) is read, unfused and
appended to its safetensors shard before the next is read, so memory stays at a few tensors
whatever the model size.  The result is built in a staging directory beside ``SAVE`` and swapped
in when complete (:func:`megatron_soda.atomic_files.replace_dir`): a failed or killed conversion
leaves an existing ``SAVE`` whole.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from megatron_soda.atomic_files import recover_dir, replacing_dir, write_json_atomic
from megatron_soda.checkpointing import layout
from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_config import generation_config, hf_config
from megatron_soda.convert.hf_tokenizer import SODA_TOKENIZER_DIR
from megatron_soda.convert.safetensors_io import SafetensorsWriter
from megatron_soda.models.config import SodaModelConfig
from megatron_soda.output_lock import OutputLock, OutputLocked
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROVENANCE_FILE = "soda_conversion.json"
HF_JSON = {"indent": 2, "end": "\n"}  # how config.json and the other JSON files are written
_IGNORED = re.compile(r"^(optimizer\.|rng_state)|_extra_state")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r} (examples: 5GB, 500MB, 2GiB)")
    unit = (m.group(2) or "B").upper()
    scale = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }[unit]
    return int(float(m.group(1)) * scale)


def locate_checkpoint(load: str, iteration: int | None = None) -> str:
    """The ``iter_N`` directory to convert: ``load`` itself, iteration N under it, or the
    latest one named by its tracker."""
    if not os.path.isdir(load):
        raise ConversionError(f"{load}: no such directory")
    if iteration is not None:
        ckpt = (
            load
            if os.path.basename(os.path.normpath(load)) == f"iter_{iteration:07d}"
            else layout.iteration_dir(load, iteration)
        )
        if not os.path.isfile(os.path.join(ckpt, layout.META)):
            raise ConversionError(
                f"{ckpt}: no complete checkpoint of iteration {iteration} (no {layout.META})"
            )
        return ckpt
    try:
        ckpt = layout.find_checkpoint(load)
    except layout.CheckpointError as e:
        raise ConversionError(str(e)) from None
    if ckpt is None:
        raise ConversionError(
            f"{load}: not a megatron_soda checkpoint directory (no {layout.META} and no "
            f"{layout.TRACKER}); pass the --save directory of a training run or one iter_* in it"
        )
    return ckpt


def one_writer(convert: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``convert(load, save, ...)`` run holding ``<save>.lock`` (:class:`OutputLock`): a second
    conversion into the same output is refused while the first one writes (docs/security.md)."""

    @functools.wraps(convert)
    def run(load: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        save = args[0] if args else kwargs["save"]
        lock = OutputLock(os.path.normpath(os.path.abspath(save)) + ".lock", "conversion")
        try:
            lock.acquire()
        except OutputLocked as e:
            raise ConversionError(str(e)) from None
        try:
            return convert(load, *args, **kwargs)
        finally:
            lock.release()

    return run


def check_output(save: str, source: str, overwrite: bool) -> None:
    """Before building output ``save`` (in :func:`~megatron_soda.atomic_files.replacing_dir`):
    clean up a killed run's leftovers, and refuse an output that is not a directory, is not empty
    without ``overwrite``, or would replace the conversion's own input ``source``."""
    recover_dir(save)
    if os.path.lexists(save) and not os.path.isdir(save):
        raise ConversionError(f"{save}: exists and is not a directory")
    real = os.path.realpath(save)
    if os.path.commonpath([real, os.path.realpath(source)]) == real:
        raise ConversionError(
            f"{save}: holds the conversion's own input {source}; choose another output directory"
        )
    if os.path.isdir(save) and os.listdir(save) and not overwrite:
        raise ConversionError(f"{save}: exists and is not empty (pass --overwrite to replace it)")


class MegatronSource:
    """A checkpoint's model config, tokenizer and tensors, checked against each other."""

    def __init__(self, ckpt: str) -> None:
        self.ckpt = ckpt
        meta = layout.read_meta(ckpt)
        try:
            self.cfg = SodaModelConfig.from_dict(meta["model"])  # old records: plain RoPE (from_dict)
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{ckpt}/{layout.META}: bad model config ({e})") from None
        self.meta = meta
        try:
            self.tokenizer = SodaTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
        except TokenizerError as e:
            raise ConversionError(
                f"{ckpt}: the tokenizer saved with the checkpoint is unusable ({e})"
            ) from None
        if dict(self.tokenizer.unique_identifiers) != meta.get("tokenizer"):
            raise ConversionError(
                f"{ckpt}/tokenizer does not match the tokenizer recorded in {layout.META}"
            )
        if self.tokenizer.vocab_size != self.cfg.vocab_size:
            raise ConversionError(
                f"{ckpt}: tokenizer has {self.tokenizer.vocab_size} ids, the model config "
                f"{self.cfg.vocab_size}"
            )
        self.reader = DistCheckpointReader(ckpt)
        self.layer_keys = self._resolve_and_check()

    def _resolve_and_check(self) -> dict[str, str]:
        cfg, r, where = self.cfg, self.reader, self.ckpt
        keys: dict[str, str] = {}
        problems = []
        for p in names.LAYER_PARAMS:
            found = next((k for k in p.megatron_keys if k in r), None)
            if found is None:
                problems.append(f"missing {names.layer_key(p)}")
                continue
            keys[p.key] = found
            want = (cfg.num_layers, *names.megatron_layer_shape(p, cfg))
            if r.shape(found) != want:
                problems.append(f"{found} has shape {r.shape(found)}, the config implies {want}")
        for key, (_, vocab_rows) in names.GLOBAL_PARAMS.items():
            if key not in r:
                problems.append(f"missing {key}")
                continue
            shape = r.shape(key)
            ok = (
                shape == names.megatron_global_shape(key, cfg)
                if not vocab_rows
                else (
                    len(shape) == 2 and shape[1] == cfg.hidden_size and shape[0] >= cfg.vocab_size
                )
            )
            if not ok:
                problems.append(
                    f"{key} has shape {shape}, the config implies "
                    f"{names.megatron_global_shape(key, cfg)} (vocabulary {cfg.vocab_size})"
                )
        known = set(keys.values()) | set(names.GLOBAL_PARAMS)
        unknown = [k for k in r.keys() if k not in known and not _IGNORED.search(k)]
        if unknown:
            problems.append(f"tensors with no Qwen3 equivalent: {unknown[:6]}")
        if problems:
            raise ConversionError(
                f"{where}: the weights do not match the model config in {layout.META}: "
                + "; ".join(problems)
            )
        return keys

    def default_dtype(self) -> str:
        return (
            "bf16"
            if self.reader.dtype(names.EMBEDDING) in (torch.bfloat16, torch.float16)
            else "fp32"
        )

    def hf_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) in :func:`names.hf_specs` order, one read at a time."""
        cfg, r, vocab = self.cfg, self.reader, self.cfg.vocab_size
        yield names.HF_EMBEDDING, r.read(names.EMBEDDING)[:vocab]
        for i in range(cfg.num_layers):
            for p in names.LAYER_PARAMS:
                w = r.read(self.layer_keys[p.key], i)
                for name, t in zip(p.hf, names.unfuse(p, w, cfg)):
                    yield name.format(i=i), t
        yield names.HF_FINAL_NORM, r.read(names.FINAL_NORM)
        yield names.HF_OUTPUT, r.read(names.OUTPUT)[:vocab]


@one_writer
def convert_to_hf(
    load: str,
    save: str,
    iteration: int | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
    """Convert the checkpoint at ``load`` into an HF directory ``save``; returns a summary."""
    start = time.perf_counter()
    ckpt = locate_checkpoint(load, iteration)
    src = MegatronSource(ckpt)
    dtype = dtype or src.default_dtype()
    if dtype not in TORCH_DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose fp32 or bf16")
    check_output(save, load, overwrite)
    with replacing_dir(save) as tmp:
        writer = _write_hf_dir(src, tmp, dtype, max_shard_size)
    seconds = time.perf_counter() - start
    read_bytes = sum(src.reader.nbytes(k) for k in [*src.layer_keys.values(), *names.GLOBAL_PARAMS])
    summary = {
        "checkpoint": ckpt,
        "save": save,
        "dtype": dtype,
        "files": writer.files,
        "seconds": seconds,
        "model_bytes_read": read_bytes,
        "bytes_written": writer.total_bytes,
    }
    log(
        f"converted {ckpt} -> {save}: {len(writer.specs)} tensors, {writer.total_bytes / 1e6:.1f} MB {dtype} "
        f"in {len(writer.files)} file(s), {seconds:.1f} s"
    )
    return summary


def _write_hf_dir(src: MegatronSource, tmp: str, dtype: str, max_shard_size: str) -> SafetensorsWriter:
    """Write the HF directory of ``src`` into the empty directory ``tmp``."""
    ckpt = src.ckpt
    writer = SafetensorsWriter(
        tmp,
        [(name, shape, TORCH_DTYPES[dtype]) for name, shape in names.hf_specs(src.cfg)],
        parse_size(max_shard_size),
        metadata={"source": "megatron_soda"},
    )
    for name, tensor in src.hf_tensors():
        writer.write(name, tensor)
        del tensor
    writer.close()

    from megatron_soda.tokenizer.hf_export import export_hf_tokenizer

    tok, cfg = src.tokenizer, src.cfg
    write_json_atomic(os.path.join(tmp, "config.json"), hf_config(cfg, tok, dtype), **HF_JSON)
    write_json_atomic(
        os.path.join(tmp, "generation_config.json"), generation_config(tok), **HF_JSON
    )
    export_hf_tokenizer(tok, tmp, model_max_length=cfg.seq_length)
    tok.save(os.path.join(tmp, SODA_TOKENIZER_DIR))  # the trainer's tokenizer, verbatim
    train_state = src.meta.get("train_state", {})
    write_json_atomic(
        os.path.join(tmp, PROVENANCE_FILE),
        {
            "source_checkpoint": os.path.abspath(ckpt),
            "iteration": train_state.get("iteration"),
            "train_state": train_state,
            "saved_parallel_layout": src.meta.get("parallel"),
            "megatron_model_config": cfg.to_dict(),
            "tokenizer": dict(tok.unique_identifiers),
            "dtype": dtype,
        },
        **HF_JSON,
    )
    return writer
