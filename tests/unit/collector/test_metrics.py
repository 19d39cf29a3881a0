"""CollectorMetrics: state reloaded from the store on restart, findings by severity,
chain breaks by node, bounded tenant labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from prometheus_client import generate_latest

from collector.ingest import Ingestor
from collector.metrics import OTHER_TENANTS, CollectorMetrics
from collector.store.sqlite import SqliteStore

NOW_MS = 1_700_000_000_000  # the store fixture's clock (conftest.py)


def value(m: CollectorMetrics, name: str, **labels: str) -> float | None:
    for fam in m.registry.collect():
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_restart_reloads_stored_statements_node_times_and_findings(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., Any]
) -> None:
    a, b = enroll("node-a"), enroll("node-b")
    results = ingestor.ingest_batch([(a.key_id, e) for e in a.take(3)] + [(b.key_id, e) for e in b.take(1)])
    assert all(r.accepted for r in results)
    store.revoke_key(b.key_id, NOW_MS)
    store.save_finding("f-1", "large_training", "t-1", "high", NOW_MS, NOW_MS, "{}")
    m = CollectorMetrics("test")
    known = m.load_store(store)
    assert known == {"f-1": "high"}
    assert value(m, "gpuaudit_collector_statements_stored") == 4
    assert value(m, "gpuaudit_node_last_statement_end_timestamp_seconds", node="node-a") == a.start_ms / 1000
    assert value(m, "gpuaudit_node_last_statement_end_timestamp_seconds", node="node-b") is None, (
        "a revoked key's node is decommissioned: it must not alert as dark forever"
    )
    assert value(m, "gpuaudit_findings", kind="large_training", severity="high") == 1
    assert value(m, "gpuaudit_collector_chain_breaks_total", node="node-a", reason="seq_gap") == 0
    assert value(m, "gpuaudit_collector_nodes_known") == 1


def test_finding_escalation_moves_the_gauge_and_counts_each_new_severity() -> None:
    m = CollectorMetrics("test")
    m.observe_finding("large_training", None, "medium")
    m.observe_finding("large_training", "medium", "medium")  # an update, same severity
    m.observe_finding("large_training", "medium", "high")
    for sev, open_, raised in (("low", 0, 0), ("medium", 0, 1), ("high", 1, 1), ("critical", 0, 0)):
        assert value(m, "gpuaudit_findings", kind="large_training", severity=sev) == open_, sev
        assert value(m, "gpuaudit_findings_raised_total", kind="large_training", severity=sev) == raised, sev


def test_chain_breaks_are_counted_by_the_streams_node(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., Any]
) -> None:
    a = enroll("node-a")
    e0 = a.next()
    a.next()  # seq 1, never sent
    e2 = a.next()
    m = CollectorMetrics("test")
    m.observe_results(ingestor.ingest_batch([(a.key_id, e0), (a.key_id, e2)]), ["node-a", "node-a"])
    assert value(m, "gpuaudit_collector_statements_accepted_total") == 1
    assert value(m, "gpuaudit_collector_statements_refused_total", reason="seq_gap") == 1
    assert value(m, "gpuaudit_collector_chain_breaks_total", node="node-a", reason="seq_gap") == 1
    assert value(m, "gpuaudit_collector_chain_breaks_total", node="node-a", reason="equivocation") == 0


def test_tenant_labels_are_bounded(new_chain: Any) -> None:

    from attestation.statement import Workload

    m = CollectorMetrics("test", max_tenants=2)
    chain = new_chain("node-a", gpus=1)
    for i in range(4):
        w = chain.window()
        g = msgspec.structs.replace(
            w.gpus[0], workloads=(Workload(f"t-{i}", "k8s_pod", "ns/p", 1, None, 1000, 60_000),)
        )
        m.observe_window(msgspec.structs.replace(w, gpus=(g,)))
        chain.accept(w, chain.sign(w))
    assert value(m, "gpuaudit_tenant_gpu_seconds_total", tenant="t-0") == 60
    assert value(m, "gpuaudit_tenant_gpu_seconds_total", tenant="t-1") == 60
    assert value(m, "gpuaudit_tenant_gpu_seconds_total", tenant=OTHER_TENANTS) == 120
    assert value(m, "gpuaudit_collector_tenant_labels_overflowed_total") == 2
    text = generate_latest(m.registry).decode()
    assert "t-3" not in text and "_created" not in text
