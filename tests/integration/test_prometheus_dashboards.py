"""A real Prometheus scrapes a real collector fed by simulated agents; every Grafana panel's
query, every dashboard variable and every rule in deploy/ is run against it.

Needs the ``prometheus`` binary (Debian package ``prometheus``); skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fleet_feed import SHADOW_NODE, SITE_NODES, TAMPER_NODE, feed

from agent.sim.scenarios import demo_tenants_toml
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.server import start_collector
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# What Grafana would put in place of its variables: a minute of rate window, an hour of
# dashboard range, and "All" for every template variable.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$node": ".*", "$tenant": ".*", "$kind": ".*"}

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="prometheus absent (Debian package prometheus; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def _query(base: str, expr: str) -> Any:
    doc = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert doc["status"] == "success", (expr, doc)
    return doc["data"]


def _substitute(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def _panels() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for t in p["targets"]:
                out.append((path.name, p["title"], t["expr"]))
    return out


def _variables() -> list[tuple[str, str]]:
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] == "query":
                out.append((path.name, v["query"]["query"]))
    return out


def _finite(data: Any) -> bool:
    if data["resultType"] == "vector":
        return any(math.isfinite(float(r["value"][1])) for r in data["result"])
    if data["resultType"] == "scalar":
        return math.isfinite(float(data["result"][1]))
    return False


def test_dashboards_and_rules_against_a_real_prometheus(tmp_path: Path) -> None:
    panels = _panels()
    assert len(panels) >= 40, "four dashboards: fleet, tenant usage, findings, trust health"
    db = tmp_path / "collector.db"
    store = SqliteStore(db)
    cfg = CollectorConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", insecure=True, db=db)
    prom_port = _free_port()
    base = f"http://127.0.0.1:{prom_port}"
    log = tmp_path / "prometheus.log"

    async def scenario() -> None:
        running = await start_collector(
            cfg, store, DetectorEngine(DetectConfig(), TenantDirectory.from_toml(demo_tenants_toml()))
        )
        proc = None
        try:
            (tmp_path / "prometheus.yml").write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {RULES}\n"
                "scrape_configs:\n  - job_name: gpuaudit-collector\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{running.metrics_port}']\n"
            )
            with log.open("w") as fh:
                proc = subprocess.Popen(
                    [
                        PROMETHEUS,
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                        "--log.level=warn",
                    ],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, "prometheus exited:\n" + log.read_text()
                try:
                    if _query(base, 'up{job="gpuaudit-collector"} == 1')["result"]:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "prometheus did not scrape the collector:\n" + log.read_text()
                await asyncio.sleep(0.3)
            # Feed while Prometheus scrapes, so rates and histograms see the statements arrive.
            now_ms = time.time_ns() // 1_000_000
            tokens = [store.create_token(600, now_ms) for _ in range(SITE_NODES + 2)]
            fed = await feed(f"127.0.0.1:{running.port}", tokens)
            assert fed.stats.rejected == []
            await asyncio.sleep(4)  # a few more scrapes and rule evaluations

            def check() -> None:
                empty = []
                for board, title, expr in panels:
                    data = _query(base, _substitute(expr))
                    if not data["result"] or not _finite(data):
                        empty.append(f"{board} / {title}: {expr} -> {data['result']}")
                assert not empty, "panels without data from a fed collector:\n" + "\n".join(empty)
                for board, q in _variables():
                    metric, label = q[len("label_values(") : -1].split(", ")
                    assert _query(base, f"count by ({label}) ({metric})")["result"], (board, q)
                groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                assert len(rules) >= 9, rules
                bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
                assert not bad, f"rules failing in a real Prometheus: {bad}"
                alerts = {
                    (a["labels"]["alertname"], a["labels"].get("node", ""), a["state"])
                    for a in _get(f"{base}/api/v1/alerts")["data"]["alerts"]
                }
                # The tamper node's gap, wrong prev and equivocation; the replayed site's windows
                # are months old by the wall clock, so every node is (pending) dark.
                assert ("GpuauditChainBroken", TAMPER_NODE, "firing") in alerts, alerts
                assert ("GpuauditNodeDark", SHADOW_NODE, "pending") in alerts, alerts

            await asyncio.to_thread(check)
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await running.stop(0.5)

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=90))
    finally:
        store.close()
