"""Worker processes that die with their parent (Linux's parent-death signal).

A process-pool worker outlives a parent killed with SIGKILL (or by the OOM killer): nothing tells
it, and a ``concurrent.futures`` worker blocks forever on its call queue (it holds that queue's
write end itself, so it never sees end-of-file), keeping its memory (a codec worker: 0.4-0.7 GB).
``prctl(PR_SET_PDEATHSIG)`` asks the kernel to signal the child when its parent goes, whatever
the cause.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies.  Precisely: when the
    parent *thread* that started it ends, so start such children from a thread that lives as long
    as its process (the main thread; a ``ProcessPoolExecutor`` without ``max_tasks_per_child``
    starts its workers in the thread that submits).  ``parent``: the pid that started this
    process; when that one is gone already (it died before the request took effect, and this
    process was re-parented), ``sig`` is raised at once.  Returns False where unsupported (not
    Linux), and then does nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def die_with_multiprocessing_parent(*_: object) -> None:
    """:func:`die_with_parent` for this ``multiprocessing`` child's parent: an after-fork hook
    (``multiprocessing.util.register_after_fork`` passes its key) or a process initializer.
    Light on purpose: a spawned child that runs it imports this module, not torch."""
    parent = multiprocessing.parent_process()
    die_with_parent(signal.SIGKILL, parent.pid if parent is not None else None)


def init_dying_with_parent(init: Callable[..., object], *args: object) -> None:
    """A ``multiprocessing``/``ProcessPoolExecutor`` initializer: tie this worker to the process
    that started it (SIGKILL when that one dies), then run ``init(*args)``.  Pass it as
    ``initializer=init_dying_with_parent, initargs=(init, *args)``.

    Two ties: the kernel's parent-death signal, and a thread waiting on multiprocessing's parent
    sentinel (a pipe the parent holds open while it lives).  The second is what serves under the
    ``forkserver`` start method, where the kernel's parent is the fork server, which lives on as
    long as any worker does (each holds the server's liveness pipe): without it, a killed run
    would leave server and workers waiting on each other."""
    die_with_parent(signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None:
        watch = threading.Thread(target=_kill_self_when_gone, args=(parent.sentinel, parent.pid),
                                 name="die-with-parent", daemon=True)
        try:
            watch.start()
        except RuntimeError as e:  # no thread to be had (a thread limit): the kernel's tie only
            print(f"pid {os.getpid()}: cannot watch parent {parent.pid} ({e})", file=sys.stderr)
    init(*args)


def _kill_self_when_gone(sentinel: int, parent: int) -> None:
    multiprocessing.connection.wait([sentinel])  # ready: the parent's end closed (it is gone)
    try:
        print(f"pid {os.getpid()}: parent {parent} is gone, exiting", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # its stderr went with it
        pass
    os.kill(os.getpid(), signal.SIGKILL)
