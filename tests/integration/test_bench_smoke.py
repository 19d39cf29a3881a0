"""A short smoke of `make bench`: the benchmark scripts run and report their figures.

Benchmarks are not timed tests: nothing here asserts a speed. The figures and their goals
are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import test_postgres_collectors

ROOT = Path(__file__).resolve().parents[2]
# A fresh schema on the test PostgreSQL server (skips where none is reachable).
pg_url = test_postgres_collectors.pg_url


def run(script: str, *args: str) -> str:
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert p.returncode in (0, 1), f"{script} crashed:\n{p.stderr[-2000:]}"
    assert p.stdout.strip(), f"{script} printed no figures (exit {p.returncode}):\n{p.stderr[-2000:]}"
    return p.stdout


def test_agent_bench_reports_cpu_and_memory() -> None:
    out = json.loads(run("bench_agent.py", "--seconds", "120"))
    assert out["samples"] == 120 and out["statements_signed"] >= 1
    assert out["cpu_ms_per_sample"] > 0 and out["max_rss_mb"] > 0


def test_ingest_bench_stores_everything_it_sends() -> None:
    out = json.loads(run("bench_ingest.py", "--nodes", "3", "--windows", "3"))
    assert out["statements"] == 9, out
    assert out["raw_ed25519_verify_per_s_one_core"] > 0
    # Nine statements may take less than one tick of the process clock: unknown, never zero.
    assert out["ratio_to_raw_verify"] is None or out["ratio_to_raw_verify"] > 0


def test_detector_bench_runs() -> None:
    out = run("bench_detector.py", "--nodes", "200", "--windows", "1")
    assert "ms per window" in out, out


def test_log_bench_reports_memory_sync_and_proofs() -> None:
    out = json.loads(run("bench_log.py", "--leaves", "5000", "--proofs", "5", "--compare-leaves", "2000"))
    assert out["leaves"] == 5000 and out["tile_leaves"] == 1024
    assert out["tree_bytes_per_leaf_growing_part"] > 0 and out["untiled_bytes_per_leaf"] > 0
    assert out["inclusion_proof_ms"] > 0 and out["restart_sync_cpu_s"] >= 0
    assert out["export_proofs"] == 50  # 50 keys' statements (5,000 leaves of 12,500 keys: one each)


def test_ingest_bench_spreads_a_sustained_rate_over_two_collectors_on_postgres(pg_url: str) -> None:
    out = json.loads(
        run(
            "bench_ingest.py", "--nodes", "4", "--rate", "20", "--duration", "3", "--collectors", "2", "--store", pg_url
        )
    )
    assert out["collectors"] == 2 and out["store"] == "postgresql"
    assert out["statements"] == out["offered"] > 0, out
    assert out["collector_cpu_us_per_statement"] > 0 and out["client_cpu_share_of_a_core"] >= 0


def test_prometheus_bench_runs_the_history_path() -> None:
    args = ("--nodes", "20", "--hours", "1", "--http-nodes", "4", "--http-hours", "1")
    out = json.loads(run("bench_prometheus.py", *args))
    assert out["in_memory"]["gpu_windows"] == 20 * 8 * 60
    assert "skipped" in out["http"] or out["http"]["gpu_windows"] > 0


def test_storage_bench_measures_both_stores_before_and_after_retention(pg_url: str) -> None:
    out = json.loads(run("bench_storage.py", "--nodes", "2", "--hours", "0.5", "--postgres", pg_url))
    for backend in ("sqlite", "postgresql"):
        b = out[backend]
        assert b["statements"] == 2 * 30 and b["checkpoints"] == 30, (backend, b)
        # A signed 8-GPU statement is several KB: a node-day is megabytes, and ageing keeps far less.
        assert b["bytes_per_statement"] > 1000, (backend, b)
        assert 0 < b["bytes_per_node_day_aged"] < b["bytes_per_node_day"], (backend, b)
        assert b["compacted_bytes"] < b["ingested_bytes"], (backend, b)
        assert b["per_1000_gpus"]["full_gb_per_year"] > b["per_1000_gpus"]["aged_gb_per_year"] > 0
