"""Progress of a preprocessing stage: a bar with a total and an ETA on a terminal, the same
figures as log lines otherwise (every ``LOG_EVERY_S`` seconds, and at the end).

The codec stage counts input bytes: a work unit's file size is known before it is read, and
how far into the file the reader is can be seen from outside the reader (Linux:
``/proc/self/fdinfo``; elsewhere the unit counts when it completes), so every input layout gets
a byte-accurate bar without a counting pass.  The token stage counts cached chunks, which the
codes cache lists.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

LOG_EVERY_S = 30.0


def read_position(path: str) -> int:
    """How far this process has read into ``path``: the largest offset among its open file
    descriptors on that file (0 if none, or where /proc is not available)."""
    target = os.path.realpath(path)
    best = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != target:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("pos:"):
                        best = max(best, int(line.split()[1]))
                        break
        except (OSError, ValueError):
            continue
    return best


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StageProgress:
    """``done`` out of ``total`` (in ``unit``: "B" for bytes, or a noun), plus counters shown
    beside it (``extra()``: a short string such as "1234 utt, 0.52 h audio")."""

    def __init__(
        self,
        stage: str,
        total: float,
        unit: str,
        extra: Callable[[], str] = lambda: "",
        logger: logging.Logger | None = None,
        tty: bool | None = None,
    ) -> None:
        self.stage, self.total, self.unit, self.extra = stage, max(total, 0), unit, extra
        self.logger = logger or logging.getLogger(__name__)
        self.done = 0.0
        self.start = self.last_log = time.time()
        self.bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            byte_units = unit == "B"
            self.bar = tqdm(
                desc=stage,
                total=self.total,
                unit=unit,
                unit_scale=byte_units,
                unit_divisor=1024 if byte_units else 1000,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def set(self, done: float) -> None:
        """Progress is now ``done`` (never moves back)."""
        done = min(max(done, self.done), self.total) if self.total else max(done, self.done)
        if self.bar is not None:
            self.bar.update(done - self.done)
            self.bar.set_postfix_str(self.extra(), refresh=False)
        self.done = done
        if self.bar is None and time.time() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.time()
            self.logger.info("%s", self.line())

    def advance(self, amount: float) -> None:
        self.set(self.done + amount)

    def line(self) -> str:
        elapsed = time.time() - self.start
        shown = self._amount(self.done)
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
            shown = (
                f"{shown}/{self._amount(self.total)} ({pct:.1f}%), ETA "
                f"{_duration(eta) if eta == eta else '?'}"
            )
        extra = self.extra()
        return f"{self.stage}: {shown}, {_duration(elapsed)} elapsed" + (
            f", {extra}" if extra else ""
        )

    def _amount(self, x: float) -> str:
        if self.unit == "B":
            return f"{x / 2**20:.1f} MiB"
        return f"{int(x)} {self.unit}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.logger.info("%s (done)", self.line())
