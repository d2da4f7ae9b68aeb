"""Nothing a run reads from a checkpoint or cache executes code (megatron_soda.safe_loading).

Each hostile file below carries a pickle whose ``__reduce__`` calls ``os.system`` to create a
marker file: the marker existing afterwards would mean code ran.  The unit tests feed such files
to the three readers megatron-core and torch use (``torch.load``, ``numpy.load``, DCP's
``.metadata`` reader); the torchrun test plants them in a real checkpoint and a real megatron
dataset cache and resumes the trainer on them.
"""

from __future__ import annotations

import glob
import io
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_hostile import Payload
from helpers_train import PYTHON_BIN, REPO, _free_port, base_args, train_workspace
from torch.distributed.checkpoint import filesystem as dcp_filesystem

from megatron_soda.safe_loading import UnsafeContentError, load_dcp_metadata, restricted_loading


def hostile_pickle(marker: str) -> bytes:
    return pickle.dumps({"state": Payload(marker)})


def hostile_torch_file(marker: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"state": Payload(marker)}, buf)
    return buf.getvalue()


def test_stock_readers_would_run_the_payload(tmp_path):
    """The premise: without the guard, each of these readers executes the payload."""
    marker = tmp_path / "ran"
    torch.load(io.BytesIO(hostile_torch_file(str(marker))), weights_only=False)
    assert marker.exists()
    marker.unlink()
    np.save(tmp_path / "a.npy", np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    np.load(tmp_path / "a.npy", allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    (tmp_path / ".metadata").write_bytes(hostile_pickle(str(marker)))
    with pytest.raises(AttributeError):  # the payload returned a dict, not Metadata: after it ran
        dcp_filesystem.FileSystemReader(str(tmp_path)).read_metadata()
    assert marker.exists()


def test_torch_load_is_weights_only_inside_the_guard_whatever_the_caller_asks(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = tmp_path / "common.pt"
    path.write_bytes(hostile_torch_file(str(marker)))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not reopen the hole
    with restricted_loading(), pytest.raises(UnsafeContentError, match="common.pt"):
        torch.load(str(path), weights_only=False)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored on exit
    # tensors and plain containers still load
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3), "step": 4, "name": ("MT19937", 1.5)}, buf)
    buf.seek(0)
    with restricted_loading():
        got = torch.load(buf, weights_only=False)
    assert torch.equal(got["w"], torch.arange(3)) and got["step"] == 4


def test_numpy_load_never_unpickles_inside_the_guard(tmp_path):
    marker = tmp_path / "ran"
    path = str(tmp_path / "shuffle_index.npy")
    np.save(path, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    with restricted_loading(), pytest.raises(UnsafeContentError, match="shuffle_index.npy"):
        np.load(path, allow_pickle=True, mmap_mode="r")
    assert not marker.exists()
    np.save(path, np.arange(5))
    with restricted_loading():
        assert np.load(path, allow_pickle=True, mmap_mode="r").tolist() == [0, 1, 2, 3, 4]


def test_dcp_metadata_reader_refuses_anything_but_metadata(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / ".metadata").write_bytes(hostile_pickle(str(marker)))
    reader = dcp_filesystem.FileSystemReader(str(tmp_path))
    with restricted_loading(), pytest.raises(UnsafeContentError, match="os|posix"):
        reader.read_metadata()
    assert not marker.exists()
    with open(tmp_path / ".metadata", "rb") as f, pytest.raises(pickle.UnpicklingError):
        load_dcp_metadata(f)


def _short_unicode(text: bytes) -> bytes:
    return b"\x8c" + bytes([len(text)]) + text


@pytest.mark.parametrize("module,name", [
    ("torch.distributed.checkpoint.filesystem", "os.system"),  # a dotted name through an allowed module
    ("torch.distributed.checkpoint.metadata", "dataclasses.sys.modules"),
    ("torch.distributed.checkpoint.filesystem", "os"),  # a module, not a class defined there
])
def test_dcp_metadata_unpickler_refuses_names_reached_through_allowed_modules(tmp_path, module, name):
    marker = tmp_path / "ran"
    payload = (b"\x80\x04" + _short_unicode(module.encode()) + _short_unicode(name.encode()) + b"\x93"
               + _short_unicode(f"touch {marker}".encode()) + b"\x85R.")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dcp_metadata(io.BytesIO(payload))
    assert not marker.exists()


def test_guard_restores_the_stock_functions_and_nests():
    stock = (torch.load, np.load, dcp_filesystem.pickle)
    with restricted_loading():
        with restricted_loading():
            assert torch.load is not stock[0]
        assert torch.load is not stock[0]  # still inside the outer block
    assert (torch.load, np.load, dcp_filesystem.pickle) == stock


def error_line(proc) -> str:
    """The trainer's one-line error (torchrun's own report follows it)."""
    return next((line for line in proc.stderr.splitlines() if line.startswith("pretrain_soda.py: error:")), "")


class _Launch:
    """pretrain_soda.py started in the background: under torchrun for several ranks, as ``python
    pretrain_soda.py`` (the trainer's own one-process path, no torchrun agent to start) for one.
    Output goes to files, so that two launches can run at once without filling a pipe."""

    def __init__(self, out_dir, nproc: int, args: list[str]) -> None:
        launcher = ([os.path.join(PYTHON_BIN, "torchrun"), "--nproc_per_node", str(nproc), "--master_port",
                     str(_free_port())] if nproc > 1 else [sys.executable])
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.out, self.err = open(out_dir / "stdout", "w+"), open(out_dir / "stderr", "w+")
        self.proc = subprocess.Popen([*launcher, os.path.join(REPO, "pretrain_soda.py"), *args], cwd=REPO, env=env,
                                     stdout=self.out, stderr=self.err, text=True)

    def wait(self, check: bool = True) -> subprocess.CompletedProcess:
        try:
            code = self.proc.wait(timeout=300)
        finally:
            self.proc.kill()
        texts = []
        for f in (self.out, self.err):
            f.seek(0)
            texts.append(f.read())
            f.close()
        proc = subprocess.CompletedProcess(self.proc.args, code, *texts)
        if check and code != 0:
            raise AssertionError(f"pretrain_soda.py failed ({code}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
        return proc


@pytest.mark.torchrun
def test_trainer_refuses_hostile_checkpoint_metadata_and_dataset_cache(tmp_path, small_bpe_path):
    work = train_workspace(tmp_path, small_bpe_path)
    ckpt, cache = str(tmp_path / "ck"), str(tmp_path / "cache")
    marker = tmp_path / "ran"

    def start(name: str, save: str, *extra: str, nproc: int = 1) -> _Launch:
        # one micro-batch per rank and iteration: what is checked here is loading, not training
        args = base_args(work["tok"], work["speech"], work["text"], str(tmp_path / f"{name}.jsonl"),
                         "--global-batch-size", str(2 * nproc), "--save", save, "--data-cache-path", cache, *extra)
        (tmp_path / f"out_{name}").mkdir()
        return _Launch(tmp_path / f"out_{name}", nproc, args)

    start("first", ckpt, "--train-iters", "1", "--save-interval", "1").wait()
    iteration = os.path.join(ckpt, "iter_0000001")
    # The two refusals below run at once, each on its own copy of the run: a hostile .metadata in
    # one (refused while resuming, before the data is opened), a hostile dataset index cache
    # behind the clean checkpoint in the other.
    hostile_ckpt = str(tmp_path / "ck_hostile")
    shutil.copytree(ckpt, hostile_ckpt)
    with open(os.path.join(hostile_ckpt, "iter_0000001", ".metadata"), "wb") as f:
        f.write(hostile_pickle(str(marker)))
    cached = sorted(glob.glob(os.path.join(cache, "**", "*.npy"), recursive=True))
    assert cached, "megatron wrote no dataset index cache"
    for path in cached:  # the index names hash the run's sample counts: same --train-iters as above
        np.save(path, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    metadata_run = start("metadata", hostile_ckpt, "--train-iters", "2", nproc=2)  # every rank must refuse it
    cache_run = start("cache", ckpt, "--train-iters", "1")

    proc = metadata_run.wait(check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert not marker.exists()
    assert ".metadata: not checkpoint metadata, refused unread (refusing to load posix.system" in error_line(proc), \
        proc.stderr[-3000:]

    proc = cache_run.wait(check=False)
    # a clean checkpoint loads through the guard (the trainer resumes before it opens the data;
    # training on after such a resume: test_train_async_save.py, test_train_preemption.py)
    assert f"loaded {iteration} (iteration 1" in proc.stdout, proc.stdout[-2000:]
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    line = error_line(proc)
    assert any(os.path.basename(p) in line for p in cached) and "never unpickled" in line, proc.stderr[-3000:]
    assert not marker.exists()
