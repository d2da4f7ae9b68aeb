"""A torch.profiler table of one call, printed between markers the benchmark drivers parse."""

from __future__ import annotations

import sys
from collections.abc import Callable


def profile_table(fn: Callable[[], object], rows: int = 25) -> None:
    """torch.profiler over one call of ``fn``: the top ops by self CPU time, on stderr."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(f"PROFILE-BEGIN\n{table}\nPROFILE-END", file=sys.stderr, flush=True)
