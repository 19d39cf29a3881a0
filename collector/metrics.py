"""The collector's Prometheus metrics, on a registry of its own (no global state).

Conventions (https://prometheus.io/docs/practices/naming/, as dcgm-exporter and
node_exporter follow them): base units in the name (``_seconds``, ``_joules``, ``_bytes``,
``_ratio``, ``_watts``), ``_total`` on every counter, ``_timestamp_seconds`` on Unix times.

Labels are bounded: ``node`` (enrolled nodes), ``gpu`` (GPU UUIDs of those nodes),
``tenant`` (at most ``max_tenants`` distinct values, the rest folded into ``"_other"``),
``reason``, ``kind``, ``severity``, ``level``, ``bound`` and ``collector`` (fixed sets). Never a PID,
a job or workload id, a key id or a sequence number: those belong in the store. The one
exception is ``finding_open``: one series per detector finding whose run goes on (a handful
on a site: each holds at least ``min_gpus`` GPUs), removed once it ends, so that an alert can
name the finding.

Series that alerts take ``increase()`` of are created at 0 before their first event
(refusal reasons, findings by severity, chain breaks per node once the node is known):
``increase()`` cannot see the step from "no series" to 1.

Series, all prefixed ``gpuaudit_``:

=============================================================  =======  ==================
collector_build_info{version,python_version}                   gauge    always 1
collector_statements_accepted_total                            counter  stored now
collector_statements_duplicate_total                           counter  already stored
collector_statements_refused_total{reason}                     counter  never stored
collector_statements_dropped_by_agents_total{reason}           counter  explained gaps
collector_chain_breaks_total{node,reason}                      counter  seq_gap, prev_mismatch,
                                                                        seq_replay, equivocation
collector_statements_stored                                    gauge    in the store
collector_enrollments_total                                    counter
collector_enrollments_refused_total{reason}                    counter
collector_ingest_batch_duration_seconds                        histo    verify until stored
collector_ingest_batch_statements                              histo    envelopes per batch
collector_nodes_reporting                                      gauge    accepted in horizon
collector_nodes_known                                          gauge    ever accepted
collector_store_size_bytes                                     gauge    database files
collector_store_write_failing                                   gauge    1: a commit failed,
                                                                        not yet retried ok
collector_store_write_failures_total{reason}                   counter  failed commits
collector_scrape_collector_success{collector}                  gauge    as node_exporter
collector_scrape_collector_duration_seconds{collector}         gauge
collector_tenant_labels_overflowed_total                       counter  tenants folded
node_last_statement_end_timestamp_seconds{node}                gauge    event time
node_last_statement_received_timestamp_seconds{node}           gauge    wall clock
node_gpus{node}                                                gauge    in latest statement
node_energy_joules_total{node}                                 counter  all GPUs, busy or idle
gpu_utilization_ratio{node,gpu}                                gauge    latest window mean
gpu_power_watts{node,gpu}                                      gauge    latest window mean
tenant_gpu_seconds_total{tenant}                               counter  event time
tenant_energy_joules_total{tenant}                             counter
tenant_flop_estimate_total{tenant,bound}                       counter  bound: low, high
tenant_flop_unavailable_gpu_seconds_total{tenant}              counter  unknown GPU model
unattributed_gpu_seconds_total{node}                           counter  no tenant
findings_raised_total{kind,severity}                           counter  first reaching severity
findings{kind,severity}                                        gauge    recorded, by current
findings_opacity{kind,level}                                   gauge    transparent,
                                                                        partly_opaque, opaque
findings_end_use{kind,level}                                   gauge    none, elevated, high,
                                                                        not_assessed
findings_screening_hit{kind}                                   gauge    a material member's
                                                                        name is on the list
finding_open{finding_id,kind,severity,tenant_pseudonym}        gauge    1 while its run goes
                                                                        on (detector findings)
screening_list_date_timestamp_seconds                          gauge    the list's date (only
                                                                        with screening_list)
screening_list_entries                                         gauge    (only with
                                                                        screening_list)
=============================================================  =======  ==================

``level`` is the finding's level on each axis (its material members' highest; the finding's
``evidence.levels``, collector/detect/build.py): a fixed set, as ``severity``.

``kind`` of the findings series: the detector's ``large_training`` and the integrity
findings ingest raises (``equivocation``, ``rollback``, ``unexplained_reboot``,
``energy_reset``; collector/integrity.py, always severity ``high``), counted as the store
records them (``Ingestor(on_finding=CollectorMetrics.observe_integrity_finding)``).

``finding_open`` (``observe_finding_open``): a detector finding is open while the detector
keeps updating it. A run that goes on is updated at least once every history span of event
time (collector/detect/runs.py, ``history_span_ms``; 33 minutes at 60 s windows), later by
at most a pause of ``run_gap_s`` and the windows' ``allowed_lateness_s``; a finding not
updated for that long, counted in event time (the newest window end accepted), has ended and
its series is removed, as is one another finding supersedes (``evidence.supersedes``). While
no statement arrives at all, event time stands still and open findings stay open
(GpuauditNodeDark says why). ``tenant_pseudonym`` is the finding's tenant as the signed
statements name it when that is a pseudonym (``tp-``, collector/pseudonyms.py); a site whose
agents name tenants by their own ids gets ``not_pseudonymised`` instead, never the id.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from attestation.statement import UNATTRIBUTED, UsageWindow
from collector.detect import flops
from collector.detect.config import DetectConfig
from collector.detect.findings import KIND_LARGE_TRAINING, SEVERITIES, parse_rfc3339_ms
from collector.detect.runs import history_span_ms, run_gap_ms
from collector.ingest import STORE_FAULT_REASONS, Accepted, IngestResult
from collector.integrity import KINDS as INTEGRITY_KINDS
from collector.integrity import SEVERITY as INTEGRITY_SEVERITY
from collector.integrity import IntegrityFinding
from collector.pseudonyms import is_pseudonym

if TYPE_CHECKING:
    from collector.detect.findings import Finding
    from collector.screening import ScreeningSource
    from collector.store.base import Store

# Every reason ingest and the service refuse a statement with (collector/ingest.py,
# collector/service.py, attestation/chain.py). Others are counted too, from their first.
REFUSAL_REASONS = (
    "unknown_key",
    "revoked_key",
    "too_large",
    "malformed_envelope",
    "bad_payload_type",
    "bad_signature",
    "bad_schema",
    "bad_predicate_type",
    "node_mismatch",
    "key_mismatch",
    "seq_gap",
    "prev_mismatch",
    "seq_replay",
    "equivocation",
    "window_overlap",
    "energy_decrease",
    "internal_error",
    "no_hello",
    "unexpected_message",
    # Streams refused by the collector's limits (collector/service.py); the agent retries later.
    "rate_limited",
    "too_many_streams",
    "hello_timeout",
    "malformed_message",
)
# Why agents drop unsent statements (attestation.statement.Dropped.reason); others count as "other".
AGENT_DROP_REASONS = ("spool_size", "spool_age")
# Refusals that mean a node's chain is broken (a statement missing) or forked (two
# different statements claim one place in it).
CHAIN_BREAK_REASONS = ("seq_gap", "prev_mismatch", "seq_replay", "equivocation")

BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

OTHER_TENANTS = "_other"
# ``tenant_pseudonym`` of a finding whose tenant the statements name by something other than a pseudonym.
NOT_PSEUDONYMISED = "not_pseudonymised"
# Window length assumed for the open-finding horizon until a statement has been accepted.
_DEFAULT_WINDOW_MS = 60_000
# The ``level`` label of the findings-by-axis gauges (collector/detect/build.py, evidence.levels).
OPACITY_LEVELS = ("transparent", "partly_opaque", "opaque")
END_USE_LEVELS = ("none", "elevated", "high", "not_assessed")


class _NodesReporting(Collector):
    """Nodes with an accepted statement in the last ``horizon_s`` (wall clock), and all known."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self.last_seen: dict[str, float] = {}
        self.known: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        n = sum(1 for t in list(self.last_seen.values()) if now - t <= self.horizon_s)
        g = GaugeMetricFamily(
            "gpuaudit_collector_nodes_reporting",
            f"Nodes whose statements were accepted in the last {int(self.horizon_s)} s (wall clock).",
            value=n,
        )
        yield g
        yield GaugeMetricFamily(
            "gpuaudit_collector_nodes_known",
            "Nodes with at least one accepted statement (in the store when the collector started, or since).",
            value=len(self.known),
        )


@dataclass
class _OpenFinding:
    kind: str
    severity: str
    tenant_pseudonym: str
    updated_ms: int  # event time: the end of the last window the detector updated it at


class _OpenFindings(Collector):
    """``gpuaudit_finding_open``: the findings ``open()`` returns (labels), read at scrape time."""

    def __init__(self, open_: Callable[[], list[tuple[str, str, str, str]]]) -> None:
        self._open = open_

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "gpuaudit_finding_open",
            "1 for each detector finding whose run goes on (updated within a history span and a run gap "
            "of event time); the series ends with the run. For alerts that name the finding.",
            labels=["finding_id", "kind", "severity", "tenant_pseudonym"],
        )
        for labels in self._open():
            g.add_metric(labels, 1.0)
        yield g


class _StoreFiles(Collector):
    """Size of the store's files on disk, with node_exporter's per-collector success and duration."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        ok = 1
        size = 0
        try:
            for p in self.paths:
                try:
                    size += os.stat(p).st_size
                except FileNotFoundError:
                    continue  # -wal / -shm exist only while the database is open in WAL mode
        except OSError:
            ok = 0
        if ok:
            yield GaugeMetricFamily(
                "gpuaudit_collector_store_size_bytes",
                "Size of the store's database files on disk (SQLite: the database, its WAL and shared memory).",
                value=size,
            )
        success = GaugeMetricFamily(
            "gpuaudit_collector_scrape_collector_success",
            "Whether a collector of this exporter succeeded in this scrape (1) or not (0).",
            labels=["collector"],
        )
        success.add_metric(["store"], ok)
        duration = GaugeMetricFamily(
            "gpuaudit_collector_scrape_collector_duration_seconds",
            "Time a collector of this exporter took in this scrape.",
            labels=["collector"],
        )
        duration.add_metric(["store"], time.perf_counter() - t0)
        yield success
        yield duration


class _ScreeningList(Collector):
    """The screening list's date and size, read at scrape time (the file may be re-read)."""

    def __init__(self, source: ScreeningSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        lst = self._source.current()
        midnight = dt.datetime.combine(lst.list_date, dt.time(), tzinfo=dt.UTC)
        yield GaugeMetricFamily(
            "gpuaudit_screening_list_date_timestamp_seconds",
            "Date of the screening list the tenants are screened against (its sources_used date or the file's "
            "modification time), as a Unix time.",
            value=midnight.timestamp(),
        )
        yield GaugeMetricFamily(
            "gpuaudit_screening_list_entries", "Entries of the screening list.", value=float(len(lst))
        )


class _WithoutCreated(Collector):
    """The inner registry's metrics without client_python's ``*_created`` samples.

    Those double the series of every counter and histogram for a timestamp Prometheus does
    not use with the text format; client_python can only drop them process-wide
    (``disable_created_metrics()``), and this module keeps no global state.
    """

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for m in self._inner.collect():
            if m.type in ("counter", "histogram", "summary"):
                m.samples = [s for s in m.samples if not s.name.endswith("_created")]
            yield m


class _Series(Collector):
    """One labelled gauge or counter whose values live in a plain dict, exported at scrape time.

    For the series ``observe_window`` writes for every GPU, node and tenant of every accepted
    statement. prometheus_client's ``Gauge.labels(...).set(v)`` costs 3-5 µs a call (label
    lookup, an observability check, a lock per child) where a dict store costs well under
    0.1 µs; with ~25 such calls per 8-GPU statement they were two thirds of observe_window's
    cost. A child is also several objects (metric, value, lock) that every full garbage
    collection walks: two per GPU of the site; a float in a dict is none. The exposition is
    the same as a Gauge's or Counter's (HELP, TYPE, one sample per label set, in the order
    label sets first appeared), less the ``_created`` samples that _WithoutCreated drops
    from every counter anyway (tests/unit/collector/test_metrics_window.py compares them).

    ``values`` maps a tuple of label values (in ``labelnames`` order) to the value. Readers
    and writers hold ``lock`` (CollectorMetrics' lock); label sets are never removed.
    """

    def __init__(
        self, kind: str, name: str, documentation: str, labelnames: Sequence[str], lock: threading.Lock
    ) -> None:
        self.kind = kind  # "gauge" or "counter"
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self._lock = lock

    def inc(self, labels: tuple[str, ...], amount: float) -> None:
        """Add ``amount`` (a counter's increment, never negative) to ``labels``' value."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")  # as Counter.inc
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family: GaugeMetricFamily | CounterMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = list(self.values.items())
        for labels, value in items:
            family.add_metric(labels, value)
        yield family


ENROLL_REFUSAL_REASONS = (
    "bad_request",
    "bad_key",
    "bad_token",
    "token_used",
    "token_expired",
    "key_exists",
    "timeout",
)


def store_paths(db: Path) -> list[Path]:
    """The files a SQLite store at ``db`` occupies."""
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


class CollectorMetrics:
    """All collector metrics. Thread-safe: ingest runs in worker threads, scrapes in another."""

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
        self.registry.register(_WithoutCreated(r))
        self._lock = threading.Lock()
        self._mfu = mfu
        self._max_tenants = max_tenants
        self._tenants: set[str] = set()
        self._last_end_ms: dict[str, int] = {}
        # Event time as the collector knows it (the newest window end accepted) and the longest
        # window seen: how long a finding may go without an update and still be open.
        self._newest_end_ms = -1
        self._window_ms = 0
        self._detect = detect or DetectConfig()
        self._open: dict[str, _OpenFinding] = {}  # finding id -> its open series
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
        self.tenant_overflow = Counter(
            "gpuaudit_collector_tenant_labels_overflowed",
            f"Tenant values counted under tenant={OTHER_TENANTS!r} because {max_tenants} distinct tenants "
            "were already labelled.",
            registry=r,
        )
        # The series observe_window writes per statement, kept in plain dicts (_Series: why).

        def series(kind: str, name: str, documentation: str, labelnames: Sequence[str]) -> _Series:
            s = _Series(kind, name, documentation, labelnames, self._lock)
            r.register(s)
            return s

        self.node_last_end = series(
            "gauge",
            "gpuaudit_node_last_statement_end_timestamp_seconds",
            "End of the latest accepted statement's window, by node (event time).",
            ["node"],
        )
        self.node_last_received = series(
            "gauge",
            "gpuaudit_node_last_statement_received_timestamp_seconds",
            "When the collector last accepted a statement from the node (wall clock).",
            ["node"],
        )
        self.node_gpus = series(
            "gauge", "gpuaudit_node_gpus", "GPUs in the node's latest accepted statement.", ["node"]
        )
        self.node_energy = series(
            "counter",
            "gpuaudit_node_energy_joules",
            "Energy of the node's GPUs (busy or idle) from their energy counters.",
            ["node"],
        )
        self.gpu_util = series(
            "gauge",
            "gpuaudit_gpu_utilization_ratio",
            "Mean GPU utilization (0-1) in the GPU's latest accepted window.",
            ["node", "gpu"],
        )
        self.gpu_power = series(
            "gauge",
            "gpuaudit_gpu_power_watts",
            "Mean GPU power draw in the GPU's latest accepted window.",
            ["node", "gpu"],
        )
        self.gpu_seconds = series(
            "counter",
            "gpuaudit_tenant_gpu_seconds",
            'GPU time attributed to each tenant (event time); tenant="unattributed": busy with no tenant.',
            ["tenant"],
        )
        self.energy = series(
            "counter",
            "gpuaudit_tenant_energy_joules",
            "GPU energy attributed to each tenant (in proportion to its share of each GPU's time).",
            ["tenant"],
        )
        self.flop = series(
            "counter",
            "gpuaudit_tenant_flop_estimate",
            "Estimated floating-point operations by tenant: peak dense BF16 of the GPU model x activity "
            "(SM active, else utilization) x GPU time x model FLOP utilization (bound=low|high).",
            ["tenant", "bound"],
        )
        self.flop_unavailable = series(
            "counter",
            "gpuaudit_tenant_flop_unavailable_gpu_seconds",
            "GPU time with no FLOP estimate (GPU model of unknown peak, or no activity reading), by tenant.",
            ["tenant"],
        )
        self.unattributed = series(
            "counter",
            "gpuaudit_unattributed_gpu_seconds",
            "Busy GPU time that no tenant rule claimed, by node.",
            ["node"],
        )
        self.findings_raised = Counter(
            "gpuaudit_findings_raised",
            "Findings that reached each severity (one raised at medium and escalated to high counts once in each).",
            ["kind", "severity"],
            registry=r,
        )
        self.findings_open = Gauge(
            "gpuaudit_findings", "Findings recorded, by kind and current severity.", ["kind", "severity"], registry=r
        )
        self.findings_opacity = Gauge(
            "gpuaudit_findings_opacity",
            "Findings recorded, by kind and the opacity level of their material members.",
            ["kind", "level"],
            registry=r,
        )
        self.findings_end_use = Gauge(
            "gpuaudit_findings_end_use",
            "Findings recorded, by kind and the end-use risk level of their material members.",
            ["kind", "level"],
            registry=r,
        )
        self.findings_screening_hit = Gauge(
            "gpuaudit_findings_screening_hit",
            "Findings recorded whose material members have a screening-list hit (a reason to look, not a verdict).",
            ["kind"],
            registry=r,
        )
        self._levels: dict[str, tuple[str, str, bool]] = {}  # finding id -> levels counted
        r.register(_OpenFindings(self.open_findings))
        self._registry = r
        self._nodes = _NodesReporting(nodes_horizon_s)
        r.register(self._nodes)
        if store_files:
            r.register(_StoreFiles(store_files))
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for reason in STORE_FAULT_REASONS:
            self.store_write_failures.labels(reason)
        for reason in ENROLL_REFUSAL_REASONS:
            self.enroll_refused.labels(reason)
        for reason in (*AGENT_DROP_REASONS, "other"):
            self.dropped_by_agents.labels(reason)
        for sev in SEVERITIES:
            self.findings_raised.labels(KIND_LARGE_TRAINING, sev)
            self.findings_open.labels(KIND_LARGE_TRAINING, sev)
        for level in OPACITY_LEVELS:
            self.findings_opacity.labels(KIND_LARGE_TRAINING, level)
        for level in END_USE_LEVELS:
            self.findings_end_use.labels(KIND_LARGE_TRAINING, level)
        self.findings_screening_hit.labels(KIND_LARGE_TRAINING)
        for kind in INTEGRITY_KINDS:
            self.findings_raised.labels(kind, INTEGRITY_SEVERITY)
            self.findings_open.labels(kind, INTEGRITY_SEVERITY)
        self._integrity_seen: set[str] = set()  # integrity finding ids counted (or loaded)

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
                self._node_seen(node)
                if end_ms > self._last_end_ms.get(node, -1):
                    self._last_end_ms[node] = end_ms
                    self.node_last_end.values[(node,)] = end_ms / 1000.0
                self._newest_end_ms = max(self._newest_end_ms, end_ms)
        known: dict[str, str] = {}
        superseded: set[str] = set()
        for f in store.findings():
            known[f.finding_id] = f.severity
            self.findings_open.labels(f.kind, f.severity).inc()
            if f.kind == KIND_LARGE_TRAINING:
                try:
                    evidence = json.loads(f.json_text).get("evidence")
                except (ValueError, AttributeError):
                    evidence = None
                if not isinstance(evidence, dict):
                    evidence = {}
                self._observe_levels(f.finding_id, f.kind, evidence.get("levels"))
                updated_ms = _updated_ms(evidence, f.detected_ms)
                with self._lock:
                    self._open[f.finding_id] = _OpenFinding(f.kind, f.severity, _pseudonym(f.tenant), updated_ms)
                superseded.update(str(s) for s in evidence.get("supersedes") or ())
            if f.kind in INTEGRITY_KINDS:
                with self._lock:
                    self._integrity_seen.add(f.finding_id)
        with self._lock:
            for fid in superseded:
                self._open.pop(fid, None)
            self._prune_open()
        return known

    def observe_integrity_finding(self, f: IntegrityFinding) -> None:
        """Ingest recorded integrity finding ``f`` (``Ingestor(on_finding=...)``); a finding
        recorded again (a resent statement) counts once."""
        with self._lock:
            if f.id in self._integrity_seen:
                return
            self._integrity_seen.add(f.id)
        self.observe_finding(f.kind, None, INTEGRITY_SEVERITY)

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
        with self._lock:
            self._observe_window(w)

    def _observe_window(self, w: UsageWindow) -> None:
        # Called for every accepted statement (1,250 a second on one core), so written for
        # speed: series values are plain dict stores (_Series), attributes used per GPU are
        # read once into locals, and counter increments are summed per statement and applied
        # once per label set. The arithmetic, and its order, is that of the plain form.
        node = w.node_id
        key = (node,)
        if node not in self._nodes.known:
            self._node_seen(node)
        self._nodes.last_seen[node] = time.monotonic()
        self.node_last_received.values[key] = time.time()
        # Statements of one key arrive in order; a node re-enrolled with a new key may not.
        end_ms = w.end_ms
        if end_ms > self._last_end_ms.get(node, -1):
            self._last_end_ms[node] = end_ms
            self.node_last_end.values[key] = end_ms / 1000.0
            if end_ms > self._newest_end_ms:
                self._newest_end_ms = end_ms
            if end_ms - w.start_ms > self._window_ms:
                self._window_ms = end_ms - w.start_ms
        self.node_gpus.values[key] = float(len(w.gpus))
        util_values = self.gpu_util.values
        power_values = self.gpu_power.values
        tenants = self._tenants
        interval_ms = w.sample_interval_ms
        node_energy: float | None = None
        unattributed: float | None = None
        overflowed = 0  # workloads whose tenant is counted as OTHER_TENANTS
        gpu_seconds: dict[str, float] = {}
        energy: dict[str, float] = {}
        flop_done: dict[str, float] = {}
        flop_unavailable: dict[str, float] = {}
        model: str | None = None
        peak: flops.GpuPeak | None = None
        for g in w.gpus:
            util = g.util_mean_permille
            power = g.power_mean_mw
            if util is not None or power is not None:
                gpu = (node, g.uuid)
                if util is not None:
                    util_values[gpu] = util / 1000.0
                if power is not None:
                    power_values[gpu] = power / 1000.0
            energy_j = None
            e_start = g.energy_start_mj
            e_end = g.energy_end_mj
            if e_start is not None and e_end is not None and e_end >= e_start:
                energy_j = (e_end - e_start) / 1000.0
                node_energy = (node_energy or 0.0) + energy_j
            if not g.samples or not g.workloads:
                continue
            sampled_ms = g.samples * interval_ms
            if sampled_ms <= 0:
                energy_j = None  # no sampled time to divide the GPU's energy by
            if g.model != model:  # a node's GPUs are usually all one model
                model = g.model
                peak = flops.lookup(model)
            sm = g.sm_active_mean_permille
            active_permille = sm if sm is not None else util
            # The GPU's FLOP/s at its activity (x its workloads' GPU time below); None: no estimate.
            rate = (
                None if peak is None or active_permille is None else peak.bf16_dense_flops * (active_permille / 1000.0)
            )
            for wl in g.workloads:
                tenant = wl.tenant
                if tenant not in tenants:
                    if len(tenants) < self._max_tenants:
                        tenants.add(tenant)
                    else:
                        tenant = OTHER_TENANTS
                        overflowed += 1
                gpu_ms = wl.gpu_ms
                gpu_s = gpu_ms / 1000.0
                gpu_seconds[tenant] = gpu_seconds.get(tenant, 0.0) + gpu_s
                if wl.tenant == UNATTRIBUTED:
                    unattributed = (unattributed or 0.0) + gpu_s
                if energy_j is not None:
                    # The GPU's energy in the window, in proportion to the time it was this
                    # workload's (at most all of it): min(1.0, x) without the call.
                    part = gpu_ms / sampled_ms
                    share = energy_j * (part if part < 1.0 else 1.0)
                    energy[tenant] = energy.get(tenant, 0.0) + share
                if rate is None:
                    flop_unavailable[tenant] = flop_unavailable.get(tenant, 0.0) + gpu_s
                else:
                    flop_done[tenant] = flop_done.get(tenant, 0.0) + rate * gpu_s
        if overflowed:
            self.tenant_overflow.inc(overflowed)
        if node_energy is not None:
            self.node_energy.inc(key, node_energy)
        if unattributed is not None:
            self.unattributed.inc(key, unattributed)
        for tenant, v in gpu_seconds.items():
            self.gpu_seconds.inc((tenant,), v)
        for tenant, v in energy.items():
            self.energy.inc((tenant,), v)
        for tenant, v in flop_unavailable.items():
            self.flop_unavailable.inc((tenant,), v)
        mfu_low, mfu_high = self._mfu
        for tenant, v in flop_done.items():
            self.flop.inc((tenant, "low"), mfu_low * v)
            self.flop.inc((tenant, "high"), mfu_high * v)

    # -- findings ---------------------------------------------------------
    def observe_finding(self, kind: str, before: str | None, severity: str) -> None:
        """A finding was raised (``before`` None) or updated from severity ``before``."""
        if before == severity:
            return
        if before is not None:
            self.findings_open.labels(kind, before).dec()
        self.findings_open.labels(kind, severity).inc()
        if before is None or _rank(severity) > _rank(before):
            self.findings_raised.labels(kind, severity).inc()

    def observe_finding_open(self, f: Finding) -> None:
        """Detector finding ``f`` (raised or updated) is open, as of its ``updated_at_ms``; the
        findings it supersedes are not (``gpuaudit_finding_open``)."""
        with self._lock:
            was = self._open.get(f.id)
            if was is None or f.updated_at_ms >= was.updated_ms:
                self._open[f.id] = _OpenFinding(f.kind, f.severity, _pseudonym(f.tenant), f.updated_at_ms)
            for fid in f.evidence.get("supersedes") or ():
                self._open.pop(str(fid), None)
            self._prune_open()

    def open_findings(self) -> list[tuple[str, str, str, str]]:
        """(finding id, kind, severity, tenant pseudonym) of each open finding, by id."""
        with self._lock:
            self._prune_open()
            return sorted((fid, o.kind, o.severity, o.tenant_pseudonym) for fid, o in self._open.items())

    def finding_open_ms(self) -> int:
        """How long in event time a finding may go without an update and still be open."""
        cfg = self._detect
        window_ms = self._window_ms or _DEFAULT_WINDOW_MS
        return history_span_ms(cfg, window_ms) + run_gap_ms(cfg, window_ms) + cfg.allowed_lateness_s * 1000

    def _prune_open(self) -> None:
        """Drop the findings not updated within ``finding_open_ms`` of event time (lock held)."""
        oldest = self._newest_end_ms - self.finding_open_ms()
        for fid in [fid for fid, o in self._open.items() if o.updated_ms < oldest]:
            del self._open[fid]

    def observe_finding_axes(self, f: Finding) -> None:
        """Count finding ``f`` (raised or updated) by its level on each axis (``evidence.levels``)."""
        self._observe_levels(f.id, f.kind, f.evidence.get("levels"))

    def _observe_levels(self, finding_id: str, kind: str, levels: object) -> None:
        if not isinstance(levels, dict):
            levels = {}  # a finding stored before the axes were: end use not assessed
        op = levels.get("opacity")
        eu = levels.get("end_use")
        now = (
            op if op in OPACITY_LEVELS else "transparent",
            eu if eu in END_USE_LEVELS else "not_assessed",
            levels.get("screening_hit") is True,
        )
        with self._lock:
            before = self._levels.get(finding_id)
            if before == now:
                return
            self._levels[finding_id] = now
        if before is not None:
            self.findings_opacity.labels(kind, before[0]).dec()
            self.findings_end_use.labels(kind, before[1]).dec()
            if before[2]:
                self.findings_screening_hit.labels(kind).dec()
        self.findings_opacity.labels(kind, now[0]).inc()
        self.findings_end_use.labels(kind, now[1]).inc()
        if now[2]:
            self.findings_screening_hit.labels(kind).inc()

    def watch_screening(self, source: ScreeningSource) -> None:
        """Export the screening list's date and size (``gpuaudit_screening_list_*``)."""
        self._registry.register(_ScreeningList(source))


def _pseudonym(tenant: str) -> str:
    """The ``tenant_pseudonym`` label of a finding of ``tenant``: never a tenant's own id."""
    return tenant if is_pseudonym(tenant) else NOT_PSEUDONYMISED


def _updated_ms(evidence: dict[str, object], detected_ms: int) -> int:
    """A stored finding's ``updated_at_ms`` (its ``evidence.last_window_end``), as collector/warmup.py reads it."""
    last = evidence.get("last_window_end")
    try:
        return parse_rfc3339_ms(last) if isinstance(last, str) else detected_ms
    except ValueError:
        return detected_ms


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1
