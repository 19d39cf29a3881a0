"""A short smoke of `make bench`: the benchmark scripts run and report their figures.

Benchmarks are not timed tests: nothing here asserts a speed. The figures and their goals
are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert p.returncode in (0, 1), f"{script} crashed:\n{p.stderr[-2000:]}"
    return p.stdout


def test_agent_bench_reports_cpu_and_memory() -> None:
    out = json.loads(run("bench_agent.py", "--seconds", "120"))
    assert out["samples"] == 120 and out["statements_signed"] >= 1
    assert out["cpu_ms_per_sample"] > 0 and out["max_rss_mb"] > 0


def test_ingest_bench_stores_everything_it_sends() -> None:
    out = json.loads(run("bench_ingest.py", "--nodes", "3", "--windows", "3"))
    assert out["statements"] == 9, out
    assert out["raw_ed25519_verify_per_s_one_core"] > 0 and out["ratio_to_raw_verify"] > 0


def test_detector_bench_runs() -> None:
    out = run("bench_detector.py", "--nodes", "200", "--windows", "1")
    assert "ms per window" in out, out
