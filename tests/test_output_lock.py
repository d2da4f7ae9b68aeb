"""The one-writer lock (megatron_soda/output_lock.py): when a lock is honoured and when it is
stale.  The trainer's and preprocessing's use of it are tested in test_train_faults.py and
test_preprocess_faults.py."""

from __future__ import annotations

import json
import os
import time

import pytest

from megatron_soda.output_lock import OutputLock, OutputLocked


def plant(path, **holder) -> None:
    path.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "x", **holder}))


def test_a_live_holder_on_another_host_is_honoured(tmp_path):
    lock = tmp_path / "p.lock"
    plant(lock, slurm_job_id="77")
    with pytest.raises(OutputLocked, match="host another-node, pid 1, Slurm job 77"):
        OutputLock(str(lock), "run").acquire()
    assert json.loads(lock.read_text())["host"] == "another-node"  # untouched


def test_a_holder_without_heartbeat_is_stale(tmp_path):
    lock = tmp_path / "p.lock"
    plant(lock)
    old = time.time() - 600
    os.utime(lock, (old, old))
    taker = OutputLock(str(lock), "run", stale_after_s=300)
    with taker:
        assert "no heartbeat" in taker.took_over["reason"] and taker.held()
    assert not lock.exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock_wherever_it_lands(tmp_path, monkeypatch):
    lock = tmp_path / "p.lock"
    plant(lock, slurm_job_id="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    taker = OutputLock(str(lock), "run")
    with taker:
        assert "Slurm job 4242" in taker.took_over["reason"]
        assert json.loads(lock.read_text())["slurm_job_id"] == "4242"


def test_the_heartbeat_keeps_a_long_run_fresh(tmp_path):
    lock = tmp_path / "p.lock"
    with OutputLock(str(lock), "run", heartbeat_s=0.05):
        old = time.time() - 600
        os.utime(lock, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.stat().st_mtime < 5


def test_release_leaves_a_lock_taken_over_by_someone_else(tmp_path):
    lock = tmp_path / "p.lock"
    first = OutputLock(str(lock), "run")
    first.acquire()
    plant(lock)  # another process replaced it (e.g. took it over as stale)
    first.release()
    assert lock.exists()
