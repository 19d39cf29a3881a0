"""``make demo``: the case gpuaudit exists for, end to end on one machine.

A site of 380 GPU nodes: 300 nodes × 8 H100 leased to an opaque tenant (a local company
with nominee directors and an offshore parent) running one synchronised training job; a
Kubernetes inference cluster serving ordinary tenants; a Slurm partition with small
research jobs. The demo writes the site's telemetry as a trace, starts a real collector
(gRPC on loopback, SQLite store, detector, /metrics) in a child process, and replays the
trace through real agent code in another: one key, one chain and one stream per node,
every statement signed and verified. It ends with the findings and their evidence.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# Real agents sample every second; the demo's simulated telemetry is one sample every 20 s
# (3 per 60 s window) so that hours of a 380-node site replay in about a minute on 2 cores.
DEMO_SAMPLE_INTERVAL_S = 20


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _metric_values(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", line)
            if m:
                out[m.group(1) or ""] = float(m.group(2))
    return out


def _label(name: str, value: str) -> str:
    return "{" + f'{name}="{value}"' + "}"


def run_demo(*, hours: float = 2.0, workdir: Path | None = None, keep: bool = False, seed: int = 7) -> int:
    from agent.sim.scenarios import demo_site, demo_tenants_toml
    from agent.trace import write_trace
    from collector.store.sqlite import SqliteStore

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpuaudit-demo-")
        work = Path(tmp.name)
    else:
        work = workdir
        work.mkdir(parents=True, exist_ok=True)
    trace = work / "site.jsonl"
    tenants = work / "tenants.toml"
    db = work / "collector.db"
    for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
        p.unlink(missing_ok=True)

    _say("gpuaudit demo: a 380-node GPU site, one opaque tenant training on 2,400 H100s")
    _say(f"  working directory: {work}")
    t0 = time.monotonic()
    nodes = 0

    def count_nodes(records: Any) -> Any:
        nonlocal nodes
        for r in records:
            if r.get("type") == "node":
                nodes += 1
            yield r

    lines = write_trace(trace, count_nodes(demo_site(seed=seed, hours=hours, sample_interval_s=DEMO_SAMPLE_INTERVAL_S)))
    tenants.write_text(demo_tenants_toml())
    _say(
        f"[1/4] telemetry of {nodes} nodes over {hours:g} h written as a trace ({lines} records, "
        f"{time.monotonic() - t0:.0f} s)"
    )

    store = SqliteStore(db)
    now_ms = time.time_ns() // 1_000_000
    tokens = [store.create_token(3600, now_ms) for _ in range(nodes)]
    store.close()
    token_file = work / "join-tokens"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(tokens) + "\n")

    ready = work / "collector.ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    collector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "-q",
            "serve",
            "--db",
            str(db),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--tenants",
            str(tenants),
            "--insecure",
            "--ready-file",
            str(ready),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if collector.poll() is not None or time.monotonic() > deadline:
                _say("error: the collector did not start")
                return 1
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        port, mport = info["port"], info["metrics_port"]
        metrics_url = f"http://127.0.0.1:{mport}/metrics"
        _say(f"[2/4] collector serving gRPC on 127.0.0.1:{port}; metrics at {metrics_url}")
        _say(f"[3/4] {nodes} agents (one key and chain each) enroll with one-time tokens and stream signed statements")
        t1 = time.monotonic()
        rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "replay",
                str(trace),
                "--collector",
                f"127.0.0.1:{port}",
                "--join-token-file",
                str(token_file),
            ],
            env=env,
        )
        if rc != 0:
            _say(f"error: replay failed with exit status {rc}")
            return 1
        replay_s = time.monotonic() - t1
        # The collector acks only after storing, so every statement is stored by now.
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            metrics_text = resp.read().decode()
        accepted = _metric_values(metrics_text, "gpuaudit_collector_statements_accepted_total").get("", 0)
        refused = sum(_metric_values(metrics_text, "gpuaudit_collector_statements_refused_total").values())
        gpu_s = _metric_values(metrics_text, "gpuaudit_tenant_gpu_seconds_total")
        store = SqliteStore(db)
        try:
            findings = [json.loads(r.json_text) for r in store.findings()]
            stored = store.statement_count()
        finally:
            store.close()

        _say(
            f"[4/4] {int(accepted)} statements verified (Ed25519 over DSSE PAE, chains checked) and stored "
            f"({stored} in the store), {int(refused)} refused, in {replay_s:.0f} s "
            f"({hours * 3600 / max(replay_s, 1e-9):.0f}x real time)"
        )
        _say()
        flagged = {t for f in findings for t in f.get("tenants", [f["tenant"]])}
        for f in findings:
            _print_finding(f)
        seen = sorted({re.search(r'tenant="([^"]*)"', k).group(1) for k in gpu_s if 'tenant="' in k})  # type: ignore[union-attr]
        quiet = [t for t in seen if t not in flagged]
        hours_by_tenant = {t: gpu_s.get(_label("tenant", t), 0.0) / 3600 for t in quiet}
        _say(
            f"No finding for the other {len(quiet)} tenants: "
            + ", ".join(f"{t} ({h:.0f} GPU-h)" for t, h in hours_by_tenant.items())
        )
        _say()
        _say("Where to look next:")
        _say(f"  findings (JSON):  gpuaudit-collector findings --db {db} --json")
        _say(f"  metrics:          {metrics_url}" + ("" if keep else " (live while the collector runs: --keep)"))
        _say(f"  offline detector: gpuaudit-collector detect --trace {trace} --tenants {tenants}")
        if tmp is not None and not keep:
            _say("  (files are in a temporary directory; use --workdir DIR to keep them)")
        if keep:
            _say("Collector still running; Ctrl-C to stop.")
            try:
                collector.wait()
            except KeyboardInterrupt:
                pass
        opaque_found = any(f.get("kind") == "large_training" for f in findings)
        return 0 if opaque_found else 1
    finally:
        if collector.poll() is None:
            collector.send_signal(signal.SIGTERM)
            try:
                collector.wait(timeout=15)
            except subprocess.TimeoutExpired:
                collector.kill()
        if tmp is not None and not keep:
            tmp.cleanup()


def _print_finding(f: dict[str, Any]) -> None:
    _say(
        f"FINDING {f['id']}: {f['kind']} by tenant {f['tenant']} — severity {f['severity'].upper()}"
        f" (score {f['score']})"
    )
    if len(f.get("tenants", [])) > 1:
        _say(f"  linked tenants: {', '.join(f['tenants'])}")
    _say(f"  {f['gpus']} GPUs on {f['nodes']} nodes; run started {f['started_at']}, detected {f['detected_at']}")
    flop = f.get("flop_estimate")
    if flop:
        _say(f"  {f['gpu_hours']} GPU-hours so far; estimated {flop[0]:.2e} to {flop[1]:.2e} FLOP")
    op = f.get("opacity", {})
    _say(f"  tenant opacity {op.get('score')}:")
    for r in op.get("reasons", []):
        _say(f"    - {r}")
    ev = f.get("evidence", {})
    if isinstance(ev, dict) and ev.get("severity_reason"):
        _say(f"  severity: {ev['severity_reason']}")
    signals = ev.get("signals") if isinstance(ev, dict) else None
    if isinstance(signals, dict):
        _say("  signals:")
        for line in signal_table(signals):
            _say(f"    {line}")
    _say()


def _cell(v: Any) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def signal_table(signals: dict[str, Any]) -> list[str]:
    """The finding's signals as aligned text rows: measured, threshold, fired, unit."""
    rows = [("signal", "measured", "threshold", "fired", "unit")]
    for name, s in signals.items():
        if not isinstance(s, dict):
            continue
        fired = s.get("fired")
        rows.append(
            (
                name.replace("_", " "),
                _cell(s.get("value")),
                "" if s.get("threshold") is None else _cell(s.get("threshold")),
                "-" if fired is None else _cell(bool(fired)),
                str(s.get("unit", "")) + (f" ({s['state']})" if s.get("state") else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
