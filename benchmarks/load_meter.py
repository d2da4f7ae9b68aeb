"""How much CPU other processes take while a benchmark runs (``/proc`` and ``getrusage``), so
that runs on a shared machine can be told apart from runs that had it to themselves."""

from __future__ import annotations

import os
import resource
import time

QUIET_CORES = 0.15  # a run counts as quiet when other processes took less than this


class OthersLoad:
    """CPU time that other processes (not this one or its children) took during a span, in
    cores: 0 = the machine was ours, 1 = another job held a whole core.  After the span also
    ``wall_s`` (its seconds) and ``own_cpu_s`` (CPU seconds of this process and the children
    it waited for)."""

    def __enter__(self) -> OthersLoad:
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_s(), own_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = max(time.perf_counter() - self.t0, 1e-9)
        self.own_cpu_s = own_s() - self.own0
        self.cores = max(0.0, (busy_s() - self.busy0 - self.own_cpu_s) / self.wall_s)


def busy_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_s() -> float:
    """CPU seconds of this process and its finished children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def other_busy_processes(min_cpu_s: float = 5.0) -> list[str]:
    """Other processes (not ours, not the init process or kernel threads) that have used
    more than ``min_cpu_s`` of CPU so far: ``pid:command``."""
    tick = os.sysconf("SC_CLK_TCK")
    info: dict[int, tuple[int, float, str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        except OSError:
            continue
        info[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmd)

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = info.get(pid, (0, 0.0, ""))[0]
        return False

    return [
        f"{pid}:{cmd}"
        for pid, (_, cpu, cmd) in sorted(info.items())
        if pid > 1 and cmd and cpu > min_cpu_s and not ours(pid)
    ]
