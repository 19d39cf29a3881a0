"""Golden /metrics: a real collector fed by real agents over gRPC, scraped over HTTP.

Checks the exposition against Prometheus conventions (``promtool check metrics`` where
promtool exists), against the checked-in list of series (tests/fixtures/metrics/), and the
values against what the agents signed.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import shutil
import subprocess
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fleet_feed import (
    EXPECTED_TAMPER_REPLIES,
    SHADOW_BUSY_GPUS,
    SHADOW_MINUTES,
    SHADOW_NODE,
    SITE_NODES,
    TAMPER_NODE,
    Fed,
    feed,
)
from prometheus_client.parser import text_string_to_metric_families

from attestation.statement import UNATTRIBUTED
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.integrity import KINDS as INTEGRITY_KINDS
from collector.metrics import CHAIN_BREAK_REASONS, NOT_PSEUDONYMISED, REFUSAL_REASONS
from collector.server import start_collector
from collector.store.base import FindingRecord
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core import __version__
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_tenants_toml

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "metrics" / "collector_series.txt"
# Labels a gpuaudit series may carry; anything else (a pid, a job, a key, a seq) is unbounded.
ALLOWED_LABELS = {"node", "gpu", "tenant", "reason", "kind", "severity", "level", "bound", "collector", "le"}
INFO_LABELS = {"version", "python_version"}
# One series per open detector finding (a handful on a site, gone when the run ends), so that
# an alert can name it: the one place a finding id is a label (collector/metrics/findings.py).
FINDING_LABELS = {"finding_id", "tenant_pseudonym"}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers.get("Content-Type")
        return str(r.read().decode())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def _series_list(text: str) -> list[str]:
    lines = set()
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("gpuaudit_"):
            continue
        labels = sorted({k for s in fam.samples for k in s.labels if k != "le"})
        lines.add(f"{fam.name} {fam.type} {','.join(labels) or '-'}")
    return sorted(lines)


def _expected(fed: Fed) -> dict[str, Any]:
    gpu_s: dict[str, float] = defaultdict(float)
    energy: dict[str, float] = defaultdict(float)
    unattributed: dict[str, float] = defaultdict(float)
    node_energy: dict[str, float] = defaultdict(float)
    last_end: dict[str, int] = {}
    for w in fed.windows:
        last_end[w.node_id] = max(last_end.get(w.node_id, 0), w.end_ms)
        for g in w.gpus:
            ej = None
            if g.energy_start_mj is not None and g.energy_end_mj is not None:
                ej = (g.energy_end_mj - g.energy_start_mj) / 1000
                node_energy[w.node_id] += ej
            for wl in g.workloads:
                gpu_s[wl.tenant] += wl.gpu_ms / 1000
                if wl.tenant == UNATTRIBUTED:
                    unattributed[w.node_id] += wl.gpu_ms / 1000
                if ej is not None:
                    energy[wl.tenant] += ej * min(1.0, wl.gpu_ms / (g.samples * w.sample_interval_ms))
    return {
        "gpu_s": gpu_s,
        "energy": energy,
        "unattributed": unattributed,
        "node_energy": node_energy,
        "last_end": last_end,
    }


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


@dataclass
class Scraped:
    before: str  # /metrics before any statement
    text: str  # /metrics after the fleet was fed
    fed: Fed
    findings: list[FindingRecord]
    mfu: tuple[float, float]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Scraped:
    tmp = tmp_path_factory.mktemp("golden")
    db = tmp / "collector.db"
    store = SqliteStore(db)
    cfg = CollectorConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", insecure=True, db=db)
    dcfg = DetectConfig()

    async def scenario() -> Scraped:
        running = await start_collector(
            cfg, store, DetectorEngine(dcfg, TenantDirectory.from_toml(demo_tenants_toml()))
        )
        try:
            assert running.metrics_port is not None
            before = _scrape(running.metrics_port)
            now_ms = time.time_ns() // 1_000_000
            tokens = [store.create_token(600, now_ms) for _ in range(SITE_NODES + 2)]
            fed = await feed(f"127.0.0.1:{running.port}", tokens)
            text = _scrape(running.metrics_port)
            return Scraped(before, text, fed, store.findings(), (dcfg.mfu_low, dcfg.mfu_high))
        finally:
            await running.stop(0.5)

    try:
        out = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    finally:
        store.close()
    assert out.fed.stats.rejected == [], out.fed.stats.rejected
    assert out.fed.tamper_replies == EXPECTED_TAMPER_REPLIES, out.fed.tamper_replies
    return out


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool absent (Debian package prometheus)")
def test_promtool_check_metrics_is_clean(scraped: Scraped) -> None:
    p = subprocess.run(["promtool", "check", "metrics"], input=scraped.text, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (
        "promtool check metrics found problems in the collector's /metrics:\n" + p.stdout + p.stderr
    )


def test_only_bounded_labels_and_counters_end_in_total(scraped: Scraped) -> None:
    text = scraped.text
    # -- conventions ---------------------------------------------------------------
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("gpuaudit_"):
            continue
        for s in fam.samples:
            extra = (
                set(s.labels)
                - ALLOWED_LABELS
                - (INFO_LABELS if fam.name == "gpuaudit_collector_build_info" else set())
                - (FINDING_LABELS if fam.name == "gpuaudit_finding_open" else set())
            )
            assert not extra, f"{s.name} has label(s) {extra}: only bounded labels belong in Prometheus"
            if fam.type == "counter":
                assert s.name.endswith("_total"), f"counter sample {s.name} must end in _total"
            assert not s.name.endswith("_created"), f"{s.name}: _created series double the cardinality"


def test_series_match_the_golden_list(scraped: Scraped) -> None:
    series = _series_list(scraped.text)
    if os.environ.get("GPUAUDIT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text("\n".join(series) + "\n")
    golden = GOLDEN.read_text().split("\n")[:-1]
    assert series == golden, (
        "the collector's series changed (name, type or label names). Dashboards, alerts and users' "
        f"queries depend on them: if the change is intended, rerun with GPUAUDIT_UPDATE_GOLDEN=1 and "
        f"update deploy/ and docs/operator-guide.md.\nadded: {sorted(set(series) - set(golden))}\n"
        f"removed: {sorted(set(golden) - set(series))}"
    )


def test_series_alerts_rely_on_exist_at_zero_before_any_statement(scraped: Scraped) -> None:
    b = _samples(scraped.before)
    for reason in REFUSAL_REASONS:
        assert b[("gpuaudit_collector_statements_refused_total", frozenset({("reason", reason)}))] == 0
    for sev in ("low", "medium", "high", "critical"):
        key = frozenset({("kind", "large_training"), ("severity", sev)})
        assert b[("gpuaudit_findings_raised_total", key)] == 0
    for kind in INTEGRITY_KINDS:  # GpuauditIntegrityFinding takes increase() of these
        key = frozenset({("kind", kind), ("severity", "high")})
        assert b[("gpuaudit_findings_raised_total", key)] == 0, kind
    assert b[("gpuaudit_collector_nodes_known", frozenset())] == 0


def test_values_match_what_the_agents_signed(scraped: Scraped) -> None:
    m = _samples(scraped.text)
    fed = scraped.fed
    mfu_low, mfu_high = scraped.mfu

    def v(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in m, f"series {name}{labels} missing from /metrics"
        return m[key]

    info = v("gpuaudit_collector_build_info", version=__version__, python_version=platform.python_version())
    assert info == 1
    accepted = fed.stats.signed + 3
    assert v("gpuaudit_collector_statements_accepted_total") == accepted
    assert v("gpuaudit_collector_statements_stored") == accepted
    assert v("gpuaudit_collector_statements_duplicate_total") == 1
    for reason in ("seq_gap", "prev_mismatch", "equivocation"):
        assert v("gpuaudit_collector_statements_refused_total", reason=reason) == 1, reason
        assert v("gpuaudit_collector_chain_breaks_total", node=TAMPER_NODE, reason=reason) == 1, reason
    assert v("gpuaudit_collector_chain_breaks_total", node=TAMPER_NODE, reason="seq_replay") == 0
    assert sum(val for (n, _), val in m.items() if n == "gpuaudit_collector_statements_refused_total") == 3
    for reason in CHAIN_BREAK_REASONS:  # created at 0 for every known node, so increase() sees the first
        assert v("gpuaudit_collector_chain_breaks_total", node=SHADOW_NODE, reason=reason) == 0
    nodes = SITE_NODES + 2
    assert v("gpuaudit_collector_nodes_known") == nodes
    assert v("gpuaudit_collector_nodes_reporting") == nodes
    assert v("gpuaudit_collector_enrollments_total") == nodes
    assert v("gpuaudit_collector_ingest_batch_duration_seconds_count") >= 1
    assert v("gpuaudit_collector_ingest_batch_duration_seconds_sum") > 0
    assert v("gpuaudit_collector_ingest_batch_statements_sum") == accepted + 4  # + 3 refused, 1 duplicate
    assert v("gpuaudit_collector_store_size_bytes") >= 4096
    assert v("gpuaudit_collector_scrape_collector_success", collector="store") == 1

    exp = _expected(fed)
    assert set(exp["gpu_s"]) >= {DEMO_OPAQUE_TENANT, UNATTRIBUTED}
    for tenant, secs in exp["gpu_s"].items():
        got = v("gpuaudit_tenant_gpu_seconds_total", tenant=tenant)
        assert _close(got, secs), f"tenant {tenant}: {got} GPU-s exported, agents signed {secs}"
        assert _close(v("gpuaudit_tenant_energy_joules_total", tenant=tenant), exp["energy"][tenant]), tenant
        low = v("gpuaudit_tenant_flop_estimate_total", tenant=tenant, bound="low")
        high = v("gpuaudit_tenant_flop_estimate_total", tenant=tenant, bound="high")
        assert low > 0 and _close(high / low, mfu_high / mfu_low), (tenant, low, high)
    # 96 H100 (989.5 TFLOP/s dense BF16) training for 26 minutes at ~95% activity, 25% MFU: ~3.5e19.
    kestrel_low = v("gpuaudit_tenant_flop_estimate_total", tenant=DEMO_OPAQUE_TENANT, bound="low")
    assert 2e19 < kestrel_low < 5e19, kestrel_low
    assert exp["unattributed"] == {SHADOW_NODE: SHADOW_BUSY_GPUS * SHADOW_MINUTES * 60.0}
    assert v("gpuaudit_unattributed_gpu_seconds_total", node=SHADOW_NODE) == SHADOW_BUSY_GPUS * SHADOW_MINUTES * 60
    assert v("gpuaudit_tenant_gpu_seconds_total", tenant=UNATTRIBUTED) == SHADOW_BUSY_GPUS * SHADOW_MINUTES * 60
    for node, end_ms in exp["last_end"].items():
        assert v("gpuaudit_node_last_statement_end_timestamp_seconds", node=node) == end_ms / 1000, node
        assert _close(v("gpuaudit_node_energy_joules_total", node=node), exp["node_energy"][node]), node
    shadow_end = v("gpuaudit_node_last_statement_end_timestamp_seconds", node=SHADOW_NODE)
    site_end = max(exp["last_end"].values()) / 1000
    assert site_end - shadow_end >= 15 * 60, "the shadow node stopped reporting 15 minutes before the others"
    assert v("gpuaudit_node_gpus", node=SHADOW_NODE) == 8
    gpu_util = [val for (n, _), val in m.items() if n == "gpuaudit_gpu_utilization_ratio"]
    assert len(gpu_util) == SITE_NODES * 8 + 8 + 1 and all(0 <= x <= 1 for x in gpu_util)

    # -- findings ------------------------------------------------------------------------
    # The tamper node's fork (two statements with seq 1) is also recorded, as an integrity
    # finding carrying both signed statements (collector/integrity.py); it is not a detector
    # finding and has no tenant, but it is counted in the findings series like one.
    assert [f.kind for f in scraped.findings if f.tenant == ""] == ["equivocation"]
    detected = [f for f in scraped.findings if f.tenant != ""]
    assert [f.tenant for f in detected] == [DEMO_OPAQUE_TENANT]
    sev = detected[0].severity
    assert v("gpuaudit_findings", kind="large_training", severity=sev) == 1
    assert v("gpuaudit_findings_raised_total", kind="large_training", severity=sev) == 1
    assert v("gpuaudit_findings", kind="equivocation", severity="high") == 1
    assert v("gpuaudit_findings_raised_total", kind="equivocation", severity="high") == 1
    open_total = sum(val for (n, _), val in m.items() if n == "gpuaudit_findings")
    assert open_total == 2, "two findings recorded, each counted once at its current severity"
    # The detector's finding is open (its run went on to the end of the feed), named by id; the
    # feed's tenants are not pseudonyms, so the label says so rather than carrying the tenant id.
    open_findings = {labels: val for (n, labels), val in m.items() if n == "gpuaudit_finding_open"}
    assert open_findings == {
        frozenset(
            {
                "finding_id": detected[0].finding_id,
                "kind": "large_training",
                "severity": sev,
                "tenant_pseudonym": NOT_PSEUDONYMISED,
            }.items()
        ): 1
    }, open_findings
    assert DEMO_OPAQUE_TENANT not in "".join(str(k) for k in open_findings)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool absent (Debian package prometheus)")
def test_promtool_rejects_a_badly_named_counter() -> None:
    """The promtool check above can fail: it flags a counter without _total."""
    bad = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n"
    p = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "_total" in (p.stdout + p.stderr), p.stdout + p.stderr
