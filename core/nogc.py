"""``no_gc``: the cyclic garbage collector off around work that makes many objects and no cycles.

A window of a large site (the detector's aggregate of 100,000 GPUs, a chunk of Prometheus
history) makes hundreds of thousands of small objects that reference counting frees; none
of them forms a cycle. Each full collection those allocations trigger walks every tracked
object of the process, the detector's history included: about half of the aggregate's time
on a 100,000-GPU window (bench/bench_detector.py). The collector is back on afterwards, as
it was, so cycles made elsewhere are collected as before.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off inside the block; back to its former state after it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


__all__ = ["no_gc"]
