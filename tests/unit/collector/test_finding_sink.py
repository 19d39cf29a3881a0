"""A finding the store cannot write (full disk, lock) is kept and written later, in order.

The collector's post-commit step saves what the detector found. A write that fails there
must not lose the finding (the detector does not report an unchanged finding twice) nor
print a traceback: the sink keeps the latest version of each refused finding and writes it
before anything newer with the next batch.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.detect.findings import KIND_LARGE_TRAINING, Finding
from collector.detect.opacity import Opacity
from collector.errors import StoreError
from collector.metrics import CollectorMetrics
from collector.server import FindingSink
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core import __version__


def finding(fid: str, severity: str, detected_at_ms: int) -> Finding:
    return Finding(
        id=fid,
        kind=KIND_LARGE_TRAINING,
        tenant="t-opaque",
        tenants=("t-opaque",),
        severity=severity,
        started_at_ms=1_000,
        detected_at_ms=detected_at_ms,
        updated_at_ms=detected_at_ms,
        gpus=64,
        nodes=8,
        gpu_hours=12.0,
        flop_estimate=None,
        score=0.8,
        opacity=Opacity(1.0, ("nothing is known",)),
    )


class FailingStore:
    """The real SQLite store whose ``save_finding`` raises while ``failing`` is set."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(path)
        self.failing = False
        self.attempts = 0

    def save_finding(self, *args: Any) -> None:
        self.attempts += 1
        if self.failing:
            raise StoreError("store collector.db: disk I/O error")
        self.store.save_finding(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def sink_and_store(tmp_path: Path) -> tuple[FindingSink, FailingStore]:
    store = FailingStore(tmp_path / "collector.db")
    engine = DetectorEngine(DetectConfig(), TenantDirectory())
    sink = FindingSink(store, engine, CollectorMetrics(__version__), {})
    return sink, store


def severities(store: FailingStore) -> dict[str, str]:
    return {r.finding_id: r.severity for r in store.store.findings()}


def test_a_refused_finding_is_written_with_the_next_batch(
    sink_and_store: tuple[FindingSink, FailingStore], caplog: pytest.LogCaptureFixture
) -> None:
    sink, store = sink_and_store
    store.failing = True
    with caplog.at_level(logging.WARNING, logger="collector.server"):
        sink.save([finding("f-a", "medium", 2_000)])
        sink([])  # a batch while the store still fails: kept, no second warning
    assert severities(store) == {}
    assert sink.unsaved == 1
    refusals = [r for r in caplog.records if "cannot write finding" in r.getMessage()]
    assert len(refusals) == 1
    assert all(r.exc_info is None for r in caplog.records), "a refused write must not log a traceback"

    store.failing = False
    sink([])
    assert severities(store) == {"f-a": "medium"}
    assert sink.unsaved == 0


def test_the_latest_version_of_a_refused_finding_wins(sink_and_store: tuple[FindingSink, FailingStore]) -> None:
    sink, store = sink_and_store
    first = finding("f-a", "medium", 2_000)
    store.failing = True
    sink.save([first, finding("f-b", "low", 2_000)])
    sink.save([replace(first, severity="critical", updated_at_ms=3_000)])
    assert sink.unsaved == 2
    store.failing = False
    sink([])
    assert severities(store) == {"f-a": "critical", "f-b": "low"}


def test_a_refused_finding_is_reported_at_shutdown(
    sink_and_store: tuple[FindingSink, FailingStore], caplog: pytest.LogCaptureFixture
) -> None:
    sink, store = sink_and_store
    store.failing = True
    sink.save([finding("f-a", "high", 2_000)])
    with caplog.at_level(logging.ERROR, logger="collector.server"):
        sink.finish()
    assert any("f-a" in r.getMessage() and "at shutdown" in r.getMessage() for r in caplog.records)
