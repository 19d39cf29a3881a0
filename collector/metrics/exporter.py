"""CollectorMetrics: the registry ``/metrics`` serves, with the ingest, enrollment and store
families, and the usage (usage.py) and findings (findings.py) parts."""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from attestation.statement import UsageWindow
from collector.detect.config import DetectConfig
from collector.ingest import STORE_FAULT_REASONS, Accepted, IngestResult
from collector.integrity import IntegrityFinding
from collector.metrics.findings import FindingMetrics
from collector.metrics.labels import (
    AGENT_DROP_REASONS,
    BATCH_SECONDS_BUCKETS,
    BATCH_SIZE_BUCKETS,
    CHAIN_BREAK_REASONS,
    ENROLL_REFUSAL_REASONS,
    REFUSAL_REASONS,
)
from collector.metrics.scrape import NodesReporting, ScreeningList, StoreFiles
from collector.metrics.usage import UsageMetrics
from core.prometheus import WithoutCreated

if TYPE_CHECKING:
    from collector.detect.findings import Finding
    from collector.screening import ScreeningSource
    from collector.store.base import Store


class CollectorMetrics:
    """All collector metrics. Thread-safe: ingest runs in worker threads, scrapes in another.

    ``usage`` holds the series of every accepted statement, ``findings`` the findings'; the
    order families are registered in is the order /metrics lists them.
    """

    def __init__(
        self,
        version: str,
        nodes_horizon_s: float = 300.0,
        *,
        store_files: Sequence[Path] = (),
        mfu: tuple[float, float] = (0.25, 0.55),
        max_tenants: int = 2000,
        detect: DetectConfig | None = None,
    ) -> None:
        r = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry()  # what /metrics serves
        self.registry.register(WithoutCreated(r))
        self._registry = r
        self._lock = threading.Lock()
        self._nodes = NodesReporting(nodes_horizon_s)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("gpuaudit_collector_build", "Collector build information.", registry=r).info(
            {"version": version, "python_version": platform.python_version()}
        )
        self.accepted = Counter("gpuaudit_collector_statements_accepted", "Statements verified and stored.", registry=r)
        self.duplicates = Counter(
            "gpuaudit_collector_statements_duplicate",
            "Statements received again after being stored (acknowledged, not stored twice).",
            registry=r,
        )
        self.refused = Counter(
            "gpuaudit_collector_statements_refused",
            "Statements refused (never stored), by reason.",
            ["reason"],
            registry=r,
        )
        self.dropped_by_agents = Counter(
            "gpuaudit_collector_statements_dropped_by_agents",
            "Statements agents signed but dropped unsent (spool bounds), announced by a signed record in "
            "the next statement: explained gaps in a chain, by reason.",
            ["reason"],
            registry=r,
        )
        self.chain_breaks = Counter(
            "gpuaudit_collector_chain_breaks",
            "Refusals that show a node's chain broken (seq_gap, prev_mismatch: a statement missing) or "
            "forked (seq_replay, equivocation: two statements for one place), by node and reason.",
            ["node", "reason"],
            registry=r,
        )
        self.stored = Gauge(
            "gpuaudit_collector_statements_stored", "Statements in the store (accepted, ever).", registry=r
        )
        self.enroll_refused = Counter(
            "gpuaudit_collector_enrollments_refused", "Enrollment requests refused, by reason.", ["reason"], registry=r
        )
        self.enrolled = Counter("gpuaudit_collector_enrollments", "Node keys enrolled.", registry=r)
        self.batch_seconds = Histogram(
            "gpuaudit_collector_ingest_batch_duration_seconds",
            "Time from the start of a batch's verification until it is durably stored (a batch verified "
            "while the one before it commits waits for that commit).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gpuaudit_collector_ingest_batch_statements",
            "Statements (envelopes) per ingest batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.store_write_failing = Gauge(
            "gpuaudit_collector_store_write_failing",
            "1 while the store cannot write (a commit failed and its retry has not succeeded yet): statements "
            "are answered UNAVAILABLE and stay in the agents' spools; else 0.",
            registry=r,
        )
        self.store_write_failures = Counter(
            "gpuaudit_collector_store_write_failures",
            "Commits of ingest batches (and their retries) the store failed, by reason: locked, disk_full, "
            "io_error, connection, other (the store cannot write); conflict, rejected (it refused the batch).",
            ["reason"],
            registry=r,
        )
        self.usage = UsageMetrics(r, self._lock, self._nodes, self._node_seen, mfu=mfu, max_tenants=max_tenants)
        self.findings = FindingMetrics(r, self._lock, self.usage, detect or DetectConfig())
        self.findings_open = self.findings.findings_open  # collector/server.py counts stored findings in it
        r.register(self._nodes)
        if store_files:
            r.register(StoreFiles(store_files))
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for reason in STORE_FAULT_REASONS:
            self.store_write_failures.labels(reason)
        for reason in ENROLL_REFUSAL_REASONS:
            self.enroll_refused.labels(reason)
        for reason in (*AGENT_DROP_REASONS, "other"):
            self.dropped_by_agents.labels(reason)
        self.findings.create_series()

    # -- state ------------------------------------------------------------
    def load_store(self, store: Store) -> dict[str, str]:
        """Seed what survives a restart from the store: statements stored, each node's latest
        window end (so a node dark since before the restart still alerts), recorded findings.

        Returns finding id -> severity of the recorded findings.
        """
        self.stored.set(store.statement_count())
        latest: dict[str, int] = {}
        for key in store.keys():
            if key.revoked:  # a decommissioned node's key: it is expected to be silent
                continue
            head = store.head(key.key_id)
            if head is not None:
                latest[key.node_id] = max(latest.get(key.node_id, 0), head.end_ms)
        with self._lock:
            for node, end_ms in latest.items():
                self.usage.seed_node_end(node, end_ms)
        return self.findings.load(store.findings())

    def _node_seen(self, node: str) -> None:
        if node not in self._nodes.known:
            self._nodes.known.add(node)
            for reason in CHAIN_BREAK_REASONS:
                self.chain_breaks.labels(node, reason)

    # -- ingest -----------------------------------------------------------
    def observe_batch(self, seconds: float, statements: int) -> None:
        self.batch_seconds.observe(seconds)
        self.batch_size.observe(statements)

    def observe_results(self, results: Iterable[IngestResult], nodes: Iterable[str | None]) -> None:
        """Count one batch's results; ``nodes`` gives each result's node (the stream's), if known."""
        for res, node in zip(results, nodes, strict=True):
            if isinstance(res, Accepted):
                if res.duplicate:
                    self.duplicates.inc()
                else:
                    self.accepted.inc()
                    self.stored.inc()
                if res.gap is not None and res.window.dropped is not None:
                    reason = res.window.dropped.reason
                    self.dropped_by_agents.labels(reason if reason in AGENT_DROP_REASONS else "other").inc(
                        res.gap[1] - res.gap[0] + 1
                    )
                continue
            self.refused.labels(res.reason).inc()
            if node and res.reason in CHAIN_BREAK_REASONS:
                with self._lock:
                    self._node_seen(node)
                self.chain_breaks.labels(node, res.reason).inc()

    def observe_window(self, w: UsageWindow) -> None:
        """Usage of one newly accepted statement."""
        self.usage.observe_window(w)

    # -- findings (findings.py) -------------------------------------------
    def observe_integrity_finding(self, f: IntegrityFinding) -> None:
        """Ingest recorded integrity finding ``f`` (``Ingestor(on_finding=...)``); a finding
        recorded again (a resent statement) counts once."""
        self.findings.observe_integrity_finding(f)

    def observe_finding(self, kind: str, before: str | None, severity: str) -> None:
        """A finding was raised (``before`` None) or updated from severity ``before``."""
        self.findings.observe_finding(kind, before, severity)

    def observe_finding_open(self, f: Finding) -> None:
        """Detector finding ``f`` (raised or updated) is open, as of its ``updated_at_ms``; the
        findings it supersedes are not (``gpuaudit_finding_open``)."""
        self.findings.observe_finding_open(f)

    def observe_finding_axes(self, f: Finding) -> None:
        """Count finding ``f`` (raised or updated) by its level on each axis (``evidence.levels``)."""
        self.findings.observe_finding_axes(f)

    def open_findings(self) -> list[tuple[str, str, str, str]]:
        """(finding id, kind, severity, tenant pseudonym) of each open finding, by id."""
        return self.findings.open_findings()

    def finding_open_ms(self) -> int:
        """How long in event time a finding may go without an update and still be open."""
        return self.findings.finding_open_ms()

    def watch_screening(self, source: ScreeningSource) -> None:
        """Export the screening list's date and size (``gpuaudit_screening_list_*``)."""
        self._registry.register(ScreeningList(source))
