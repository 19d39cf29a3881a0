"""Runs ``collector.cli`` (same arguments) with the time its cyclic garbage collector takes
recorded, for bench_ingest.py. On SIGUSR1 it writes the totals so far, as JSON, to the file
named by GPUAUDIT_BENCH_GC_OUT: the bench signals before and after its streams and reports
the difference per statement."""

from __future__ import annotations

import gc
import json
import os
import runpy
import signal
import sys
import time
from typing import Any

_out = os.environ["GPUAUDIT_BENCH_GC_OUT"]
_totals = {"gc_cpu_s": 0.0, "collections": [0, 0, 0]}
_started = [0.0]


def _record(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.process_time()
    else:
        _totals["gc_cpu_s"] += time.process_time() - _started[0]  # type: ignore[operator]
        _totals["collections"][info["generation"]] += 1  # type: ignore[index]


def _dump(*_: object) -> None:
    tmp = _out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(_totals, fh)
    os.replace(tmp, _out)


gc.callbacks.append(_record)
signal.signal(signal.SIGUSR1, _dump)
sys.argv = ["collector.cli", *sys.argv[1:]]
runpy.run_module("collector.cli", run_name="__main__", alter_sys=True)
