"""megatron_soda.startup.collector_paused: the collector off inside, restored after (an exception
included); the state before is kept (a block inside a paused block does not turn it back on)."""

from __future__ import annotations

import gc

import pytest

from megatron_soda.startup import collector_paused


def test_collector_paused_inside_and_restored_after():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block found it off: left off
    assert gc.isenabled()
    with pytest.raises(ImportError), collector_paused():
        raise ImportError("a failing import")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # off before: off after
    finally:
        gc.enable()
