"""The collector's Prometheus metrics, on a registry of its own (no global state).

Labels are bounded: refusal reason, tenant, finding kind and severity — never a PID, a
job id or a node's sequence number (those belong in the store).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from attestation.statement import UsageWindow


class _NodesReporting(Collector):
    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self.last_seen: dict[str, float] = {}

    def collect(self):  # type: ignore[no-untyped-def]
        now = time.monotonic()
        n = sum(1 for t in self.last_seen.values() if now - t <= self.horizon_s)
        g = GaugeMetricFamily(
            "gpuaudit_collector_nodes_reporting",
            f"Nodes whose statements were accepted in the last {int(self.horizon_s)} s.",
        )
        g.add_metric([], n)
        yield g


class CollectorMetrics:
    def __init__(self, version: str, nodes_horizon_s: float = 300.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("gpuaudit_collector_build", "Collector build information.", registry=r).info({"version": version})
        self.accepted = Counter("gpuaudit_collector_statements_accepted", "Statements verified and stored.", registry=r)
        self.duplicates = Counter(
            "gpuaudit_collector_statements_duplicate",
            "Statements received again after being stored (acknowledged, not stored twice).",
            registry=r,
        )
        self.refused = Counter(
            "gpuaudit_collector_statements_refused", "Statements refused, by reason.", ["reason"], registry=r
        )
        self.enroll_refused = Counter(
            "gpuaudit_collector_enrollments_refused", "Enrollment requests refused, by reason.", ["reason"], registry=r
        )
        self.enrolled = Counter("gpuaudit_collector_enrollments", "Node keys enrolled.", registry=r)
        self.gpu_seconds = Counter(
            "gpuaudit_tenant_gpu_seconds", "GPU time attributed to each tenant (event time).", ["tenant"], registry=r
        )
        self.energy = Counter(
            "gpuaudit_tenant_energy_joules", "GPU energy attributed to each tenant.", ["tenant"], registry=r
        )
        self.findings_raised = Counter(
            "gpuaudit_findings_raised", "Findings raised, by kind and severity.", ["kind", "severity"], registry=r
        )
        self.findings_open = Gauge(
            "gpuaudit_findings", "Findings currently recorded, by kind and severity.", ["kind", "severity"], registry=r
        )
        self.batch_seconds = Gauge(
            "gpuaudit_collector_last_batch_seconds", "Time spent verifying and storing the last batch.", registry=r
        )
        self._nodes = _NodesReporting(nodes_horizon_s)
        r.register(self._nodes)

    def observe_window(self, w: UsageWindow) -> None:
        self._nodes.last_seen[w.node_id] = time.monotonic()
        for g in w.gpus:
            if g.samples == 0:
                continue
            sampled_ms = g.samples * w.sample_interval_ms
            energy_j = None
            if g.energy_start_mj is not None and g.energy_end_mj is not None and g.energy_end_mj >= g.energy_start_mj:
                energy_j = (g.energy_end_mj - g.energy_start_mj) / 1000.0
            for wl in g.workloads:
                self.gpu_seconds.labels(wl.tenant).inc(wl.gpu_ms / 1000.0)
                if energy_j is not None and sampled_ms > 0:
                    # The GPU's energy in the window, in proportion to the time it was this workload's.
                    self.energy.labels(wl.tenant).inc(energy_j * min(1.0, wl.gpu_ms / sampled_ms))
