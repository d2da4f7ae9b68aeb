"""One writer per output: a lock file beside what a job writes (a training ``--save``
directory, a preprocessing output prefix).

Why not ``flock``: the outputs live on cluster file systems (Lustre, NFS) where advisory locks are
missing or local to a node, and a requeued Slurm job comes back on another node.  The lock is a
file created with ``O_EXCL`` holding who took it (host, pid, the pid's start time, Slurm job id, a
random token); the holder refreshes its modification time (a heartbeat) while it runs.  A lock is
stale, and taken over, when

* its holder ran on this host and that process is gone (or the pid now belongs to another
  process: start times differ);
* its holder had this Slurm job id (a requeued job takes over its own lock, wherever it lands);
* its heartbeat is older than ``stale_after_s`` (a holder on another host that died by SIGKILL).

Otherwise :class:`OutputLocked` names the holder.  Taking over a stale lock renames it aside first,
so that of two processes finding the same stale lock only one wins the ``O_EXCL`` create.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any


class OutputLocked(RuntimeError):
    """Another live job writes this output."""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5), counted after "(comm)"


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    mine = _process_start(pid)
    return start is None or mine is None or mine == start


class OutputLock:
    """``with OutputLock(path, "training run"):`` holds ``path`` (the lock file itself) for the
    block.  ``what`` names the kind of job in messages."""

    def __init__(self, path: str, what: str, *, stale_after_s: float = 300.0, heartbeat_s: float = 30.0):
        self.path, self.what = path, what
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced, for the log

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "token": self.token,
                "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _read(self) -> tuple[dict[str, Any], float] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return (holder if isinstance(holder, dict) else {}), age

    def _stale_reason(self, holder: dict[str, Any], age: float) -> str | None:
        if not holder:
            return "unreadable lock file" if age > self.stale_after_s else None
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job_id") == job:
            return f"left by an earlier run of this Slurm job {job}"
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _alive(pid, holder.get("pid_start")):
                return f"its process {pid} on this host is gone"
            return None
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = self._read()
                if found is None:
                    continue  # released meanwhile
                holder, age = found
                reason = self._stale_reason(holder, age)
                if reason is None:
                    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
                    raise OutputLocked(
                        f"{self.path}: another {self.what} writes here (host {holder.get('host')}, pid "
                        f"{holder.get('pid')}{job}, since "
                        f"{holder.get('taken_at')}, heartbeat {age:.0f} s ago); use another output, or delete "
                        "this file if that job is dead") from None
                aside = f"{self.path}.stale.{self.token}"
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue  # another process took it over first
                os.unlink(aside)
                self.took_over = {**holder, "reason": reason}
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
            self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise OutputLocked(f"{self.path}: could not take the lock (contended)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def held(self) -> bool:
        found = self._read()
        return found is not None and found[0].get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held():
            os.unlink(self.path)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
