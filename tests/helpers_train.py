"""Helpers for the training tests: synthetic shards (the preprocessing tool's format) and
torchrun launches of pretrain_soda.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from megatron_soda.tokenizer import SodaTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_BIN = os.path.dirname(sys.executable)


def _text_ids(tok: SodaTokenizer, rng: np.random.Generator, n: int) -> list[int]:
    """``n`` random ids of the text vocabulary, never BOS or EOS (which only bound documents: the
    trainer's shard check refuses them inside one)."""
    lay = tok.layout
    ids = rng.integers(0, lay.base_vocab_size, n)
    ids[(ids == lay.bos_id) | (ids == lay.eos_id)] = 0
    return ids.tolist()


def speech_document(tok: SodaTokenizer, rng: np.random.Generator, utterances: int = 3) -> list[int]:
    """``<bos>(<text_start>T<text_end><audio_start>A<audio_end>)* <eos>``, either order."""
    lay = tok.layout
    text_first = bool(rng.integers(2))
    doc = [lay.bos_id]
    for _ in range(utterances):
        text = [lay.text_start_id, *_text_ids(tok, rng, int(rng.integers(3, 12))), lay.text_end_id]
        frames = int(rng.integers(2, 8))
        codes = rng.integers(0, lay.codebook_size, (lay.num_codebooks, frames))
        audio = [lay.audio_start_id, *lay.codes_to_ids(codes).tolist(), lay.audio_end_id]
        doc += text + audio if text_first else audio + text
    return doc + [lay.eos_id]


def text_document(tok: SodaTokenizer, rng: np.random.Generator) -> list[int]:
    lay = tok.layout
    body = _text_ids(tok, rng, int(rng.integers(20, 80)))
    return [lay.bos_id, *body, lay.eos_id]


def write_shard(prefix: str, tok: SodaTokenizer, kind: str, num_docs: int, seed: int,
                codec: str = "random:tiny") -> str:
    """Write PREFIX.bin/.idx (int32, one sequence per document) and PREFIX.stats.json (speech
    shards record ``codec``'s fingerprint, as preprocess_data.py does)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_soda.audio.codec import codec_fingerprint

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    tokens = 0
    for _ in range(num_docs):
        doc = speech_document(tok, rng) if kind == "speech" else text_document(tok, rng)
        builder.add_document(torch.tensor(doc, dtype=torch.int32), [len(doc)])
        tokens += len(doc)
    builder.finalize(prefix + ".idx")
    with open(prefix + ".stats.json", "w") as f:
        stats = {"layout": tok.layout.to_dict(), "documents": num_docs, "tokens": tokens,
                 "num_codebooks": tok.layout.num_codebooks, "codec": None}
        if kind == "speech":
            stats.update(codec=codec, codec_fingerprint=codec_fingerprint(codec), codec_random=True)
        json.dump(stats, f)
    return prefix


def make_dataset(root: str, tok: SodaTokenizer, speech_docs: int = 400, text_docs: int = 200) -> tuple[str, str]:
    speech = write_shard(os.path.join(root, "speech", "shard"), tok, "speech", speech_docs, seed=1)
    text = write_shard(os.path.join(root, "text", "shard"), tok, "text", text_docs, seed=2)
    return speech, text


def train_workspace(root, tokenizer_path: str) -> dict:
    """The torchrun tests' shared inputs under ``root``: a speech and a text shard (8 codebooks)."""
    speech, text = make_dataset(str(root / "data"), SodaTokenizer(tokenizer_path, num_codebooks=8))
    return {"root": root, "tok": tokenizer_path, "speech": speech, "text": text}


def tiny_run(tokenizer_path: str, speech: str, text: str, metrics: str) -> dict:
    """The config fields of the issue's command line: tiny model on CPU, a 95/5 speech/text blend."""
    return dict(device="cpu", model_size="tiny", tokenizer=tokenizer_path, num_codebooks=8,
                data_path=["0.95", speech, "0.05", text], seq_length=256, micro_batch_size=2,
                global_batch_size=8, train_iters=12, lr=1e-3, seed=1, log_interval=1,
                metrics_jsonl=metrics, eval_iters=1)


def base_args(tokenizer_path: str, speech: str, text: str, metrics: str, *extra: str) -> list[str]:
    """The issue's command line (spelled by the trainer's command builder), then ``extra`` flags
    (argparse: a repeated flag's last value wins)."""
    from megatron_soda.config.cli import flags_for

    return [*flags_for(tiny_run(tokenizer_path, speech, text, metrics)), *extra]


def torchrun(nproc: int, args: list[str], timeout: float = 300, check: bool = True,
             script: str = "pretrain_soda.py") -> subprocess.CompletedProcess:
    """``torchrun`` of ``script`` (relative to the repository) with ``args``; raises with the
    output's tail when it fails and ``check``."""
    cmd = [os.path.join(PYTHON_BIN, "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(_free_port()),
           os.path.join(REPO, script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(path: str, split: str = "train") -> list[dict]:
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def losses(path: str) -> dict[int, float]:
    return {r["iteration"]: r["lm_loss"] for r in read_metrics(path)}


class SingleProcessMegatron:
    """torch.distributed (gloo, world size 1) + the CPU compatibility layer + megatron's parallel
    state inside the test process; undone on exit."""

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed

    def __enter__(self) -> SingleProcessMegatron:
        import tempfile

        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        from megatron_soda import compat

        compat.enable()
        self._store = tempfile.NamedTemporaryFile(delete=False)
        torch.distributed.init_process_group("gloo", init_method=f"file://{self._store.name}", rank=0, world_size=1)
        parallel_state.initialize_model_parallel(1, 1)
        model_parallel_cuda_manual_seed(self.seed)
        return self

    def __exit__(self, *exc) -> None:
        from megatron.core import parallel_state

        from megatron_soda import compat

        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()
        compat.disable()
        os.unlink(self._store.name)


def build_tiny_model(vocab_size: int, seed: int = 1, **overrides):
    """A tiny SodaGPTModel (TP=PP=1), initialised like the trainer does."""
    from megatron_soda.config import ParallelConfig, PrecisionConfig
    from megatron_soda.models import preset
    from megatron_soda.models.gpt import build_model_chunk
    from megatron_soda.models.init import initialize_parameters
    from megatron_soda.training.model_setup import transformer_config

    cfg = preset("tiny").with_overrides(vocab_size=vocab_size, **overrides)
    config = transformer_config(cfg, ParallelConfig(device="cpu"), PrecisionConfig())
    model = build_model_chunk(cfg, config, False, True, True)
    initialize_parameters([model], seed, cfg)
    return model, cfg
