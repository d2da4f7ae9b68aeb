"""Hugging Face Qwen3ForCausalLM directory -> megatron_soda checkpoint at a chosen TP/PP layout.

The checkpoint is written by the trainer's own code: TP x PP processes (gloo, CPU) each build
their stage of the model with :mod:`megatron_soda.models`, copy their slice of every weight in
(through the model's sharded state dict, so fused layouts and tensor-parallel splits come from
megatron itself) and save with :func:`megatron_soda.checkpointing.save_checkpoint`.  The result
is iteration 0 with no optimizer state, marked ``"weights_only": true`` in
``soda_checkpoint.json``: ``pretrain_soda.py --load CKPT`` (with or without ``--finetune``)
starts a fresh optimizer, schedule and data order from it.

The checkpoint is built in a staging directory beside ``save`` and swapped in when complete
(:func:`megatron_soda.atomic_files.replacing_dir`): with ``overwrite``, a failed or killed
conversion leaves the existing checkpoint whole, and the next run removes the leftover.  Every
file read from the HF directory is confined to it and a regular file
(:mod:`megatron_soda.convert.hf_files`); safetensors headers are validated in full.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from megatron_soda.atomic_files import replacing_dir, write_json_atomic
from megatron_soda.checkpointing import layout
from megatron_soda.config.cli import flags_for
from megatron_soda.convert import names
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.hf_config import hf_dir_config, model_config_from_hf
from megatron_soda.convert.hf_files import check_hf_dir
from megatron_soda.convert.hf_rope import describe
from megatron_soda.convert.hf_tokenizer import resolve_tokenizer
from megatron_soda.convert.hf_weights import HFWeights, extension_rows
from megatron_soda.convert.to_hf import check_output, one_writer
from megatron_soda.models.config import PRESETS, SHAPE_FIELDS, SodaModelConfig
from megatron_soda.tokenizer import SodaTokenizer

# The config fields besides the shape that the trainer must be told when they differ from the
# preset (the converter prints the flags; the trainer's load checks the shape only).
ARCHITECTURE_FIELDS = ("rotary_base", "use_rope_scaling", "rope_scaling_factor", "norm_epsilon")
WARM_START_ARCHS = ("soda", "source")
# What a warm start trains with by default: SODA's RoPE, norm epsilon and sequence length (the
# SodaModelConfig defaults), not the text model's.  That is what the authors' warm-start runs
# did: Levanter loaded the potsawee/qwen3x-* weights into the experiment's own model config
# (marin experiments/audio/exp1699_marin_audio_ws.py:75-77 and :113-117: qwen3_1_7b /
# qwen3_0_6b_hd128, i.e. rope=Llama3RotaryEmbeddingsConfig(), max_seq_len 4096, Levanter's default
# layer_norm_epsilon 1e-5; initialize_from_hf at :98 and :138), because default_train (marin
# experiments/defaults.py) leaves TrainLmConfig.use_hf_model_config at False (levanter
# src/levanter/main/train_lm.py:48, :93-95, :166-168), so Qwen3's own RoPE (base 1e6, plain) and
# RMSNorm epsilon (1e-6) were replaced.  warm_start_arch="source" keeps the text model's.
_SODA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SodaModelConfig)}
SODA_ARCHITECTURE = {k: _SODA_DEFAULTS[k] for k in (*ARCHITECTURE_FIELDS, "seq_length")}


def trainer_flags(cfg: SodaModelConfig, tokenizer_dir: str, **fields: Any) -> list[str]:
    """pretrain_soda.py flags that rebuild exactly this model (the nearest preset and the fields
    that differ from it, RoPE and norm epsilon included; the tokenizer directory carries the
    codebook count), plus any other config ``fields``; refuses a RoPE base the trainer's integer
    ``--rotary-base`` cannot express."""
    shape = cfg.shape_dict()
    preset = next(
        (n for n, p in PRESETS.items() if all(getattr(p, k) == v for k, v in shape.items())), None
    )
    base = PRESETS[preset or "tiny"]
    architecture = {}
    for k in (*SHAPE_FIELDS, *ARCHITECTURE_FIELDS):
        value = getattr(cfg, k)
        if getattr(base, k) == value:
            continue
        if k == "rotary_base":
            if not float(value).is_integer():
                raise ConversionError(
                    f"rope_theta {value} is not supported: the trainer's --rotary-base is an integer"
                )
            value = int(value)
        architecture[k] = value
    return flags_for(
        dict(
            model_size=preset or "tiny",
            architecture=architecture,
            tokenizer=tokenizer_dir,
            **fields,
        )
    )


@one_writer
def convert_from_hf(
    load: str,
    save: str,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    *,
    tokenizer: str | None = None,
    num_codebooks: int | None = None,
    seq_length: int | None = None,
    new_row_noise: float = 0.02,
    new_row_noise_unit: str = "absolute",
    warm_start_layout: str = "authors",
    warm_start_arch: str = "soda",
    seed: int = 1234,
    overwrite: bool = False,
    in_process: bool | None = None,
    log=print,
) -> dict[str, Any]:
    """Convert HF directory ``load`` into a megatron_soda checkpoint directory ``save``.

    A text model is a warm start: ``warm_start_layout`` ("authors": a Qwen tokenizer becomes the
    authors' Qwen3x base; "compact") fixes the new ids, ``new_row_noise``/``new_row_noise_unit``
    their rows, ``warm_start_arch`` ("soda": SODA's RoPE, norm epsilon and sequence length, as the
    authors' warm-start runs; "source": the text model's) the rest of the config.

    TP x PP worker processes write it (on the CPU, GPUs hidden); with TP = PP = 1 the work is
    done in this process, unless ``in_process`` is False, this process already has a
    torch.distributed group, or it sees a GPU."""
    start = time.perf_counter()
    check_hf_dir(load)
    check_output(save, load, overwrite)
    config = hf_dir_config(load)
    where = os.path.join(load, "config.json")
    if warm_start_arch not in WARM_START_ARCHS:
        raise ConversionError(f"warm-start architecture {warm_start_arch!r}: choose soda or source")
    resolved = resolve_tokenizer(load, tokenizer, num_codebooks, warm_start_layout)
    tok = resolved.tokenizer
    cfg = model_config_from_hf(config, where, tok.vocab_size, seq_length)
    if resolved.soda_source:
        _check_special_ids(config, where, tok)
    elif warm_start_arch == "soda":
        source = cfg
        cfg = cfg.with_overrides(
            **{**SODA_ARCHITECTURE, "seq_length": seq_length or SODA_ARCHITECTURE["seq_length"]}
        )
        log(
            f"warm start: SODA's {describe(cfg)}, RMSNorm epsilon {cfg.norm_epsilon:g} and sequence "
            f"length {cfg.seq_length} replace the text model's ({describe(source)}, epsilon "
            f"{source.norm_epsilon:g}), as in the authors' warm-start runs (warm_start_arch='source' "
            "keeps them)"
        )
    try:
        cfg.check_tensor_parallel(tensor_parallel)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    if pipeline_parallel < 1 or cfg.num_layers % pipeline_parallel:
        raise ConversionError(
            f"--pipeline-model-parallel-size {pipeline_parallel} does not divide the "
            f"{cfg.num_layers} layers"
        )
    ckpt = layout.iteration_dir(save, 0)
    flags = trainer_flags(cfg, os.path.join(ckpt, "tokenizer"))
    tied = bool(config.get("tie_word_embeddings", False))
    copy_rows = tok.vocab_size if resolved.copy_rows is None else resolved.copy_rows
    weights = HFWeights(load, cfg, tied=tied, copy_rows=copy_rows)
    weights.check()
    rows = weights.hf_vocab_rows()
    if config.get("vocab_size") not in (None, rows):
        raise ConversionError(
            f"{where}: vocab_size {config['vocab_size']}, but the embedding has {rows} rows"
        )
    if resolved.soda_source and rows != tok.vocab_size:
        raise ConversionError(
            f"{load}: the embedding has {rows} rows, the SODA tokenizer ({resolved.how}) "
            f"{tok.vocab_size} ids"
        )
    world = tensor_parallel * pipeline_parallel
    with replacing_dir(save) as staged, tempfile.TemporaryDirectory(
        prefix=".convert_", dir=staged
    ) as work:
        extension_path = None
        if copy_rows < tok.vocab_size:
            from safetensors.torch import save_file

            new = tok.vocab_size - copy_rows
            ext, base = {}, None
            for key in (names.EMBEDDING, names.OUTPUT):
                if base is None or not tied:  # tied: one HF tensor for both
                    base = weights.base_rows(key)
                ext[key] = extension_rows(base, new, new_row_noise, seed, key, new_row_noise_unit)
            extension_path = os.path.join(work, "extension.safetensors")
            save_file(ext, extension_path)
            del ext, base
            spread = f"{new_row_noise} x their std" if new_row_noise_unit == "std" else f"N(0, {new_row_noise}^2)"
            log(
                f"warm start: {new} new vocabulary rows ({new - 4 - tok.layout.num_audio_tokens}"
                f" specials, 4 markers, {tok.layout.num_audio_tokens} audio tokens): mean of the {copy_rows} "
                f"existing rows + {spread} noise"
            )
        del weights
        tok.save(os.path.join(work, "tokenizer"))
        plan = {
            "hf_dir": os.path.abspath(load),
            "save": os.path.abspath(staged),
            "cfg": cfg.to_dict(),
            "tp": tensor_parallel,
            "pp": pipeline_parallel,
            "world": world,
            "store": os.path.join(work, "store"),
            "tied": tied,
            "copy_rows": copy_rows,
            "extension": extension_path,
            "tokenizer_dir": os.path.join(work, "tokenizer"),
            "threads": max(1, (os.cpu_count() or 1) // world),
            "run_args": {
                "converted_from": os.path.abspath(load),
                "tokenizer_source": resolved.how,
                "tensor_model_parallel_size": tensor_parallel,
                "pipeline_model_parallel_size": pipeline_parallel,
                "warm_start": not resolved.soda_source,
                **(
                    {}
                    if resolved.soda_source
                    else {
                        "new_row_noise": new_row_noise,
                        "new_row_noise_unit": new_row_noise_unit,
                        "warm_start_layout": warm_start_layout,
                        "warm_start_arch": warm_start_arch,
                        "copied_vocab_rows": copy_rows,
                        "seed": seed,
                    }
                ),
            },
        }
        if (
            world == 1
            and in_process is not False
            and not _distributed_initialized()
            and not _cuda()
        ):
            from megatron_soda.convert.worker import run

            run(plan, 0)
        else:
            _spawn(plan, world, work)
        staged_ckpt = layout.iteration_dir(staged, 0)
        meta = layout.read_meta(staged_ckpt)
        meta.update(
            weights_only=True,
            converted_from={
                "hf_dir": os.path.abspath(load),
                "tokenizer": resolved.how,
                "warm_start": not resolved.soda_source,
            },
        )
        write_json_atomic(
            os.path.join(staged_ckpt, layout.META), meta, durable=True, indent=2, sort_keys=True
        )
    seconds = time.perf_counter() - start
    log(
        f"converted {load} -> {ckpt} (TP {tensor_parallel}, PP {pipeline_parallel}, weights only) in {seconds:.1f} s\n"
        "train from it with: pretrain_soda.py "
        + " ".join(
            trainer_flags(
                cfg,
                os.path.join(ckpt, "tokenizer"),
                load=save,
                finetune=True,
                tensor_model_parallel_size=tensor_parallel,
                pipeline_model_parallel_size=pipeline_parallel,
            )
        )
        + " ..."
    )
    return {
        "checkpoint": ckpt,
        "seconds": seconds,
        "model_config": cfg.to_dict(),
        "trainer_flags": flags,
        "tokenizer_source": resolved.how,
        "warm_start": not resolved.soda_source,
    }


def _check_special_ids(config: dict[str, Any], where: str, tok: SodaTokenizer) -> None:
    """A SODA model's config.json BOS/EOS ids (Levanter writes the tokenizer's) must be the
    tokenizer's: otherwise the tokenizer is not the one the model was trained with."""
    for key, want in (("bos_token_id", tok.bos), ("eos_token_id", tok.eos)):
        got = config.get(key)
        if isinstance(got, list):
            got = got[0] if len(got) == 1 else got
        if got is not None and got != want:
            raise ConversionError(
                f"{where}: {key} {got}, but the SODA tokenizer's is {want}: a different tokenizer "
                "than the model's"
            )


def _distributed_initialized() -> bool:
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _spawn(plan: dict[str, Any], world: int, work: str) -> None:
    """Run the ``world`` ranks through :mod:`megatron_soda.convert.worker` (a fresh interpreter,
    so nothing depends on how the caller's ``__main__`` is written)."""
    plan_path = os.path.join(work, "plan.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(plan["threads"]),
        PYTHONWARNINGS="ignore",
        CUDA_VISIBLE_DEVICES="",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_soda.convert.worker", plan_path],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        logs = sorted(n for n in os.listdir(work) if n.startswith("rank") and n.endswith(".log"))
        tails = []
        for name in logs:
            with open(os.path.join(work, name), errors="replace") as f:
                text = f.read().strip()
            if "Traceback" in text:
                tails.append(f"--- {name}\n{text[-2500:]}")
        detail = "\n".join(tails) or (proc.stdout + proc.stderr)[-3000:]
        raise ConversionError(f"conversion workers failed (exit {proc.returncode}):\n{detail}")
