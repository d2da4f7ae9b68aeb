"""glibc allocator tuning for CPU runs (codec workers, ``--device cpu`` training)."""

from __future__ import annotations

import ctypes
import sys


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Make glibc keep freed blocks up to ``threshold_bytes`` for reuse instead of handing
    them back to the kernel.

    CPU work on large activations (the Mimi encoder's first layers, a training step's
    vocabulary-sized logits) otherwise gets each buffer from a fresh ``mmap`` and pays a page
    fault plus the kernel zeroing a page per 4 KiB, every step: about a quarter of CPU encode
    time, and 12-17% of a CPU training step, measured (docs/benchmarks.md).  Results are
    bit-identical; the cost is that a process keeps its peak heap.  Process-wide.  Returns
    False where it does not apply (not Linux, or a libc without ``mallopt``).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, threshold_bytes)
        ok = ok and libc.mallopt(m_trim_threshold, threshold_bytes)
    except (OSError, AttributeError):
        return False
    return bool(ok)
