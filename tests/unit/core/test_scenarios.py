"""Scenario generators: Trace v1 records, realistic shapes, and the demo end to end."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections import Counter
from typing import Any

import pytest

from collector.tenants import TenantDirectory
from core.sim.scenarios import (
    DEMO_INFERENCE_TENANTS,
    DEMO_OPAQUE_TENANT,
    DEMO_SLURM_TENANTS,
    DEMO_START_S,
    DEMO_TRAIN_OFFSET_S,
    demo_site,
    demo_tenants_toml,
)

SMALL = {"training_nodes": 20, "inference_nodes": 8, "slurm_nodes": 8}


def _records(hours: float = 0.5, seed: int = 1, **kw: Any) -> list[dict[str, Any]]:
    return list(demo_site(seed=seed, hours=hours, **{**SMALL, **kw}))


def test_records_follow_trace_v1() -> None:
    recs = _records(hours=0.1)
    nodes = [r for r in recs if r["type"] == "node"]
    assert len(nodes) == 36 and recs[: len(nodes)] == nodes, "every node record comes before any sample"
    assert nodes[0]["node"] == "kl1-n0001"
    g = nodes[0]["gpus"][0]
    assert set(g) == {"index", "uuid", "serial", "model", "mem_total_bytes", "power_limit_w"}
    assert g["model"] == "NVIDIA H100 80GB HBM3" and g["power_limit_w"] == 700 and len(nodes[0]["gpus"]) == 8
    last_t: dict[str, float] = {}
    for r in recs[len(nodes) :]:
        assert r["type"] == "sample" and r["t"] >= last_t.get(r["node"], 0.0)
        last_t[r["node"]] = r["t"]
        for gpu in r["gpus"]:
            assert {"index", "util_pct", "mem_used_bytes", "power_w", "energy_mj", "procs"} <= set(gpu)
            for p in gpu["procs"]:
                assert set(p) == {"pid", "tenant", "workload", "mem_bytes"}
    json.dumps(recs[:100])  # plain JSON values only


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    assert _records(hours=0.05) == _records(hours=0.05)
    assert _records(hours=0.05) != _records(hours=0.05, seed=2)


def _by_tenant(recs: list[dict[str, Any]], after_s: float) -> dict[str, list[tuple[float, float, int]]]:
    out: dict[str, list[tuple[float, float, int]]] = {}
    for r in recs:
        if r["type"] != "sample" or r["t"] < after_s:
            continue
        for gpu in r["gpus"]:
            if gpu["procs"]:
                out.setdefault(gpu["procs"][0]["tenant"], []).append(
                    (gpu["util_pct"], gpu["power_w"], gpu["mem_used_bytes"])
                )
    return out


def test_shapes_training_inference_slurm() -> None:
    recs = _records(hours=0.6)
    steady = DEMO_START_S + DEMO_TRAIN_OFFSET_S + 120
    by = _by_tenant(recs, steady)
    train = by[DEMO_OPAQUE_TENANT]
    power_frac = statistics.mean(p for _, p, _ in train) / 700
    assert 0.6 <= power_frac <= 0.9, f"training power {power_frac:.2f} of limit"
    assert statistics.median(u for u, _, _ in train) >= 90
    infer = [x for t in DEMO_INFERENCE_TENANTS for x in by.get(t, [])]
    assert infer, "inference tenants are active"
    assert 0.3 <= statistics.mean(p for _, p, _ in infer) / 700 <= 0.6
    assert 20 <= statistics.mean(u for u, _, _ in infer) <= 80
    assert min(m for _, _, m in infer) >= 0.85 * 85_520_809_984, "inference preallocates ~90% memory"
    assert any(t in by for t in DEMO_SLURM_TENANTS)


def test_training_starts_after_offset_and_is_idle_before() -> None:
    recs = _records(hours=0.25)
    before = [
        g
        for r in recs
        if r["type"] == "sample" and r["t"] < DEMO_START_S + DEMO_TRAIN_OFFSET_S and r["node"] == "kl1-n0001"
        for g in r["gpus"]
    ]
    assert before and all(not g["procs"] for g in before)


def test_slurm_jobs_are_small_and_mostly_one_gpu() -> None:
    recs = _records(hours=1.0, slurm_nodes=30)
    nodes_of: dict[str, set[str]] = {}
    for r in recs:
        if r["type"] == "sample":
            for g in r["gpus"]:
                for p in g["procs"]:
                    if p["workload"].startswith("slurm-"):
                        nodes_of.setdefault(p["workload"], set()).add(f"{r['node']}/{g['index']}")
    per_job = Counter(len(v) for v in nodes_of.values())
    assert per_job and max(per_job) <= 8
    assert per_job[1] == max(per_job.values()), f"1-GPU jobs are the most common: {per_job}"


def test_generation_is_fast() -> None:
    t0 = time.perf_counter()
    n = sum(1 for _ in itertools.islice(demo_site(seed=1, hours=2), 380 + 380 * 60))
    elapsed = time.perf_counter() - t0
    assert n == 380 + 380 * 60
    assert elapsed < 5.0, f"10 min of the 380-node demo took {elapsed:.1f} s to generate"


def test_demo_end_to_end_through_the_agent_windowing_finds_only_the_opaque_tenant() -> None:
    pipeline = pytest.importorskip("core.pipeline", reason="core.pipeline (windowing) not available")
    trace = pytest.importorskip("core.trace", reason="core.trace not available")
    from collector.detect.config import DetectConfig
    from collector.detect.engine import DetectorEngine

    recs = demo_site(seed=1, hours=0.5, training_nodes=40, inference_nodes=10, slurm_nodes=10)
    lines = itertools.chain([json.dumps(trace.header())], (json.dumps(r) for r in recs))
    eng = DetectorEngine(DetectConfig(), TenantDirectory.from_toml(demo_tenants_toml()))
    for w in pipeline.windows_from_records(trace.parse_lines(lines)):
        eng.observe(w)
    eng.finish()
    found = eng.findings()
    assert [f.tenant for f in found] == [DEMO_OPAQUE_TENANT], [f.to_json() for f in found]
    f = found[0]
    assert (f.gpus, f.nodes) == (320, 40)
    assert f.started_at_ms == (DEMO_START_S + DEMO_TRAIN_OFFSET_S) * 1000
    assert f.detected_at_ms - f.started_at_ms <= 15 * 60_000
    assert f.severity in ("high", "critical")
