"""Start-up of the codec stage (issue 19): the preprocessing CLI imports no torch, and codec
workers are forked by a server that imported torch and transformers' Mimi once, with the
environment of the process that made their pool.  That the workers die with a killed run is
tests/test_preprocess_faults.py::test_workers_die_with_a_killed_run_whose_lock_is_taken_over."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.data.cli import EXIT_CRASH, preprocess_main
from megatron_soda.data.encode_stage import CodecWorkers

HEAVY = ("torch", "transformers", "megatron.core")
MIMI = "transformers.models.mimi.modeling_mimi"


def test_preprocessing_cli_and_audio_decoding_import_no_torch():
    """What the main process and a decode worker import: no torch, transformers or megatron
    (torch alone costs about 1 s per process); the package's codec names still resolve."""
    script = (
        "import sys\n"
        "import megatron_soda.data.cli, megatron_soda.audio.io, megatron_soda.audio.codec_spec\n"
        "from megatron_soda.audio import AudioError, Segment, decode_segments, parse_codec_spec\n"
        "from megatron_soda.compat.parent_death import init_dying_with_parent\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "from megatron_soda.audio import MimiCodec, FRAME_RATE\n"
        "print(MimiCodec.__module__, FRAME_RATE, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    light, codec = out.stdout.splitlines()
    assert light == "[]", f"imported at start-up: {light}"
    assert codec == "megatron_soda.audio.codec 12.5 True"


def probe(name: str) -> dict:
    """Run in a fresh worker, before any job: what it was forked with."""
    import gc

    return {"pid": os.getpid(), "ppid": os.getppid(), "mimi": MIMI in sys.modules,
            "env": os.environ.get(name), "gc": gc.isenabled()}


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="no fork server on this platform (workers are spawned)")
def test_workers_are_forked_with_the_codec_imported_and_the_current_environment(monkeypatch):
    name = "SODA_TEST_WORKER_ENV"
    first = CodecWorkers(2, None, "cpu", "pieces")  # starts the fork server (if not running)
    try:
        before = first.pool.submit(probe, name).result(timeout=120)
    finally:
        first.close()
    monkeypatch.setenv(name, "set after the server started")
    workers = CodecWorkers(2, None, "cpu", "pieces")
    try:
        state = workers.pool.submit(probe, name).result(timeout=120)
    finally:
        workers.close()
    for s in (before, state):
        assert s["pid"] != os.getpid() and s["ppid"] != os.getpid()  # forked by the server
        assert s["mimi"], "the worker had to import transformers' Mimi itself"
        assert s["gc"], "the worker collects no garbage (the server's import-time gc.disable)"
    assert before["ppid"] == state["ppid"]  # one server for both pools
    assert before["env"] is None
    assert state["env"] == "set after the server started"


def die() -> None:
    """A job whose worker is killed (as the out-of-memory killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_fails_the_run_naming_its_exit(tmp_path, llama3_path, monkeypatch, caplog, capsys):
    """The pool breaks; the run ends as a crash (exit 1, nothing published) and the log says how
    each worker ended (-9: SIGKILL), which "terminated abruptly" alone does not."""
    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "u0", "audio": str(wav), "text": "x"}) + "\n")
    monkeypatch.setattr(CodecWorkers, "submit", lambda self, cfg, jobs: [self.pool.submit(die) for _ in jobs])
    prefix = tmp_path / "out"
    argv = ["--input", str(tmp_path / "m.jsonl"), "--input-format", "jsonl", "--output-prefix", str(prefix),
            "--tokenizer", llama3_path, "--codec", "random:tiny", "--workers", "2"]
    with caplog.at_level(logging.ERROR, logger="megatron_soda.data.preprocess"):
        assert preprocess_main(argv) == EXIT_CRASH
    assert "BrokenProcessPool" in capsys.readouterr().err
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("codec workers:")]
    assert re.fullmatch(r"codec workers: pid \d+: exit code -9", line), line
    assert not os.path.exists(f"{prefix}.bin")
