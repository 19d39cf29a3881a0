#!/usr/bin/env python3
"""Detector throughput on a 100,000-GPU site: milliseconds per 60 s window on one core.

Standalone (standard library + the gpuaudit package): synthesises 12,500 nodes x 8 GPUs of
usage windows — a 2,400-GPU synchronized training run split across 4 accounts, 800 GPUs of
another training run, hot and bursty inference fleets, and 2,000 small accounts of 1-8 GPU
jobs — then times ``DetectorEngine.observe`` over whole windows (window building excluded).

    .venv/bin/python bench/bench_detector.py [--nodes 12500] [--windows 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from attestation.statement import Chain, GpuWindow, Series, UsageWindow, Workload
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.tenants import TenantDirectory

T0_MS = 1_772_424_000_000
WINDOW_MS = 60_000
BUCKETS = 6
H100 = "NVIDIA H100 80GB HBM3"
LIMIT_MW = 700_000


def _role(n: int, nodes: int) -> tuple[str, str]:
    """(kind, tenant) of node ``n``: fixed shares of the site."""
    f = n / nodes
    if f < 0.024:
        return "train", f"t-split-{n % 4}"
    if f < 0.032:
        return "train2", "t-other"
    if f < 0.30:
        return "hot", f"t-hot-{n % 5}"
    if f < 0.60:
        return "infer", f"t-inf-{n % 40}"
    return "small", f"t-acct-{n % 2000}"


def build(nodes: int, k: int, rng: random.Random) -> list[UsageWindow]:
    start = T0_MS + k * WINDOW_MS
    shared = [rng.gauss(0.0, 0.05) for _ in range(BUCKETS)]
    shared2 = [rng.gauss(0.0, 0.05) for _ in range(BUCKETS)]
    out = []
    for n in range(nodes):
        kind, tenant = _role(n, nodes)
        node = f"n{n:05d}"
        own = [rng.gauss(0.0, 0.04) for _ in range(BUCKETS)]
        gpus = []
        for i in range(8):
            if kind in ("train", "train2"):
                sh = shared if kind == "train" else shared2
                frac = [0.72 + sh[b] + own[b] for b in range(BUCKETS)]
                util = [970] * BUCKETS
                wl = f"{tenant}-job"
            elif kind == "hot":
                frac = [0.65 + rng.gauss(0.0, 0.04) for _ in range(BUCKETS)]
                util = [930] * BUCKETS
                wl = f"{node}-pod{i}"
            elif kind == "infer":
                util = [rng.randrange(200, 800) for _ in range(BUCKETS)]
                frac = [0.27 + 0.33 * u / 1000 for u in util]
                wl = f"{node}-pod{i}"
            else:
                if (n + i + k // 30) % 3 == 0:
                    gpus.append(_gpu(i, node, [0] * BUCKETS, [0.1] * BUCKETS, None, ""))
                    continue
                frac = [0.7 + own[b] for b in range(BUCKETS)]
                util = [930] * BUCKETS
                wl = f"{node}-job{i // 4}"
            gpus.append(_gpu(i, node, util, frac, tenant, wl))
        out.append(UsageWindow(node, "b", "bench", start, start + WINDOW_MS, 1000, Chain("k", k, None), tuple(gpus)))
    return out


def _gpu(i: int, node: str, util: list[int], frac: list[float], tenant: str | None, wl: str) -> GpuWindow:
    power = [int(max(0.05, f) * LIMIT_MW) for f in frac]
    workloads = () if tenant is None else (Workload(tenant, "k8s_pod", wl, 1, 70 << 30, 1000, 0),)
    return GpuWindow(
        index=i,
        uuid=f"GPU-{node}-{i}",
        serial=None,
        model=H100,
        mem_total_bytes=80 << 30,
        power_limit_mw=LIMIT_MW,
        samples=60,
        energy_start_mj=0,
        energy_end_mj=1,
        power_mean_mw=sum(power) // len(power),
        power_max_mw=max(power),
        util_mean_permille=sum(util) // len(util),
        mem_used_max_bytes=int((80 << 30) * 0.9),
        series=Series(10_000, tuple(util), tuple(power)),
        workloads=workloads,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=12_500)
    ap.add_argument("--windows", type=int, default=6, help="windows timed, after the warm-up")
    ns = ap.parse_args()
    rng = random.Random(1)
    per: list[float] = []
    cfg = DetectConfig()
    # Until the first window closes by lateness the engine does not know the site's nodes and
    # windows pile up; time only the steady state after that.
    warm = cfg.allowed_lateness_s * 1000 // WINDOW_MS + 2
    eng = DetectorEngine(cfg, TenantDirectory())
    for k in range(ns.windows + warm):
        ws = build(ns.nodes, k, rng)
        t0 = time.process_time()
        for w in ws:
            eng.observe(w)
        dt = time.process_time() - t0
        if k >= warm:
            per.append(dt * 1000)
    eng.finish()
    gpus = ns.nodes * 8
    print(
        f"{gpus} GPUs ({ns.nodes} nodes): {statistics.median(per):.0f} ms per window (median of {len(per)}; "
        f"max {max(per):.0f} ms; CPU time, one core); findings: {len(eng.findings())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
