#!/usr/bin/env python3
"""``detect --prometheus`` on a week of a 300-node site at 30 s: goal under 5 minutes on 2 cores.

Two measurements (docs/benchmarks.md):

1. **series -> windows -> detector, in memory**: a week of a 300-node (2,400-GPU) site as
   the range queries would return it (dcgm-exporter labels, 30 s step, hourly chunks, every
   query ``detect --prometheus`` makes: utilisation, power mean and max, memory used and
   total, energy): a 960-GPU synchronised training run of one tenant from the second hour
   on, inference fleets of four tenants, and nodes of small jobs. Times the window builder
   and the detector; building the synthetic query results is timed apart.
2. **the HTTP path**: a smaller site (core/sim scenarios, ``--http-nodes`` nodes for
   ``--http-hours`` hours at 30 s) written as OpenMetrics, backfilled with ``promtool tsdb
   create-blocks-from openmetrics`` and served by a real Prometheus on loopback; times the
   whole ``detect --prometheus`` path (requests, JSON decoding, windows, detector), and
   extrapolates its rate per GPU-window to the week of 300 nodes. Skipped without
   prometheus/promtool.

    .venv/bin/python bench/bench_prometheus.py [--nodes 300] [--hours 168] [--http-nodes 40] [--http-hours 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.detect.config import DetectConfig  # noqa: E402
from collector.detect.engine import DetectorEngine  # noqa: E402
from collector.prometheus.client import Chunk, ClientConfig, PrometheusClient, RangeSeries, plan_chunks  # noqa: E402
from collector.prometheus.source import PrometheusHistory, Span  # noqa: E402
from collector.prometheus.windows import WindowBuilder  # noqa: E402
from collector.tenants import TenantDirectory  # noqa: E402
from core.tenantrules import TenantRules  # noqa: E402

T0_MS = 1_772_409_600_000  # 2026-03-02T00:00:00Z
STEP_MS = 30_000
H100 = "NVIDIA H100 80GB HBM3"
PATTERN = 720  # points in a node's precomputed pattern (6 h at 30 s); chunks read it cyclically


def _site(nodes: int, rng: random.Random) -> list[dict[str, object]]:
    """Per node: role, tenant, labels of its 8 GPUs, and value patterns (strings, as the API sends them)."""
    shared = [0.0]
    for _ in range(PATTERN - 1):
        shared.append(0.8 * shared[-1] + rng.gauss(0.0, 0.045) * math.sqrt(1 - 0.64))
    out: list[dict[str, object]] = []
    for n in range(nodes):
        f = n / nodes
        role = "train" if f < 0.4 else "infer" if f < 0.8 else "small"
        tenant = {"train": "t-opaque", "infer": f"t-inf-{n % 4}", "small": f"t-lab-{n % 3}"}[role]
        host = f"h{n:04d}"
        ar = 0.0
        power, util = [], []
        for k in range(PATTERN):
            ar = 0.7 * ar + rng.gauss(0.0, 0.04) * math.sqrt(1 - 0.49)
            if role == "train":
                frac, u = 0.74 + shared[k] + ar, 97.0
            elif role == "infer":
                u = rng.uniform(20.0, 80.0)
                frac = 0.27 + 0.33 * u / 100
            else:
                busy = (k // 120 + n) % 3 != 0
                frac, u = (0.7 + ar, 93.0) if busy else (0.1, 0.0)
            power.append(f"{max(0.1, frac) * 700:.1f}")
            util.append(str(round(u)))
        idle_power = [f"{70.0 + rng.gauss(0, 1):.1f}" for _ in range(PATTERN)]
        gpus = []
        for i in range(8):
            labels = {"gpu": str(i), "UUID": f"GPU-{n:04d}-{i}", "modelName": H100, "Hostname": host}
            labels |= {"namespace": "gpu-operator", "pod": f"nvidia-dcgm-exporter-{n:04d}"}
            workload = {
                "exported_namespace": f"ns-{tenant}",
                "exported_pod": f"{role}-{n if role != 'train' else 0}-{i}",
            }
            gpus.append((labels, labels | workload))
        out.append({"role": role, "gpus": gpus, "power": power, "util": util, "idle_power": idle_power})
    return out


def _chunk_results(site: list[dict[str, object]], chunk: Chunk, train_from_ms: int) -> dict[str, list[RangeSeries]]:
    """What the range queries of ``chunk`` return for the synthetic site."""
    n = (chunk.end_ms - chunk.start_ms) // STEP_MS
    ts = [(chunk.start_ms + (k + 1) * STEP_MS - 1) / 1000 for k in range(n)]
    off = (chunk.start_ms // STEP_MS) % PATTERN
    res: dict[str, list[RangeSeries]] = {
        k: [] for k in ("util", "power", "power_max", "mem_used", "mem_total", "energy")
    }
    mem = ["72000"] * n
    total = ["81559"] * n
    for node in site:
        idle = node["role"] == "train" and chunk.start_ms < train_from_ms
        pw = node["idle_power" if idle else "power"]
        ut = ["0"] * PATTERN if idle else node["util"]
        p = (pw[off:] + pw[:off])[:n]  # type: ignore[index]
        u = (ut[off:] + ut[:off])[:n]  # type: ignore[index]
        energy = [str(int(chunk.start_ms + k * 21_000_000)) for k in range(n)]
        for idle_labels, busy_labels in node["gpus"]:  # type: ignore[attr-defined]
            labels = idle_labels if idle else busy_labels
            res["util"].append(RangeSeries(labels, list(zip(ts, u, strict=True))))
            pv = list(zip(ts, p, strict=True))
            res["power"].append(RangeSeries(labels, pv))
            res["power_max"].append(RangeSeries(labels, pv))
            res["mem_used"].append(RangeSeries(labels, list(zip(ts, mem, strict=True))))
            res["mem_total"].append(RangeSeries(labels, list(zip(ts, total, strict=True))))
            res["energy"].append(RangeSeries(labels, list(zip(ts, energy, strict=True))))
    return res


def in_memory(nodes: int, hours: float) -> dict[str, object]:
    rng = random.Random(3)
    site = _site(nodes, rng)
    end = T0_MS + int(hours * 3_600_000)
    chunks = plan_chunks(T0_MS, end, window_ms=60_000, step_ms=STEP_MS, chunk_ms=3_600_000)
    builder = WindowBuilder(
        TenantRules(namespaces={f"ns-t-{x}": f"t-{x}" for x in ("opaque", "inf-0", "inf-1", "inf-2", "inf-3")}),
        step_ms=STEP_MS,
    )
    engine = DetectorEngine(DetectConfig(), TenantDirectory())
    gen_s = build_s = detect_s = 0.0
    windows = 0
    for chunk in chunks:
        t = time.process_time()
        results = _chunk_results(site, chunk, T0_MS + 3_600_000)
        t1 = time.process_time()
        ws = builder.build(chunk, results)
        del results
        t2 = time.process_time()
        for w in ws:
            engine.observe(w)
        t3 = time.process_time()
        gen_s += t1 - t
        build_s += t2 - t1
        detect_s += t3 - t2
        windows += len(ws)
    t = time.process_time()
    engine.finish()
    findings = engine.findings()
    detect_s += time.process_time() - t
    gpu_windows = builder.coverage.gpu_windows
    return {
        "nodes": nodes,
        "hours": hours,
        "gpu_windows": gpu_windows,
        "node_windows": windows,
        "generate_s": round(gen_s, 1),
        "windows_s": round(build_s, 1),
        "detector_s": round(detect_s, 1),
        "measured_s": round(build_s + detect_s, 1),
        "us_per_gpu_window": round((build_s + detect_s) / max(1, gpu_windows) * 1e6, 2),
        "week_extrapolated_windows_s": round(build_s * 168 / hours),
        "week_extrapolated_detector_s": round(detect_s * 168 / hours),
        "findings": [(f.tenant, f.gpus, f.nodes) for f in findings],
    }


def in_memory_pipelined(nodes: int, hours: float) -> dict[str, object]:
    """The same as ``in_memory``, as ``detect --prometheus`` runs it by default: a worker
    process makes (here: generates) and computes each chunk's rows one ahead; the main
    process aggregates its windows as the detector does (collector/prometheus/sites.py) and
    runs the detector on the whole windows (``observe_site``). Wall and CPU of each process."""
    from collector.prometheus.pipeline import RunAhead
    from collector.prometheus.sites import aggregate_rows
    from core.nogc import no_gc

    rng = random.Random(3)
    site = _site(nodes, rng)
    end = T0_MS + int(hours * 3_600_000)
    chunks = plan_chunks(T0_MS, end, window_ms=60_000, step_ms=STEP_MS, chunk_ms=3_600_000)
    builder = WindowBuilder(
        TenantRules(namespaces={f"ns-t-{x}": f"t-{x}" for x in ("opaque", "inf-0", "inf-1", "inf-2", "inf-3")}),
        step_ms=STEP_MS,
    )
    config = DetectConfig()
    engine = DetectorEngine(config, TenantDirectory())
    spent = {"generate_s": 0.0, "compute_s": 0.0}

    def produce():  # type: ignore[no-untyped-def]
        for chunk in chunks:
            t = time.process_time()
            results = _chunk_results(site, chunk, T0_MS + 3_600_000)
            t1 = time.process_time()
            rows = builder.compute(chunk, results, config)
            del results
            spent["generate_s"] += t1 - t
            spent["compute_s"] += time.process_time() - t1
            yield rows

    ahead = RunAhead(produce, lambda: spent)
    aggregate_s = detect_s = 0.0
    wall, main_cpu = time.monotonic(), time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    for rows in ahead:
        t = time.process_time()
        with no_gc():
            sites = aggregate_rows(rows, config, builder.window_ms, builder.coverage)
        del rows
        t1 = time.process_time()
        for at in sites:
            engine.observe_site(at.start_ms, at.end_ms, at.nodes, at.site)
        del sites
        detect_s += time.process_time() - t1
        aggregate_s += t1 - t
    t = time.process_time()
    engine.finish()
    findings = engine.findings()
    detect_s += time.process_time() - t
    wall = time.monotonic() - wall
    main_cpu = time.process_time() - main_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    worker: dict[str, float] = ahead.finished
    return {
        "nodes": nodes,
        "hours": hours,
        "gpu_windows": builder.coverage.gpu_windows,
        "wall_s": round(wall, 1),
        "main_cpu_s": round(main_cpu, 1),
        "main_unpickle_s": round(main_cpu - detect_s - aggregate_s, 1),
        "main_aggregate_s": round(aggregate_s, 1),
        "main_detector_s": round(detect_s, 1),
        "worker_cpu_s": round(worker_cpu, 1),
        "worker_generate_s": round(worker["generate_s"], 1),
        "worker_compute_s": round(worker["compute_s"], 1),
        "week_extrapolated_main_cpu_s": round(main_cpu * 168 / hours),
        "week_extrapolated_worker_cpu_s": round(worker_cpu * 168 / hours),
        "week_extrapolated_worker_cpu_without_generation_s": round((worker_cpu - worker["generate_s"]) * 168 / hours),
        "week_extrapolated_wall_s": round(wall * 168 / hours),
        "findings": [(f.tenant, f.gpus, f.nodes) for f in findings],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_path(nodes: int, hours: float, week_gpu_windows: int) -> dict[str, object]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return {"skipped": "prometheus/promtool absent (Debian package prometheus)"}
    from collector.prometheus.sim import write_openmetrics_file
    from core.sim.scenarios import DEMO_START_S, InferenceFleet, TrainingJob, _names, site_records

    rng = random.Random(5)
    start = float(DEMO_START_S)
    end = start + hours * 3600
    train = TrainingJob(rng, _names("tr", 1, nodes // 2), "t-opaque", start + 1800, end + 3600)
    infer = InferenceFleet(rng, _names("inf", 1, nodes - nodes // 2), ("t-inf-0", "t-inf-1"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.monotonic()
        om = tmp / "site.om"
        write_openmetrics_file(
            om,
            site_records([train, infer], start, end, 30.0),
            namespaces={"t-opaque": "ns-opaque", "t-inf-0": "ns-inf-0", "t-inf-1": "ns-inf-1"},
            shape_of=lambda node: "servicemonitor",
        )
        gen_s = time.monotonic() - t
        t = time.monotonic()
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(tmp / "tsdb")],
            check=True,
            capture_output=True,
        )
        backfill_s = time.monotonic() - t
        port = _free_port()
        (tmp / "p.yml").write_text("global:\n  scrape_interval: 1h\n")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp / 'p.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(150):
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                        break
                except OSError:
                    time.sleep(0.2)
            client = PrometheusClient(ClientConfig(url))
            builder = WindowBuilder(TenantRules(namespaces={"ns-opaque": "t-opaque"}), step_ms=STEP_MS)
            span = Span(int(start * 1000), int(end * 1000), STEP_MS)
            history = PrometheusHistory(client, builder, span)
            engine = DetectorEngine(DetectConfig(), TenantDirectory())
            t, c = time.monotonic(), time.process_time()
            p0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            for ws in history.windows():
                for w in ws:
                    engine.observe(w)
            engine.finish()
            wall, cpu = time.monotonic() - t, time.process_time() - c
            findings = engine.findings()
            prom_cpu = _proc_cpu_s(proc.pid)
            del p0
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    gw = builder.coverage.gpu_windows
    return {
        "nodes": nodes,
        "hours": hours,
        "gpu_windows": gw,
        "requests": client.requests,
        "mb_read": round(client.bytes_read / 1e6, 1),
        "openmetrics_s": round(gen_s, 1),
        "backfill_s": round(backfill_s, 1),
        "wall_s": round(wall, 1),
        "client_cpu_s": round(cpu, 1),
        "prometheus_cpu_s_total": prom_cpu,
        "wall_us_per_gpu_window": round(wall / max(1, gw) * 1e6, 2),
        "week_extrapolated_wall_s": round(wall / max(1, gw) * week_gpu_windows, 0),
        "findings": [(f.tenant, f.gpus, f.nodes) for f in findings],
    }


def _proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, IndexError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--hours", type=float, default=168.0)
    ap.add_argument("--http-nodes", type=int, default=40)
    ap.add_argument("--http-hours", type=float, default=6.0)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument(
        "--pipeline",
        choices=("both", "on", "off"),
        default="both",
        help="in memory: the pipelined path (detect --prometheus's default), the sequential one, or both",
    )
    args = ap.parse_args()
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    mem: dict[str, object] = {}
    if args.pipeline in ("both", "off"):
        t = time.monotonic()
        mem = in_memory(args.nodes, args.hours)
        mem["wall_s"] = round(time.monotonic() - t, 1)
        out["in_memory"] = mem
    if args.pipeline in ("both", "on"):
        piped = in_memory_pipelined(args.nodes, args.hours)
        out["in_memory_pipelined"] = piped
        if mem:
            piped["findings_same_as_sequential"] = piped["findings"] == mem["findings"]
        mem = mem or piped
    out["max_rss_mb_main"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["max_rss_mb_worker"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    if not args.skip_http:
        out["http"] = http_path(args.http_nodes, args.http_hours, int(mem["gpu_windows"]))  # type: ignore[call-overload]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
