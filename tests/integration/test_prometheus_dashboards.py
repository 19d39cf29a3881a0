"""A real Prometheus scrapes a real collector fed by simulated agents, and real agent
processes (``gpuaudit-agent run`` with the simulated source); every Grafana panel's query,
every dashboard variable and annotation and every rule in deploy/ is run against it.

The agents are staged as an operator would meet them: one healthy, one whose key the
collector revokes while it streams (a refused statement, a stopped stream, a spool that
fills up to a small ``spool_max_bytes`` and then drops statements), and one target where no
agent answers (down).

Needs the ``prometheus`` binary (Debian package ``prometheus``); skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fleet_feed import SHADOW_NODE, SITE_NODES, TAMPER_NODE, feed

from attestation.keys import load_key_file
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.detect.findings import Finding
from collector.detect.opacity import Opacity
from collector.server import start_collector
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core.sim.scenarios import demo_site, demo_tenants_toml
from core.trace import write_trace

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# What Grafana would put in place of its variables: a minute of rate window, an hour of
# dashboard range, and "All" for every template variable.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$node": ".*",
    "$tenant": ".*",
    "$kind": ".*",
    "$instance": ".*",
    "$top": "10",
}
AGENT_OK = "kl1-agent-ok"  # streams to the collector throughout
AGENT_REFUSED = "kl1-agent-refused"  # its key is revoked while it streams
AGENT_DEAD = "kl1-agent-dead"  # a scrape target where no agent answers
# Panels allowed to be empty here, each with the reason: their series appear only on a
# failure that a real agent with the simulated source cannot meet. Every other panel of
# every dashboard must return data.
EMPTY_ALLOWED = {
    ("agents.json", "Agents with GPUs they cannot read"): 'field="gpu" is counted only by the NVML source, '
    "when it cannot read a whole GPU; the simulated source reads every GPU of its trace",
    ("agents.json", "Agents whose wall clock jumped (dashboard range)"): "a jump needs the machine's wall "
    "clock stepped, which the test must not do to the host it runs on (tests/unit/agent cover the counting)",
}
# The refused agent's spool bound: about four of its statements (8 GPUs, 1 s windows: about
# 9 kB each), so that once its stream stops it reaches the bound within seconds and drops.
REFUSED_SPOOL_MAX_BYTES = 40_000

FINDING_ID = "f-0a1b2c3d4e5f6071"
PSEUDONYM = "tp-0123456789abcdef"


def _open_finding(now_ms: int) -> Finding:
    """A critical large_training finding of pseudonymous tenant PSEUDONYM, updated now."""
    return Finding(
        id=FINDING_ID,
        kind="large_training",
        tenant=PSEUDONYM,
        tenants=(PSEUDONYM,),
        severity="critical",
        started_at_ms=now_ms - 3_600_000,
        detected_at_ms=now_ms - 3_000_000,
        updated_at_ms=now_ms,
        gpus=256,
        nodes=32,
        gpu_hours=256.0,
        flop_estimate=None,
        score=0.9,
        opacity=Opacity(0.9, ("beneficial owners not disclosed",)),
    )


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


def _annotations() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        for a in json.loads(path.read_text()).get("annotations", {}).get("list", []):
            out.append((path.name, a["name"], a["expr"]))
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


class _Agent:
    """``gpuaudit-agent run`` in a process of its own, simulated source, /metrics on a free port."""

    def __init__(
        self, tmp: Path, node: str, trace: Path, collector: str, token: str, extra: tuple[str, ...] = ()
    ) -> None:
        d = tmp / node
        d.mkdir()
        self.node = node
        self.metrics_port = _free_port()
        self.key = d / "agent.key"
        self.log = d / "agent.log"
        (d / "agent.toml").write_text(
            "\n".join(
                [
                    f'node_id = "{node}"',
                    f'collector = "{collector}"',
                    f'key = "file:{self.key}"',
                    f'spool = "{d / "spool.db"}"',
                    'source = "sim"',
                    f'sim_trace = "{trace}"',
                    "window_s = 1",
                    "bucket_s = 1",
                    "sample_interval_s = 0.2",
                    "insecure = true",
                    f'metrics_listen = "127.0.0.1:{self.metrics_port}"',
                    *extra,
                ]
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUAUDIT_")}
        env["GPUAUDIT_JOIN_TOKEN"] = token
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(d / "agent.toml")],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> str:
        """Empty while the agent runs; otherwise how it ended, with its log."""
        code = self.proc.poll()
        return "" if code is None else f"agent {self.node} exited with {code}:\n{self.log.read_text()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the agent signs its last window and stops
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _prometheus_yml(collector_port: int, agents: dict[str, int]) -> str:
    # Job names as in deploy/prometheus/prometheus.yml; instance = the node, as its relabelling does.
    lines = [
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s",
        f"rule_files:\n  - {RULES}",
        "scrape_configs:",
        "  - job_name: gpuaudit-collector",
        f"    static_configs:\n      - targets: ['127.0.0.1:{collector_port}']",
        "  - job_name: gpuaudit-agent",
        "    static_configs:",
    ]
    for node, port in agents.items():
        lines.append(f"      - {{targets: ['127.0.0.1:{port}'], labels: {{instance: {node}}}}}")
    return "\n".join(lines) + "\n"


def test_dashboards_and_rules_against_a_real_prometheus(tmp_path: Path) -> None:
    panels = _panels()
    boards = {b for b, _, _ in panels}
    assert boards == {"fleet.json", "tenants.json", "findings.json", "trust.json", "agents.json"}, boards
    assert len(panels) >= 60, "five dashboards: fleet, tenant usage, findings, trust health, agents"
    titles = {(b, t) for b, t, _ in panels}
    assert set(EMPTY_ALLOWED) <= titles, (
        f"EMPTY_ALLOWED names panels that no longer exist: {set(EMPTY_ALLOWED) - titles}"
    )
    trace = tmp_path / "agent-trace.jsonl"
    write_trace(
        trace, demo_site(seed=5, hours=0.2, sample_interval_s=10, training_nodes=1, inference_nodes=0, slurm_nodes=0)
    )
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
        now_ms = time.time_ns() // 1_000_000
        agents = [
            _Agent(tmp_path, node, trace, f"127.0.0.1:{running.port}", store.create_token(600, now_ms), extra)
            for node, extra in (
                (AGENT_OK, ()),
                (AGENT_REFUSED, (f"spool_max_bytes = {REFUSED_SPOOL_MAX_BYTES}",)),
            )
        ]
        ok, refused = agents
        try:
            targets = {a.node: a.metrics_port for a in agents} | {AGENT_DEAD: _free_port()}
            assert running.metrics_port is not None, "the collector serves no /metrics"
            (tmp_path / "prometheus.yml").write_text(_prometheus_yml(running.metrics_port, targets))
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
                for a in agents:
                    assert not a.alive(), a.alive()
                try:
                    if (
                        _query(base, 'up{job="gpuaudit-collector"} == 1')["result"]
                        and len(_query(base, 'up{job="gpuaudit-agent"} == 1')["result"]) == len(agents)
                        and _query(base, f'gpuaudit_agent_acks_total{{instance="{refused.node}"}} > 0')["result"]
                    ):
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, (
                    "prometheus did not scrape the collector and both agents, or the agents did not stream:\n"
                    + log.read_text()
                    + "".join(a.log.read_text() for a in agents)
                )
                await asyncio.sleep(0.3)
            # The collector revokes the streaming agent's key: its next statement is refused.
            revoked = await asyncio.to_thread(
                store.revoke_key, load_key_file(refused.key).key_id, time.time_ns() // 1_000_000
            )
            assert revoked
            # Feed while Prometheus scrapes, so rates and histograms see the statements arrive.
            now_ms = time.time_ns() // 1_000_000
            tokens = [store.create_token(600, now_ms) for _ in range(SITE_NODES + 2)]
            fed = await feed(f"127.0.0.1:{running.port}", tokens)
            assert fed.stats.rejected == []
            # A large-training run going on now. The fed site's run is months old by the wall
            # clock that the live agents' windows carry, so the detector rightly has none open;
            # the finding is handed to the collector's metrics as FindingSink hands the
            # detector's (tests/integration/test_metrics_golden.py sees the detector's own).
            running.metrics.observe_finding_open(_open_finding(time.time_ns() // 1_000_000))
            deadline = time.monotonic() + 20
            while not _query(base, f'gpuaudit_agent_rejects_total{{instance="{refused.node}"}}')["result"]:
                assert time.monotonic() < deadline, (
                    "the revoked agent's refusal never showed:\n" + refused.log.read_text()
                )
                await asyncio.sleep(0.5)
            # Its stream stopped, the refused agent signs on into its spool until the bound drops some.
            dropped = f'gpuaudit_agent_statements_dropped_total{{instance="{refused.node}",reason="spool_size"}} > 0'
            deadline = time.monotonic() + 30
            while not _query(base, dropped)["result"]:
                assert time.monotonic() < deadline, (
                    "the refused agent never dropped a statement at its spool bound:\n" + refused.log.read_text()
                )
                await asyncio.sleep(0.5)
            await asyncio.sleep(4)  # a few more scrapes and rule evaluations
            # rate() counts only what a counter gained between two scrapes: a feed fast enough
            # to fit between two of them leaves the usage counters flat from their first sample
            # and a ratio of their rates at 0/0. Usage that arrives now, after the series
            # exist, moves them as a live site's would (counted in the metrics only).
            for w in fed.windows:
                if any(g.workloads for g in w.gpus):
                    running.metrics.observe_window(w)
                    break
            for a in agents:  # a refused statement stops the stream, not the agent
                assert not a.alive(), a.alive()

            def check() -> None:
                empty = []
                for board, title, expr in panels:
                    data = _query(base, _substitute(expr))
                    if (not data["result"] or not _finite(data)) and (board, title) not in EMPTY_ALLOWED:
                        empty.append(f"{board} / {title}: {expr} -> {data['result']}")
                assert not empty, "panels without data from a fed collector and live agents:\n" + "\n".join(empty)
                # The open-findings annotation marks the large-training run going on.
                annotations = _annotations()
                assert {b for b, _, _ in annotations} == {"findings.json", "fleet.json", "tenants.json"}, annotations
                for board, name, expr in annotations:
                    result = _query(base, _substitute(expr))["result"]
                    assert [r["metric"]["finding_id"] for r in result] == [FINDING_ID], (board, name, expr, result)
                for board, q in _variables():
                    metric, label = q[len("label_values(") : -1].split(", ")
                    assert _query(base, f"count by ({label}) ({metric})")["result"], (board, q)
                groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                in_file = re.findall(r"^\s+- (?:alert|record): ", RULES.read_text(), re.MULTILINE)
                assert len(rules) == len(in_file), f"Prometheus loaded {len(rules)} rules, rules.yml has {len(in_file)}"
                bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
                assert not bad, f"rules failing in a real Prometheus: {bad}"
                # The large-training alert names the finding and the tenant's pseudonym.
                training = [
                    a
                    for a in _get(f"{base}/api/v1/alerts")["data"]["alerts"]
                    if a["labels"]["alertname"] == "GpuauditLargeTrainingByOpaqueTenant"
                ]
                assert [(a["state"], a["labels"]["finding_id"], a["labels"]["tenant_pseudonym"]) for a in training] == [
                    ("firing", FINDING_ID, PSEUDONYM)
                ], training
                assert FINDING_ID in training[0]["annotations"]["summary"], training
                alerts = {
                    (
                        a["labels"]["alertname"],
                        a["labels"].get("node") or a["labels"].get("instance", ""),
                        a["state"],
                    )
                    for a in _get(f"{base}/api/v1/alerts")["data"]["alerts"]
                }
                # The tamper node's gap, wrong prev and equivocation; the replayed site's windows
                # are months old by the wall clock, so every node is (pending) dark.
                assert ("GpuauditChainBroken", TAMPER_NODE, "firing") in alerts, alerts
                assert ("GpuauditNodeDark", SHADOW_NODE, "pending") in alerts, alerts
                # The agents: a refusal fires at once; a target down is pending for 10 minutes;
                # the healthy agent raises nothing.
                assert ("GpuauditAgentStatementRefused", refused.node, "firing") in alerts, alerts
                assert ("GpuauditAgentSpoolBoundReached", refused.node, "firing") in alerts, alerts
                assert ("GpuauditAgentDown", AGENT_DEAD, "pending") in alerts, alerts
                assert not [a for a in alerts if a[1] == ok.node], alerts
                # A refusal stops the stream: the refused agent signs on into its spool.
                depth = _query(base, f'gpuaudit_agent_spool_statements{{instance="{refused.node}"}}')["result"]
                assert depth and float(depth[0]["value"][1]) >= 2, depth
                # ... up to its bound, keeping the oldest (the refused one, from before the drops
                # waited for above): the oldest statement waiting is seconds old.
                waited = _query(
                    base,
                    f'time() - gpuaudit_agent_spool_oldest_window_end_timestamp_seconds{{instance="{refused.node}"}}',
                )["result"]
                assert waited and float(waited[0]["value"][1]) >= 3, waited
                # The healthy agent: its enrolled key, first used after it started, rotated on the
                # default schedule; no drop, no clock step.
                for expr, want in (
                    (f'gpuaudit_agent_key_epoch{{instance="{ok.node}"}}', 0),
                    (f'gpuaudit_agent_key_rotation_period_seconds{{instance="{ok.node}"}}', 90 * 86400),
                    (f'sum(gpuaudit_agent_statements_dropped_total{{instance="{ok.node}"}})', 0),
                    (f'sum(gpuaudit_agent_clock_jumps_total{{instance="{ok.node}"}})', 0),
                ):
                    got = _query(base, expr)["result"]
                    assert got and float(got[0]["value"][1]) == want, (expr, got)

            # Rules evaluate on their own clock: a ratio over counters that had not yet moved
            # between two scrapes reads 0/0 = NaN for a moment. Check again until it holds.
            deadline = time.monotonic() + 30
            while True:
                try:
                    await asyncio.to_thread(check)
                    break
                except AssertionError:
                    if time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(2)
        finally:
            # Off the event loop: the collector serving the agents' last statements runs on it.
            await asyncio.gather(*(asyncio.to_thread(a.stop) for a in agents))
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await running.stop(0.5)

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=150))
    finally:
        store.close()
