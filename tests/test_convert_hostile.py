"""Hostile input and faults in the conversion tools: safetensors files whose headers lie, HF
directories whose files escape them or are not regular files, pickled weights, and conversions
that fail or are killed while an existing output is being replaced."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys

import pytest
import torch
from helpers_hostile import Payload
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from megatron_soda.atomic_files import recover_dir
from megatron_soda.convert import names
from megatron_soda.convert.dist_reader import DistCheckpointReader
from megatron_soda.convert.errors import ConversionError
from megatron_soda.convert.from_hf import convert_from_hf
from megatron_soda.convert.safetensors_io import SafetensorsReader
from megatron_soda.convert.to_hf import convert_to_hf, locate_checkpoint
from megatron_soda.models import preset
from megatron_soda.testing.checkpoints import save_random_checkpoint
from megatron_soda.tokenizer import SodaTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = {"log": lambda *a, **k: None}
ST = "model.safetensors"
Q_NORM = "model.layers.0.self_attn.q_norm.weight"
K_NORM = "model.layers.0.self_attn.k_norm.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def soda(tmp_path_factory, small_bpe_path):
    """A random checkpoint, its HF conversion, and that converted back into a checkpoint."""
    root = tmp_path_factory.mktemp("convert_hostile")
    tok = SodaTokenizer(small_bpe_path, num_codebooks=8)
    cfg = preset("tiny").with_overrides(vocab_size=tok.vocab_size)
    save_random_checkpoint(str(root / "ckpt"), cfg, tok, seed=11, iteration=2)
    hf = str(root / "hf")
    convert_to_hf(str(root / "ckpt"), hf, **QUIET)
    return {"root": root, "hf": hf, "cfg": cfg}


def copy_hf(soda, tmp_path, name="hf_copy") -> str:
    out = str(tmp_path / name)
    shutil.copytree(soda["hf"], out)
    return out


def read_raw(path: str) -> tuple[dict, bytes]:
    """The header (parsed independently of the code under test) and data section of a file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        return header, f.read()


def write_raw(path: str, header_text: str, data: bytes) -> None:
    blob = header_text.encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def hf_embedding(hf: str) -> torch.Tensor:
    return load_file(os.path.join(hf, ST))[names.HF_EMBEDDING]


def checkpoint_embedding(save: str) -> torch.Tensor:
    return DistCheckpointReader(locate_checkpoint(save)).read(names.EMBEDDING)


# ------------------------------------------------------------------ lying safetensors headers


def _overlap(h, data):
    h[K_NORM]["data_offsets"] = list(h[Q_NORM]["data_offsets"])  # k_norm reads q_norm's bytes
    return json.dumps(h), data


def _negative(h, data):
    begin, end = h[Q_NORM]["data_offsets"]
    h[Q_NORM]["data_offsets"] = [begin - end - 8, -8]  # right size, inside the header
    return json.dumps(h), data


def _not_object(h, data):
    return json.dumps([h]), data


def _duplicate_key(h, data):
    lie = dict(h[K_NORM])
    text = json.dumps(h)
    return text[:-1] + f', "{Q_NORM}": {json.dumps(lie)}}}', data  # the second q_norm wins in json


def _trailing_bytes(h, data):
    return json.dumps(h), data + b"\0" * 64


def _bad_metadata(h, data):
    h["__metadata__"] = {"format": ["pt"]}
    return json.dumps(h), data


LIES = {
    "overlapping offsets": (_overlap, "overlaps"),
    "negative offsets": (_negative, "data_offsets"),
    "not a JSON object": (_not_object, "not a JSON object"),
    "a tensor named twice": (_duplicate_key, "appears twice"),
    "bytes no tensor covers": (_trailing_bytes, "the data section has"),
    "metadata not str->str": (_bad_metadata, "__metadata__"),
}


@pytest.mark.parametrize("lie", LIES)
def test_lying_header_is_refused(soda, tmp_path, lie):
    """Each of these converted 'successfully' into wrong weights (or crashed with a traceback);
    the safetensors library itself refuses every one of them too."""
    make, reason = LIES[lie]
    hf = copy_hf(soda, tmp_path)
    path = os.path.join(hf, ST)
    write_raw(path, *make(*read_raw(path)))
    with pytest.raises(SafetensorError):  # the reference implementation agrees: the file lies
        with safe_open(path, "pt") as f:
            [f.get_tensor(k) for k in f.keys()]
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as e:
        convert_from_hf(hf, str(out), **QUIET)
    assert path in str(e.value) and reason in str(e.value)
    assert not out.exists()


def test_dtype_that_does_not_match_the_weight_is_refused(soda, tmp_path):
    """A weight declared I32 (same byte count, so the header is self-consistent and the
    safetensors library reads it) would become integer-valued garbage weights."""
    hf = copy_hf(soda, tmp_path)
    path = os.path.join(hf, ST)
    header, data = read_raw(path)
    header[DOWN]["dtype"] = "I32"
    write_raw(path, json.dumps(header), data)
    assert load_file(path)[DOWN].dtype == torch.int32  # valid safetensors, wrong for a model
    with pytest.raises(ConversionError) as e:
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)
    assert all(s in str(e.value) for s in (DOWN, "torch.int32", "floating-point", ST))


def test_reader_matches_the_safetensors_library(tmp_path):
    """What the safetensors library writes (odd sizes, empty and integer tensors, bf16) reads
    back identically."""
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.empty(0, 4),
        "c": torch.arange(7, dtype=torch.int64),
        "d": torch.randn(2, 3).to(torch.bfloat16),
        "e": torch.tensor([True, False, True]),
    }
    save_file(tensors, str(tmp_path / ST), metadata={"format": "pt"})
    reader = SafetensorsReader(str(tmp_path))
    reference = load_file(str(tmp_path / ST))
    assert sorted(reader.names()) == sorted(reference)
    for name, want in reference.items():
        got = reader.get(name)
        assert got.dtype == want.dtype and torch.equal(got, want), name


# ------------------------------------------------------------- files outside the HF directory


def _index_pointing_at(hf: str, target: str) -> None:
    """Replace the weights by an index naming ``target`` for every tensor."""
    header, _ = read_raw(os.path.join(hf, ST))
    weight_map = {k: target for k in header if k != "__metadata__"}
    os.remove(os.path.join(hf, ST))
    with open(os.path.join(hf, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_index_naming_a_file_outside_the_directory_is_refused(soda, tmp_path, where):
    outside = tmp_path / "elsewhere" / "model-00001-of-00001.safetensors"
    outside.parent.mkdir()
    shutil.copy(os.path.join(soda["hf"], ST), outside)  # valid weights: only the path is wrong
    hf = copy_hf(soda, tmp_path)
    target = "../elsewhere/" + outside.name if where == "relative" else str(outside)
    _index_pointing_at(hf, target)
    with pytest.raises(ConversionError, match="points outside the directory"):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)


@pytest.mark.parametrize("name", [ST, "config.json", "tokenizer.json"])
def test_symlink_out_of_the_directory_is_refused(soda, tmp_path, name):
    outside = tmp_path / "private"
    outside.mkdir()
    shutil.copy(os.path.join(soda["hf"], name), outside / name)
    hf = copy_hf(soda, tmp_path)
    os.remove(os.path.join(hf, name))
    os.symlink(outside / name, os.path.join(hf, name))
    with pytest.raises(ConversionError, match="a symlink to .*outside"):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)


def test_hub_cache_snapshot_symlinks_are_followed(soda, tmp_path):
    """The Hugging Face hub cache: snapshots/REV/FILE -> ../../blobs/HASH (must keep working)."""
    repo = tmp_path / "models--org--soda"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for k, name in enumerate(sorted(os.listdir(soda["hf"]))):
        src = os.path.join(soda["hf"], name)
        if os.path.isdir(src):
            shutil.copytree(src, snapshot / name)
            continue
        shutil.copy(src, blobs / f"blob{k}")
        os.symlink(f"../../blobs/blob{k}", snapshot / name)
    convert_from_hf(str(snapshot), str(tmp_path / "out"), **QUIET)
    assert torch.equal(
        checkpoint_embedding(str(tmp_path / "out"))[: soda["cfg"].vocab_size],
        hf_embedding(soda["hf"]),
    )


def test_fifo_config_is_refused_without_hanging(soda, tmp_path):
    hf = copy_hf(soda, tmp_path)
    os.remove(os.path.join(hf, "config.json"))
    os.mkfifo(os.path.join(hf, "config.json"))
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked opening a FIFO"))
    signal.alarm(20)
    try:
        with pytest.raises(ConversionError, match="config.json: not a regular file"):
            convert_from_hf(hf, str(tmp_path / "out"), **QUIET)
    finally:
        signal.alarm(0)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickled_weights_of_any_name_are_refused_by_name(soda, tmp_path, name):
    hf = copy_hf(soda, tmp_path)
    os.remove(os.path.join(hf, ST))
    sentinel = tmp_path / "pwned"
    with open(os.path.join(hf, name), "wb") as f:
        pickle.dump(Payload(str(sentinel)), f)
    with pytest.raises(ConversionError, match=f"found {name}: pickled weights are not loaded"):
        convert_from_hf(hf, str(tmp_path / "out"), **QUIET)
    assert not sentinel.exists()


# ------------------------------------------------------------------- replacing an output


@pytest.fixture
def existing(soda, tmp_path):
    """A converted checkpoint to be replaced, and its embedding."""
    save = str(tmp_path / "ckpt_out")
    convert_from_hf(soda["hf"], save, **QUIET)
    return save, checkpoint_embedding(save).clone()


def test_failed_overwrite_keeps_the_old_checkpoint(soda, tmp_path, existing, monkeypatch):
    save, before = existing
    import megatron_soda.convert.worker as worker

    def fail(plan, rank):
        os.makedirs(os.path.join(plan["save"], "iter_0000000.tmp"))
        raise RuntimeError("worker died")

    monkeypatch.setattr(worker, "run", fail)
    with pytest.raises(RuntimeError, match="worker died"):
        convert_from_hf(soda["hf"], save, overwrite=True, **QUIET)
    assert torch.equal(checkpoint_embedding(save), before)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_out"]  # no staging directory left behind


_KILLED = """
import os, signal, sys
import megatron_soda.convert.worker as worker
from megatron_soda.convert.from_hf import convert_from_hf
def die(plan, rank):
    open(os.path.join(plan["save"], "partial"), "w").write("x")
    os.kill(os.getpid(), signal.SIGKILL)
worker.run = die
convert_from_hf(sys.argv[1], sys.argv[2], overwrite=True, log=lambda *a: None)
"""


def test_killed_overwrite_keeps_the_old_checkpoint_and_rerun_cleans_up(
    soda, tmp_path, existing
):
    save, before = existing
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _KILLED, soda["hf"], save], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert torch.equal(checkpoint_embedding(save), before)
    leftovers = [n for n in os.listdir(tmp_path) if n != "ckpt_out"]
    assert leftovers  # the killed run's partial output, beside the checkpoint
    convert_from_hf(soda["hf"], save, overwrite=True, **QUIET)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_out"]
    assert torch.equal(checkpoint_embedding(save), before)


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    """Killed after the old directory was set aside and before the new one was renamed in: the
    next run puts the old one back."""
    target = tmp_path / "out"
    (tmp_path / ".out.replaced").mkdir()
    (tmp_path / ".out.replaced" / "weights").write_text("old")
    (tmp_path / ".out.staging").mkdir()
    recover_dir(str(target))
    assert (target / "weights").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_failed_export_leaves_no_partial_directory(soda, tmp_path, monkeypatch):
    out = tmp_path / "hf_out"
    shutil.copytree(soda["hf"], out)
    import megatron_soda.convert.to_hf as to_hf

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(to_hf, "write_json_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_to_hf(str(soda["root"] / "ckpt"), str(out), overwrite=True, **QUIET)
    assert sorted(os.listdir(tmp_path)) == ["hf_out"]
    assert torch.equal(hf_embedding(str(out)), hf_embedding(soda["hf"]))


def test_overwriting_the_input_itself_is_refused(soda, tmp_path):
    hf = copy_hf(soda, tmp_path)
    with pytest.raises(ConversionError, match="own input"):
        convert_from_hf(hf, hf, overwrite=True, **QUIET)
    assert torch.equal(hf_embedding(hf), hf_embedding(soda["hf"]))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(soda["root"] / "ckpt", ckpt)
    with pytest.raises(ConversionError, match="own input"):
        convert_to_hf(str(ckpt), str(ckpt), overwrite=True, **QUIET)
    with pytest.raises(ConversionError, match="own input"):  # an ancestor of the input
        convert_to_hf(str(ckpt / "iter_0000002"), str(ckpt), overwrite=True, **QUIET)
    assert locate_checkpoint(str(ckpt)).endswith("iter_0000002")


def test_a_second_conversion_into_the_same_output_is_refused(soda, tmp_path):
    from megatron_soda.output_lock import OutputLock

    save = str(tmp_path / "ckpt_out")
    with OutputLock(save + ".lock", "conversion"):  # a conversion writing there now
        with pytest.raises(ConversionError, match=r"ckpt_out\.lock: another conversion writes here .*pid"):
            convert_from_hf(soda["hf"], save, **QUIET)
        with pytest.raises(ConversionError, match="another conversion writes here"):
            convert_to_hf(str(soda["root"] / "ckpt"), save, **QUIET)
    assert not os.path.exists(save)
    convert_from_hf(soda["hf"], save, **QUIET)  # released: the next one writes
    assert sorted(os.listdir(tmp_path)) == ["ckpt_out"]  # and leaves no lock behind
