"""The findings series: findings by kind and severity and by their level on each axis, and
``gpuaudit_finding_open``, one series per detector finding whose run goes on."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from collector.detect.config import DetectConfig
from collector.detect.findings import KIND_LARGE_TRAINING, SEVERITIES, parse_rfc3339_ms
from collector.detect.runs import history_span_ms, run_gap_ms
from collector.integrity import KINDS as INTEGRITY_KINDS
from collector.integrity import SEVERITY as INTEGRITY_SEVERITY
from collector.integrity import IntegrityFinding
from collector.metrics.labels import END_USE_LEVELS, NOT_PSEUDONYMISED, OPACITY_LEVELS
from collector.metrics.scrape import OpenFindings
from collector.metrics.usage import UsageMetrics
from collector.pseudonyms import is_pseudonym

if TYPE_CHECKING:
    from collector.detect.findings import Finding
    from collector.store.records import FindingRecord

# Window length assumed for the open-finding horizon until a statement has been accepted.
_DEFAULT_WINDOW_MS = 60_000


@dataclass
class _OpenFinding:
    kind: str
    severity: str
    tenant_pseudonym: str
    updated_ms: int  # event time: the end of the last window the detector updated it at


class FindingMetrics:
    """Findings as the store records them; open findings as of ``usage``'s event time.

    ``lock`` is CollectorMetrics' lock.
    """

    def __init__(self, r: CollectorRegistry, lock: threading.Lock, usage: UsageMetrics, detect: DetectConfig) -> None:
        self._lock = lock
        self._usage = usage
        self._detect = detect
        self._open: dict[str, _OpenFinding] = {}  # finding id -> its open series
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
        r.register(OpenFindings(self.open_findings))
        self._integrity_seen: set[str] = set()  # integrity finding ids counted (or loaded)

    def create_series(self) -> None:
        """Create at 0 the series alerts take ``increase()`` of (and their gauges beside them)."""
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

    def load(self, records: Iterable[FindingRecord]) -> dict[str, str]:
        """Count the recorded findings and reopen those whose run may go on (at start).

        Returns finding id -> severity of the recorded findings.
        """
        known: dict[str, str] = {}
        superseded: set[str] = set()
        for f in records:
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
        window_ms = self._usage.window_ms or _DEFAULT_WINDOW_MS
        return history_span_ms(cfg, window_ms) + run_gap_ms(cfg, window_ms) + cfg.allowed_lateness_s * 1000

    def _prune_open(self) -> None:
        """Drop the findings not updated within ``finding_open_ms`` of event time (lock held)."""
        oldest = self._usage.newest_end_ms - self.finding_open_ms()
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
