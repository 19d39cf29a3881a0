"""Both axes of severity in the evidence report and in /metrics (bounded labels)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from collector.detect.findings import Finding
from collector.metrics import END_USE_LEVELS, OPACITY_LEVELS, CollectorMetrics
from collector.report import ReportOptions, build_report
from collector.store.base import FindingRecord

HERE = Path(__file__).resolve().parent
# Labels a gpuaudit series may carry (as tests/integration/test_metrics_golden.py).
BOUNDED = {"node", "gpu", "tenant", "reason", "kind", "severity", "level", "bound", "collector", "le"}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


eu = _load("_end_use_tests", HERE / "test_end_use.py")
rep = _load("_report_tests", HERE / "test_report.py")


def _hit_finding(tenant: str = "t-kestrel", gpus: int = 64) -> Finding:
    d = eu._dir((tenant, "Fictitia Quantum Computing Limited", "CN", "CN"), screening=eu._list())
    f: Finding = eu._finding(d, {tenant: 1.0}, gpus)
    return f


def _report(doc: dict[str, Any]) -> str:
    store = rep._site("t-kestrel", 20)
    rec = store.finding_records[0]
    store.finding_records[0] = FindingRecord(
        rec.finding_id, rec.kind, rec.tenant, doc["severity"], rec.started_ms, rec.detected_ms, json.dumps(doc)
    )
    text, _ = build_report(store, rec.finding_id, ReportOptions(), generated_ms=rep.T0 + 3_600_000, version="test")
    return str(text)


def test_report_shows_both_axes_what_set_the_severity_and_the_screening() -> None:
    f = _hit_finding()
    doc = f.to_json() | {"id": "f-0123456789abcdef", "started_at": "2026-03-02T04:00:00Z"}
    doc["evidence"]["last_window_end"] = "2026-03-02T04:20:00Z"
    html = _report(doc)
    assert "Large training run by a transparent tenant" not in html
    assert "a tenant of end-use concern" in html
    assert "What set the severity" in html and "end-use risk of <strong>t-kestrel</strong>" in html
    assert "opacity score" in html and "end-use risk (0 = nothing of concern known)" in html
    assert "<h2>End-use risk</h2>" in html
    assert "Restricted-party screening" in html and "<strong>2026-12-05</strong>" in html
    assert "Entity List (EL) - Bureau of Industry and Security" in html and "Fictitia Quantum Computing" in html
    assert "a reason to look, not a verdict" in html
    assert "country of concern" in html
    # The report still fetches nothing.
    assert not re.search(r"<script|https?://[^\"<]*\.(js|css|png)", html)


def test_report_of_an_old_finding_says_end_use_was_not_assessed() -> None:
    store = rep._site("t-kestrel", 20)
    text, _ = build_report(store, "f-0123456789abcdef", ReportOptions(), generated_ms=rep.T0, version="test")
    assert "Large training run by an opaque tenant" in text
    assert "End-use risk was not assessed" in text


def test_report_warns_when_the_list_is_old_or_absent() -> None:
    f = _hit_finding()
    doc = f.to_json() | {"id": "f-0123456789abcdef"}
    doc["end_use_risk"]["screening"]["warning"] = "screening list csl.csv is dated 2026-12-05, 30 days old"
    assert "<strong>Warning:</strong> screening list csl.csv is dated 2026-12-05, 30 days old" in _report(doc)


def _samples(m: CollectorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client import generate_latest

    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _v(m: CollectorMetrics, name: str, **labels: str) -> float | None:
    return _samples(m).get((name, frozenset(labels.items())))


def test_findings_are_counted_by_level_on_each_axis_and_move_when_updated() -> None:
    m = CollectorMetrics("test")
    for level in OPACITY_LEVELS:
        assert _v(m, "gpuaudit_findings_opacity", kind="large_training", level=level) == 0, "created at 0"
    for level in END_USE_LEVELS:
        assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level=level) == 0
    f = _hit_finding()
    m.observe_finding_axes(f)
    m.observe_finding_axes(f)  # the same finding again: counted once
    assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level="high") == 1
    assert _v(m, "gpuaudit_findings_opacity", kind="large_training", level="transparent") == 1
    assert _v(m, "gpuaudit_findings_screening_hit", kind="large_training") == 1
    cleared = dataclasses.replace(f, evidence=f.evidence | {"levels": {"opacity": "opaque", "end_use": "none"}})
    m.observe_finding_axes(cleared)
    assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level="high") == 0
    assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level="none") == 1
    assert _v(m, "gpuaudit_findings_opacity", kind="large_training", level="opaque") == 1
    assert _v(m, "gpuaudit_findings_screening_hit", kind="large_training") == 0


def test_level_labels_are_bounded_whatever_a_finding_says() -> None:
    m = CollectorMetrics("test")
    f = _hit_finding()
    m.observe_finding_axes(dataclasses.replace(f, evidence={"levels": {"opacity": "tenant-4711", "end_use": "x" * 99}}))
    m.observe_finding_axes(dataclasses.replace(f, id="f-2", evidence={}))
    samples = _samples(m)
    levels = {dict(k[1]).get("level") for k in samples if k[0].startswith("gpuaudit_findings_")} - {None}
    assert levels <= set(OPACITY_LEVELS) | set(END_USE_LEVELS), levels
    assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level="not_assessed") == 2
    for name, labels in samples:
        if name.startswith(("gpuaudit_findings", "gpuaudit_screening")):
            assert {k for k, _ in labels} <= BOUNDED, (name, labels)


def test_stored_findings_are_counted_by_level_at_start() -> None:
    f = _hit_finding()
    old = {"kind": "large_training", "evidence": {}}

    class Store:
        def statement_count(self) -> int:
            return 0

        def keys(self) -> list[Any]:
            return []

        def findings(self) -> list[FindingRecord]:
            return [
                FindingRecord(f.id, f.kind, f.tenant, f.severity, 0, 0, json.dumps(f.to_json())),
                FindingRecord("f-old", "large_training", "t", "low", 0, 0, json.dumps(old)),
            ]

    m = CollectorMetrics("test")
    m.load_store(Store())  # type: ignore[arg-type]
    assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level="high") == 1
    assert _v(m, "gpuaudit_findings_end_use", kind="large_training", level="not_assessed") == 1
    assert _v(m, "gpuaudit_findings_screening_hit", kind="large_training") == 1


def test_the_screening_lists_date_and_size_are_exported() -> None:
    m = CollectorMetrics("test")
    assert _v(m, "gpuaudit_screening_list_entries") is None, "absent without a list"
    m.watch_screening(eu._list())
    assert _v(m, "gpuaudit_screening_list_entries") == 5
    date = _v(m, "gpuaudit_screening_list_date_timestamp_seconds")
    assert date == dt.datetime(2026, 12, 5, tzinfo=dt.UTC).timestamp()
