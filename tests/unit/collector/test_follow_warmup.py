"""Detection over a shared PostgreSQL store: the collector that takes the lease warms up first.

Two collectors' detection followers on one database, each on its own session, stepped by
hand: A holds the lease and detects; A's session ends (the collector died), B takes the lease,
replays the stored look-back and continues. The site and the reference (one detector that
never stopped) come from test_warmup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_warmup import CONFIG, START_MS, TENANTS, WINDOW_MS, Site, site, uninterrupted

from collector.detect.engine import DetectorEngine
from collector.detect.findings import KIND_LARGE_TRAINING
from collector.follow import DetectionFollower
from collector.metrics import CollectorMetrics
from collector.server import FindingSink
from collector.warmup import warm_up
from core import __version__
from core.sim.scenarios import DEMO_OPAQUE_TENANT

pytestmark = pytest.mark.usefixtures("postgres_url")


def _collector(store: Any) -> DetectionFollower:
    """A collector's detection on a shared store, as collector.server assembles it."""
    metrics = CollectorMetrics(__version__)
    sink = FindingSink(store, DetectorEngine(CONFIG, TENANTS), metrics, metrics.load_store(store))
    sink.detect_inline = False
    return DetectionFollower(store, sink.detect, warm_up=lambda: warm_up(store, sink, CONFIG).plan.end_leaf)


@pytest.fixture
def pg_open(postgres_url: str) -> Callable[[], Any]:
    from collector.store.postgres import PostgresStore

    opened: list[Any] = []

    def _open() -> Any:
        opened.append(PostgresStore(postgres_url))
        return opened[-1]

    yield _open
    for s in opened:
        s.close()


@pytest.mark.parametrize("die", ["before", "after"], ids=["dies-before-raising", "dies-after-raising"])
def test_the_new_leader_warms_up_and_continues(pg_open: Callable[[], Any], die: str) -> None:
    rounds = site(100, train_from=40)
    (ref,) = [f for f in uninterrupted(rounds) if f.tenant == DEMO_OPAQUE_TENANT]
    decide = (ref.detected_at_ms - START_MS) // WINDOW_MS - 1  # the round whose end raises it
    death = decide if die == "before" else decide + 20

    ingest = pg_open()  # the collectors' ingest: statements reach the log whoever detects
    feed = Site.enroll(ingest, sorted({w.node_id for ws in rounds for w in ws}))
    a_store, b_store = pg_open(), pg_open()
    a, b = _collector(a_store), _collector(b_store)
    assert a.step() == 0 and a.leader, "A takes the lease on an empty store"
    assert b.step() == 0 and not b.leader
    for k in range(death):
        feed.ingest(rounds[k], None)
        a.step()
        b.step()
    assert not b.leader
    raised = [r for r in ingest.findings() if r.kind == KIND_LARGE_TRAINING]
    assert len(raised) == (0 if die == "before" else 1)

    a_store.close()  # A dies: its session ends and the lock with it
    for _ in range(100):  # the server ends the session (and frees the lock) a moment after the close
        b.step()
        if b.leader:
            break
        time.sleep(0.02)
    assert b.leader, "B takes over"
    for k in range(death, len(rounds)):
        feed.ingest(rounds[k], None)
        b.step()

    records = [r for r in ingest.findings() if r.kind == KIND_LARGE_TRAINING]
    assert [(r.finding_id, r.started_ms, r.detected_ms) for r in records] == [
        (ref.id, ref.started_at_ms, ref.detected_at_ms)
    ], "one finding, raised when it would have been without the hand-over"
    assert records[0].detected_ms <= START_MS + (decide + 1) * WINDOW_MS
    doc = json.loads(records[0].json_text)
    assert doc["gpus"] == ref.gpus and doc["nodes"] == ref.nodes
    if raised:  # B went on recording the finding A had raised
        before = json.loads(raised[0].json_text)["evidence"]["last_window_end"]
        assert doc["evidence"]["last_window_end"] > before
        assert doc["gpu_hours"] > json.loads(raised[0].json_text)["gpu_hours"]
