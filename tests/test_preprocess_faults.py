"""Preprocessing under faults (issue 13): damaged codes-cache chunks are found and encoded again,
stats are on disk before the shards they describe, one run per output prefix, and codec workers
die with a main process killed by SIGKILL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.data.cli import EXIT_LOCKED, EXIT_OK
from megatron_soda.data.cli import preprocess_main as cli_main
from megatron_soda.format import ShardError, validate_shard
from megatron_soda.output_lock import OutputLock

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "preprocess", "preprocess_data.py")


def speech_manifest(root, n: int, seconds: float = 1.0) -> str:
    """``n`` one-utterance recordings of distinct tones (a real decode + encode each)."""
    rows = []
    for i in range(n):
        t = np.arange(int(seconds * SR)) / SR
        sf.write(str(root / f"a{i}.wav"), (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32), SR)
        rows.append(json.dumps({"id": f"u{i}", "audio": f"a{i}.wav", "text": f"tone number {i}"}))
    path = root / "m.jsonl"
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run(inputs, fmt: str, prefix, llama3_path: str, *extra: str) -> int:
    argv = ["--input", *map(str, inputs), "--input-format", fmt, "--output-prefix", str(prefix),
            "--tokenizer", llama3_path, "--codec", "random:tiny", "--workers", "1",
            "--chunk-utterances", "1", "--log-level", "WARNING", *extra]
    return cli_main(argv)


def outputs(prefix) -> dict[str, bytes]:
    return {ext: open(f"{prefix}{ext}", "rb").read() for ext in (".bin", ".idx", ".stats.json")}


def chunk_files(prefix) -> list[str]:
    codes = f"{prefix}.codes"
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(codes) for f in fs
                  if f.startswith("chunk-") and f.endswith(".npz"))


# ------------------------------------------------------------------- codes cache
@pytest.mark.parametrize("damage", ["truncated", "flipped", "truncated-unfinished", "truncated-old-done"])
def test_a_damaged_chunk_is_encoded_again(tmp_path, llama3_path, caplog, damage):
    """A chunk damaged after it was written (a power loss, a truncated copy) is found on the next
    run, logged by name with the reason, and encoded again: the outputs equal an undamaged run's.
    ``unfinished``: the unit's done.json is missing (a run killed before the unit completed);
    ``old-done``: done.json holds only the chunk count (a cache written before chunk records)."""
    manifest = speech_manifest(tmp_path, 4)
    prefix = tmp_path / "out"
    assert run([manifest], "jsonl", prefix, llama3_path) == EXIT_OK
    ref = outputs(prefix)
    chunks = chunk_files(prefix)
    assert len(chunks) == 4
    victim = chunks[2]
    original = open(victim, "rb").read()
    done = os.path.join(os.path.dirname(victim), "done.json")
    if damage.startswith("truncated"):
        os.truncate(victim, len(original) // 2)
    else:  # same size, one byte of the codes' data changed
        data = bytearray(original)
        data[len(data) // 3] ^= 0xFF
        open(victim, "wb").write(bytes(data))
    if damage.endswith("unfinished"):
        os.remove(done)
    elif damage.endswith("old-done"):
        json.dump({"num_chunks": 4}, open(done, "w"))
    others = {c: os.stat(c).st_mtime_ns for c in chunks if c != victim}
    for p in (f"{prefix}.bin", f"{prefix}.idx", f"{prefix}.stats.json"):
        os.remove(p)
    with caplog.at_level(logging.WARNING, logger="megatron_soda.data.codes_cache"):
        assert run([manifest], "jsonl", prefix, llama3_path) == EXIT_OK
    assert open(victim, "rb").read() == original  # encoded again, deterministically
    assert {c: os.stat(c).st_mtime_ns for c in others} == others  # only it
    assert outputs(prefix) == ref
    warned = [r.getMessage() for r in caplog.records if victim in r.getMessage()]
    assert len(warned) == 1 and "encoding it again" in warned[0], warned
    reason = {"truncated": "bytes,", "flipped": "sha256 differs"}.get(damage, "not a readable codes cache chunk")
    assert reason in warned[0]
    records = json.load(open(done))["chunks"]  # the next run checks against these
    assert records[2] == {"bytes": len(original), "sha256": hashlib.sha256(original).hexdigest()}


def test_tokenize_stage_names_a_damaged_chunk(tmp_path, llama3_path, capsys):
    manifest = speech_manifest(tmp_path, 2)
    prefix = tmp_path / "out"
    assert run([manifest], "jsonl", prefix, llama3_path, "--stage", "encode") == EXIT_OK
    victim = chunk_files(prefix)[1]
    os.truncate(victim, 100)
    assert run([manifest], "jsonl", prefix, llama3_path, "--stage", "tokenize") == 2
    err = capsys.readouterr().err
    assert victim in err and "--stage encode" in err
    assert not os.path.exists(f"{prefix}.bin")
    assert run([manifest], "jsonl", prefix, llama3_path) == EXIT_OK  # encode repairs it
    validate_shard(str(prefix), check_stats=True)


# ------------------------------------------------------------------- stats and shards
def _text(path, n: int) -> str:
    path.write_text("".join(json.dumps({"text": f"document {i} " * (i + 1)}) + "\n" for i in range(n)))
    return str(path)


def test_stats_identify_the_shards_they_describe(tmp_path, llama3_path):
    prefix = tmp_path / "out"
    assert run([_text(tmp_path / "a.jsonl", 5)], "text", prefix, llama3_path) == EXIT_OK
    files = json.load(open(f"{prefix}.stats.json"))["files"]
    idx = open(f"{prefix}.idx", "rb").read()
    assert files == {".bin": {"bytes": os.path.getsize(f"{prefix}.bin")},
                     ".idx": {"bytes": len(idx), "sha256": hashlib.sha256(idx).hexdigest()}}
    validate_shard(str(prefix), check_stats=True)
    # with --valid-fraction each side's stats describe that side's pair
    assert run([_text(tmp_path / "a.jsonl", 40)], "text", prefix, llama3_path, "--valid-fraction", "0.3") == EXIT_OK
    for side in ("train", "valid"):
        p = f"{prefix}_{side}"
        files = json.load(open(f"{p}.stats.json"))["files"]
        assert files[".idx"]["sha256"] == hashlib.sha256(open(f"{p}.idx", "rb").read()).hexdigest()
        assert files[".bin"]["bytes"] == os.path.getsize(f"{p}.bin")


class Killed(BaseException):
    """A kill at a chosen point of the final renames."""


@pytest.mark.parametrize("valid_fraction", ["0", "0.3"])
def test_no_crash_leaves_new_shards_beside_old_stats(tmp_path, llama3_path, monkeypatch, valid_fraction):
    """Kill a rerun (other input, same prefix) at each rename of its outputs in turn: whenever
    both shard files are the new ones, so are the stats that describe them; and whatever is left,
    the trainer's check never accepts a pair with stats that do not describe it."""
    new_input = _text(tmp_path / "new.jsonl", 30)
    extra = ("--valid-fraction", valid_fraction)
    assert run([new_input], "text", tmp_path / "ref", llama3_path, *extra) == EXIT_OK
    sides = [""] if valid_fraction == "0" else ["_train", "_valid"]
    ref = {s: outputs(f"{tmp_path}/ref{s}") for s in sides}
    real_replace = os.replace
    for kill_at in range(100):
        prefix = f"{tmp_path}/k{kill_at}"
        assert run([_text(tmp_path / "old.jsonl", 12)], "text", prefix, llama3_path, *extra) == EXIT_OK
        seen = []

        def replace(src, dst, _prefix=prefix, _seen=seen, _k=kill_at):
            if str(dst).startswith(_prefix):
                if len(_seen) == _k:
                    raise Killed(dst)
                _seen.append(str(dst))
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            finished = run([new_input], "text", prefix, llama3_path, *extra) == EXIT_OK
        except Killed:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        for s in sides:
            now = outputs(prefix + s)
            new_shards = all(now[e] == ref[s][e] for e in (".bin", ".idx"))
            stats = json.loads(now[".stats.json"])
            if new_shards:
                assert stats == json.loads(ref[s][".stats.json"]), (kill_at, seen)
            try:
                validate_shard(prefix + s, check_stats=True)
            except ShardError:
                continue  # refused: fine
            old_or_new = new_shards or all(now[e] != ref[s][e] for e in (".bin", ".idx"))
            assert old_or_new and (stats == json.loads(ref[s][".stats.json"])) == new_shards, (kill_at, seen)
        if finished:
            assert kill_at > 2
            break
    else:
        raise AssertionError("the run never finished")


# ------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused(tmp_path, llama3_path, capsys):
    prefix = tmp_path / "out"
    text = _text(tmp_path / "a.jsonl", 3)
    with OutputLock(f"{prefix}.lock", "preprocessing run"):  # a live run (this process) holds it
        assert run([text], "text", prefix, llama3_path) == EXIT_LOCKED == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{prefix}.lock" in err and f"pid {os.getpid()}" in err, err
        assert not any(os.path.exists(f"{prefix}{e}") for e in (".bin", ".idx", ".stats.json"))
    assert run([text], "text", prefix, llama3_path) == EXIT_OK  # released: the next run writes
    assert not os.path.exists(f"{prefix}.lock")


def test_the_lock_of_a_dead_run_is_taken_over(tmp_path, llama3_path, caplog):
    prefix = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = OutputLock(f"{prefix}.lock", "preprocessing run")
    stale = {**lock._record(), "pid": dead.pid, "pid_start": None}
    with open(f"{prefix}.lock", "w") as f:
        json.dump(stale, f)
    with caplog.at_level(logging.WARNING, logger="megatron_soda.data.preprocess"):
        assert run([_text(tmp_path / "a.jsonl", 3)], "text", prefix, llama3_path) == EXIT_OK
    assert f"took over the lock of a run that is gone (host {stale['host']}, pid {dead.pid}" in caplog.text
    assert not os.path.exists(f"{prefix}.lock")


# ------------------------------------------------------------------- process lifecycle
def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_run_whose_lock_is_taken_over(tmp_path, llama3_path, capsys, caplog):
    """kill -9 of the main process mid-run: its codec workers and their fork server are gone
    within seconds (not orphans holding their memory); a second run on the prefix meanwhile is refused with exit 4;
    the run after the kill takes the dead run's lock over (resuming is
    test_preprocess.py::test_killed_run_resumes_to_identical_bytes)."""
    # 20 minutes of audio: ~10 s of work for the two random:tiny workers, killed long before
    # (random:tiny: each worker builds its codec in a fraction of random:full's ~4 s)
    manifest = speech_manifest(tmp_path, 40, seconds=30.0)
    prefix = tmp_path / "out"
    main = subprocess.Popen(
        [sys.executable, TOOL, "--input", manifest, "--input-format", "jsonl", "--output-prefix",
         str(prefix), "--tokenizer", llama3_path, "--codec", "random:tiny", "--chunk-utterances", "1",
         "--log-level", "WARNING", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and main.poll() is None:  # workers started and encoding
            # the workers' fork server (a child of the run) and the workers it forked
            servers = [c for c in _children(main.pid) if "forkserver" in _cmdline(c)]
            workers = [w for s in servers for w in _children(s)]
            if len(workers) == 2 and chunk_files(prefix):
                break
            time.sleep(0.05)
        assert main.poll() is None and len(workers) == 2, "the run did not reach its workers"
        workers += servers
        assert run([manifest], "jsonl", prefix, llama3_path) == EXIT_LOCKED
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another preprocessing run writes here (host {os.uname().nodename}, pid {main.pid}" in err
        assert main.poll() is None, "the run ended before the kill"
        descendants = workers + [g for w in workers for g in _children(w)]
        main.send_signal(signal.SIGKILL)
        main.wait()
        gone_by = time.time() + 5
        while time.time() < gone_by and any(map(_alive, descendants)):
            time.sleep(0.05)
        assert not [p for p in descendants if _alive(p)], "orphaned codec workers"
    finally:
        if main.poll() is None:
            main.kill()
        for p in workers:  # never leave them behind, even when the test fails
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # the codes cache is incomplete: --stage tokenize takes the lock over, then stops (exit 2)
    with caplog.at_level(logging.WARNING, logger="megatron_soda.data.preprocess"):
        assert run([manifest], "jsonl", prefix, llama3_path, "--stage", "tokenize") == 2
    assert f"took over the lock of a run that is gone (host {os.uname().nodename}, pid {main.pid}" in caplog.text
    assert "no usable codes cache" in capsys.readouterr().err
    assert not os.path.exists(f"{prefix}.lock")
