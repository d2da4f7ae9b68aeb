"""Fault injection for testing resume paths (``--inject-crash-at-iteration``,
``--inject-crash-in-save``): die like a killed job, with no cleanup and no final checkpoint."""

from __future__ import annotations

import os
import sys

import psutil

CRASH_EXIT_CODE = 17


def crash_now(reason: str) -> None:
    """Exit immediately.  Helper processes (dist_checkpointing's multiprocessing manager, data
    workers) are killed first, as a scheduler killing the job's process tree would."""
    print(f"injected crash: {reason}", file=sys.stderr, flush=True)
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    os._exit(CRASH_EXIT_CODE)
