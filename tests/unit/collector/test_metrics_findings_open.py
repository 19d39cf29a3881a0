"""``gpuaudit_finding_open``: one series per detector finding while its run goes on, naming
the finding and its tenant's pseudonym (never a tenant's own id), gone once the run ends."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from attestation.statement import Chain, UsageWindow
from collector.detect.config import DetectConfig
from collector.detect.findings import Finding, rfc3339_ms
from collector.detect.opacity import Opacity
from collector.detect.runs import history_span_ms, run_gap_ms
from collector.metrics import NOT_PSEUDONYMISED, CollectorMetrics
from collector.store.base import FindingRecord

T0 = 1_772_000_000_000  # event time, ms
MIN = 60_000
PSEUDONYM = "tp-0123456789abcdef"


def _finding(fid: str = "f-aaaaaaaaaaaaaaaa", *, tenant: str = PSEUDONYM, severity: str = "high", **kw: Any) -> Finding:
    base = Finding(
        id=fid,
        kind="large_training",
        tenant=tenant,
        tenants=(tenant,),
        severity=severity,
        started_at_ms=T0,
        detected_at_ms=T0 + 15 * MIN,
        updated_at_ms=T0 + 15 * MIN,
        gpus=96,
        nodes=12,
        gpu_hours=24.0,
        flop_estimate=None,
        score=0.8,
        opacity=Opacity(0.9, ("beneficial owners not disclosed",)),
    )
    return dataclasses.replace(base, **kw)


def _window(node: str, end_ms: int, window_ms: int = MIN) -> UsageWindow:
    return UsageWindow(
        node_id=node,
        boot_id="b",
        agent_version="test",
        start_ms=end_ms - window_ms,
        end_ms=end_ms,
        sample_interval_ms=10_000,
        chain=Chain(key_id="k", seq=0, prev=None),
        gpus=(),
    )


def _open(m: CollectorMetrics) -> dict[str, dict[str, str]]:
    """finding id -> labels of each gpuaudit_finding_open sample, as /metrics serves them."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        if fam.name == "gpuaudit_finding_open":
            for s in fam.samples:
                assert s.value == 1, s
                out[s.labels["finding_id"]] = dict(s.labels)
    return out


def test_an_open_finding_names_its_id_kind_severity_and_pseudonym() -> None:
    m = CollectorMetrics("test")
    assert _open(m) == {}, "no series before a finding"
    m.observe_finding_open(_finding())
    assert _open(m) == {
        "f-aaaaaaaaaaaaaaaa": {
            "finding_id": "f-aaaaaaaaaaaaaaaa",
            "kind": "large_training",
            "severity": "high",
            "tenant_pseudonym": PSEUDONYM,
        }
    }


def test_a_tenant_id_that_is_not_a_pseudonym_never_becomes_a_label() -> None:
    m = CollectorMetrics("test")
    m.observe_finding_open(_finding(tenant="t-kestrel-digital"))
    assert _open(m)["f-aaaaaaaaaaaaaaaa"]["tenant_pseudonym"] == NOT_PSEUDONYMISED
    assert b"t-kestrel-digital" not in generate_latest(m.registry)


def test_an_escalated_finding_keeps_one_series_at_its_new_severity() -> None:
    m = CollectorMetrics("test")
    m.observe_finding_open(_finding())
    m.observe_finding_open(_finding(severity="critical", updated_at_ms=T0 + 40 * MIN))
    assert {fid: labels["severity"] for fid, labels in _open(m).items()} == {"f-aaaaaaaaaaaaaaaa": "critical"}
    # An older version arriving late (a write retried) does not undo the newer one.
    m.observe_finding_open(_finding(severity="high"))
    assert _open(m)["f-aaaaaaaaaaaaaaaa"]["severity"] == "critical"


def test_the_finding_stays_open_while_the_detector_updates_it_and_closes_after_the_run() -> None:
    cfg = DetectConfig()
    m = CollectorMetrics("test", detect=cfg)
    horizon = history_span_ms(cfg, MIN) + run_gap_ms(cfg, MIN) + cfg.allowed_lateness_s * 1000
    assert m.finding_open_ms() == horizon
    assert horizon > 60 * MIN - 5 * MIN, "longer than the detector takes to update a finding whose run goes on"
    f = _finding()
    m.observe_finding_open(f)
    # Three hours of a run: the detector updates the finding every history span (33 min at
    # 60 s windows) while the site's windows keep arriving. It is open all along, long after
    # the hour the old increase(...[1h]) alert looked back.
    end = f.updated_at_ms
    span = history_span_ms(cfg, MIN)
    for t in range(f.updated_at_ms, T0 + 180 * MIN, MIN):
        m.observe_window(_window("n1", t))
        if t - end >= span:
            end = t
            m.observe_finding_open(dataclasses.replace(f, updated_at_ms=end))
        assert "f-aaaaaaaaaaaaaaaa" in _open(m), f"closed at {(t - T0) // MIN} min while the run went on"
    # The run ends: no update, other tenants' windows keep arriving. Open until the horizon ...
    t = end + horizon
    m.observe_window(_window("n2", t))
    assert "f-aaaaaaaaaaaaaaaa" in _open(m)
    # ... and gone after it.
    m.observe_window(_window("n2", t + MIN))
    assert _open(m) == {}


def test_longer_windows_stretch_the_horizon() -> None:
    cfg = DetectConfig()
    m = CollectorMetrics("test", detect=cfg)
    m.observe_window(_window("n1", T0, window_ms=5 * MIN))
    assert m.finding_open_ms() == history_span_ms(cfg, 5 * MIN) + run_gap_ms(cfg, 5 * MIN) + 300_000
    assert m.finding_open_ms() > 2 * 60 * MIN


def test_a_superseded_finding_is_closed_by_the_one_that_merges_it() -> None:
    m = CollectorMetrics("test")
    m.observe_finding_open(_finding("f-1111111111111111"))
    m.observe_finding_open(_finding("f-2222222222222222", tenant="tp-fedcba9876543210"))
    merged = _finding("f-3333333333333333", evidence={"supersedes": ["f-1111111111111111", "f-2222222222222222"]})
    m.observe_finding_open(merged)
    assert sorted(_open(m)) == ["f-3333333333333333"]


class _Store:
    def __init__(self, records: list[FindingRecord], head_end_ms: int) -> None:
        self.records = records
        self.head_end_ms = head_end_ms

    def statement_count(self) -> int:
        return 1

    def keys(self) -> list[Any]:
        return [type("Key", (), {"revoked": False, "key_id": "k", "node_id": "n1"})()]

    def head(self, key_id: str) -> Any:
        return type("Head", (), {"end_ms": self.head_end_ms})()

    def findings(self) -> list[FindingRecord]:
        return self.records


def _record(f: Finding) -> FindingRecord:
    doc = f.to_json()
    doc["evidence"] = dict(doc["evidence"], last_window_end=rfc3339_ms(f.updated_at_ms))
    return FindingRecord(f.id, f.kind, f.tenant, f.severity, f.started_at_ms, f.detected_at_ms, json.dumps(doc))


def test_a_restarted_collector_reopens_the_stored_findings_whose_run_may_go_on() -> None:
    recent = _finding("f-1111111111111111", updated_at_ms=T0 + 100 * MIN)
    ended = _finding("f-2222222222222222", updated_at_ms=T0)
    merged = _finding(
        "f-3333333333333333", updated_at_ms=T0 + 100 * MIN, evidence={"supersedes": ["f-4444444444444444"]}
    )
    superseded = _finding("f-4444444444444444", updated_at_ms=T0 + 90 * MIN)
    integrity = FindingRecord("f-5555555555555555", "equivocation", "", "high", T0, T0, "{}")
    m = CollectorMetrics("test")
    known = m.load_store(
        _Store([*map(_record, (recent, ended, merged, superseded)), integrity], T0 + 110 * MIN)  # type: ignore[arg-type]
    )
    assert len(known) == 5
    assert sorted(_open(m)) == ["f-1111111111111111", "f-3333333333333333"]
