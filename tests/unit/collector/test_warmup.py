"""Warm start: a restarted collector's detector replays the stored look-back and continues.

A small site (inference nodes from the start, an opaque tenant's synchronised training job on
12 nodes starting later) is signed, ingested and detected window by window, as a collector
does inline; the collector is then restarted on the same store (a fresh detector and sink,
``collector.warmup.warm_up`` as start-up runs it) and the rest of the site is fed. Every
outcome is compared with one detector that saw the whole site without a restart. Each test
runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, UsageWindow, statement_bytes
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine, history_span_ms
from collector.detect.findings import KIND_LARGE_TRAINING, Finding
from collector.ingest import Ingestor
from collector.metrics import CollectorMetrics
from collector.retention import age_statements
from collector.server import FindingSink
from collector.tenants import TenantDirectory
from collector.warmup import lookback_ms, plan, warm_up
from core import __version__
from core.pipeline import windows_from_records
from core.sim.scenarios import DEMO_OPAQUE_TENANT, DEMO_START_S, InferenceFleet, TrainingJob, site_records
from core.trace import parse_lines

WINDOW_MS = 60_000
START_MS = DEMO_START_S * 1000
CONFIG = DetectConfig()
TENANTS = TenantDirectory.from_toml(
    f"""
[[tenant]]
id = "{DEMO_OPAQUE_TENANT}"
country = "MY"
beneficial_owners_disclosed = false
nominee_directors = true
kyc_level = "basic"
"""
)


def site(
    minutes: int, train_from: int, train_to: int | None = None, *, accounts: int = 1, train_nodes: int = 12
) -> list[list[UsageWindow]]:
    """Windows per minute (every node's window k, nodes in order): 4 inference nodes all along,
    ``train_nodes`` nodes of the opaque tenant's job from minute ``train_from`` to ``train_to``,
    their leases split round-robin over ``accounts`` accounts."""
    rng = random.Random(5)
    end_s = DEMO_START_S + minutes * 60.0
    job_end = end_s + 3600.0 if train_to is None else DEMO_START_S + train_to * 60.0
    names = [f"tr-n{i:04d}" for i in range(train_nodes)]
    job = TrainingJob(rng, names, DEMO_OPAQUE_TENANT, DEMO_START_S + train_from * 60.0, job_end)
    infer = InferenceFleet(rng, [f"inf-n{i:04d}" for i in range(4)], ("t-acme-search", "t-lumen-health"))
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})]
    lines += [json.dumps(r) for r in site_records([job, infer], float(DEMO_START_S), end_s, 20.0)]
    by_minute: dict[int, list[UsageWindow]] = {}
    for w in windows_from_records(parse_lines(lines)):
        if accounts > 1 and w.node_id in names:
            acct = f"{DEMO_OPAQUE_TENANT}-{names.index(w.node_id) % accounts}"
            w = _relabel(w, acct)
        by_minute.setdefault((w.start_ms - START_MS) // WINDOW_MS, []).append(w)
    return [sorted(by_minute[k], key=lambda w: w.node_id) for k in sorted(by_minute)]


def _relabel(w: UsageWindow, tenant: str) -> UsageWindow:
    gpus = tuple(
        msgspec.structs.replace(g, workloads=tuple(msgspec.structs.replace(x, tenant=tenant) for x in g.workloads))
        for g in w.gpus
    )
    return msgspec.structs.replace(w, gpus=gpus)


def uninterrupted(rounds: list[list[UsageWindow]]) -> list[Finding]:
    """What one detector that never restarted found, in its latest state at the end of input."""
    eng = DetectorEngine(CONFIG, TENANTS)
    for ws in rounds:
        for w in ws:
            eng.observe(w)
    eng.finish()
    return eng.findings()


@dataclass
class Site:
    """The nodes of a site streaming to a collector: one key and one chain per node."""

    store: Any
    signers: dict[str, Ed25519Signer]
    prev: dict[str, str | None]
    seq: dict[str, int]

    @classmethod
    def enroll(cls, store: Any, nodes: list[str]) -> Site:
        signers = {n: Ed25519Signer.generate() for n in nodes}
        for n, s in signers.items():
            store.enroll(n, store.create_token(3600, START_MS), s.public_key().spki_der, "software", START_MS)
        return cls(store, signers, dict.fromkeys(nodes), dict.fromkeys(nodes, 0))

    def ingest(self, windows: list[UsageWindow], sink: FindingSink | None) -> None:
        """Sign, verify and store one round (received when the windows end), then detect.
        ``sink`` None: stored by a collector that died before its detector saw them."""
        items = []
        for w in windows:
            signer = self.signers[w.node_id]
            w = msgspec.structs.replace(w, chain=Chain(signer.key_id, self.seq[w.node_id], self.prev[w.node_id]))
            env = dsse.sign(statement_bytes(w), signer)
            self.seq[w.node_id] += 1
            self.prev[w.node_id] = env.digest()
            items.append((signer.key_id, env))
        now = max(w.end_ms for w in windows) + 2000
        results = Ingestor(self.store, clock_ms=lambda: now).ingest_batch(items)
        if sink is not None:
            sink(results)


def start(store: Any) -> tuple[FindingSink, CollectorMetrics]:
    """What collector start-up does with a single store: known findings, sink, warm start."""
    metrics = CollectorMetrics(__version__)
    sink = FindingSink(store, DetectorEngine(CONFIG, TENANTS), metrics, metrics.load_store(store))
    warm_up(store, sink, CONFIG)
    return sink, metrics


def stored(store: Any) -> list[dict[str, Any]]:
    return [json.loads(f.json_text) for f in store.findings() if f.kind == KIND_LARGE_TRAINING]


def run_with_restart(
    open_store: Callable[..., Any], rounds: list[list[UsageWindow]], restart_at: int, *, lost: int = 0
) -> tuple[Any, FindingSink]:
    """Feed ``rounds`` to a collector restarted before round ``restart_at``; the ``lost`` rounds
    before it were stored but not detected (the collector died between commit and detection)."""
    store = open_store()
    nodes = sorted({w.node_id for ws in rounds for w in ws})
    feed = Site.enroll(store, nodes)
    sink, _ = start(store)
    for k in range(restart_at):
        feed.ingest(rounds[k], sink if k < restart_at - lost else None)
    store.close()
    store = open_store()  # the restarted collector
    feed.store = store
    sink, _ = start(store)
    for k in range(restart_at, len(rounds)):
        feed.ingest(rounds[k], sink)
    return store, sink


@pytest.fixture(scope="module")
def steady() -> list[list[UsageWindow]]:
    return site(100, train_from=40)


def _detected_at(found: list[Finding]) -> int:
    (f,) = [f for f in found if f.tenant.startswith(DEMO_OPAQUE_TENANT)]
    return f.detected_at_ms


def test_lookback_follows_the_detector_history_not_a_constant() -> None:
    base = lookback_ms(CONFIG, WINDOW_MS)
    # 63 windows of history (60 of a link test's series across windows + 3 link
    # confirmations), a run's gap of 1,200 s, 300 s of lateness.
    assert base == 63 * WINDOW_MS + 1_200_000 + 300_000
    longer = DetectConfig(link_coarse_history_windows=80)
    assert lookback_ms(longer, WINDOW_MS) == base + 20 * WINDOW_MS
    assert lookback_ms(DetectConfig(coupling_history_windows=50), WINDOW_MS) == base, "the longest history decides"
    slow = DetectConfig(min_duration_s=7200)
    assert lookback_ms(slow, WINDOW_MS) == 7200_000 + WINDOW_MS + 1_200_000 + 300_000
    assert lookback_ms(DetectConfig(run_gap_s=600), WINDOW_MS) == base - 600_000
    assert lookback_ms(CONFIG, 30_000) < base, "shorter windows, shorter look-back"


def test_a_run_about_to_be_raised_at_a_restart_is_raised_in_the_first_window_after_it(
    open_store: Callable[..., Any],
) -> None:
    late = site(140, train_from=100)  # the run starts after more than a look-back of history
    expected = _detected_at(uninterrupted(late))
    restart_at = (expected - START_MS) // WINDOW_MS - 1  # every window before the deciding one is stored
    restart_end_ms = START_MS + restart_at * WINDOW_MS
    assert restart_at * WINDOW_MS > lookback_ms(CONFIG, WINDOW_MS), "the store holds more than the look-back"
    store, _ = run_with_restart(open_store, late, restart_at)
    (f,) = stored(store)
    got = [r.detected_ms for r in store.findings() if r.kind == KIND_LARGE_TRAINING][0]
    assert got <= restart_end_ms + WINDOW_MS, "raised in the first window after the restart"
    assert got == expected, "as without the restart"
    assert f["tenant"] == DEMO_OPAQUE_TENANT and f["gpus"] == 96 and f["nodes"] == 12


def test_without_the_warm_start_the_same_run_would_be_raised_only_after_a_rebuilt_history(
    steady: list[list[UsageWindow]],
) -> None:
    # The counterfactual the warm start removes: a detector starting empty at the restart.
    expected = _detected_at(uninterrupted(steady))
    restart_at = (expected - START_MS) // WINDOW_MS - 1
    cold = uninterrupted(steady[restart_at:])
    assert _detected_at(cold) >= START_MS + restart_at * WINDOW_MS + CONFIG.min_duration_s * 1000


def test_a_finding_stored_but_not_raised_before_a_crash_is_raised_by_the_replay(
    open_store: Callable[..., Any], steady: list[list[UsageWindow]]
) -> None:
    expected = _detected_at(uninterrupted(steady))
    restart_at = (expected - START_MS) // WINDOW_MS + 3
    store, _ = run_with_restart(open_store, steady, restart_at, lost=5)
    assert [r.detected_ms for r in store.findings() if r.kind == KIND_LARGE_TRAINING] == [expected]


def test_an_open_finding_is_continued_after_a_restart_not_raised_again(
    open_store: Callable[..., Any], steady: list[list[UsageWindow]]
) -> None:
    (ref,) = [f for f in uninterrupted(steady) if f.tenant == DEMO_OPAQUE_TENANT]
    store, sink = run_with_restart(open_store, steady, restart_at=85)
    sink.finish()  # the end of input: the run's latest state is recorded
    records = [r for r in store.findings() if r.kind == KIND_LARGE_TRAINING]
    assert len(records) == 1, f"one run, one finding: {[json.loads(r.json_text)['id'] for r in records]}"
    (f,) = stored(store)
    assert (f["id"], records[0].started_ms, records[0].detected_ms) == (ref.id, ref.started_at_ms, ref.detected_at_ms)
    assert (f["gpus"], f["nodes"], f["severity"]) == (ref.gpus, ref.nodes, ref.severity)
    assert f["gpu_hours"] == pytest.approx(ref.gpu_hours, rel=0.03), "GPU-hours go on from the stored ones"
    assert f["flop_estimate"][0] == pytest.approx(ref.flop_estimate[0], rel=0.03)  # type: ignore[index]
    assert f["evidence"]["windows_counted"] == ref.evidence["windows_counted"], "no window counted twice"
    assert f["evidence"]["last_window_end"] == ref.evidence["last_window_end"]


def test_a_run_that_ended_before_the_restart_is_not_raised_again(open_store: Callable[..., Any]) -> None:
    rounds = site(160, train_from=30, train_to=144)
    (ref,) = [f for f in uninterrupted(rounds) if f.tenant == DEMO_OPAQUE_TENANT]
    # The look-back (88 min before minute 148) holds the run's last 84 windows: replayed alone
    # they would make a run long enough to raise.
    assert 148 * WINDOW_MS - lookback_ms(CONFIG, WINDOW_MS) > 30 * WINDOW_MS, "the run began before the look-back"
    store, _ = run_with_restart(open_store, rounds, restart_at=148)
    records = [r for r in store.findings() if r.kind == KIND_LARGE_TRAINING]
    assert [(r.finding_id, r.detected_ms) for r in records] == [(ref.id, ref.detected_at_ms)]


@pytest.mark.parametrize(("accounts", "train_nodes"), [(3, 12), (2, 20)], ids=["small-accounts", "large-accounts"])
def test_linked_accounts_of_one_job_stay_one_finding_across_a_restart(
    open_store: Callable[..., Any], accounts: int, train_nodes: int
) -> None:
    # Small accounts (32 GPUs each) are a run only together; large ones (80 GPUs) each alone
    # would be one, before the replay has linked them again.
    rounds = site(130, train_from=30, accounts=accounts, train_nodes=train_nodes)
    refs = [f for f in uninterrupted(rounds) if f.tenant.startswith(DEMO_OPAQUE_TENANT)]
    assert len(refs) == 1 and len(refs[0].tenants) == accounts, "the scenario links the accounts"
    assert 125 * WINDOW_MS - lookback_ms(CONFIG, WINDOW_MS) > 30 * WINDOW_MS, "the replay starts after the link"
    store, _ = run_with_restart(open_store, rounds, restart_at=125)
    records = [r for r in store.findings() if r.kind == KIND_LARGE_TRAINING]
    assert [r.finding_id for r in records] == [refs[0].id], [json.loads(r.json_text)["tenants"] for r in records]
    assert json.loads(records[0].json_text)["tenants"] == list(refs[0].tenants)


def test_warm_start_on_an_empty_store_then_detects_as_usual(
    open_store: Callable[..., Any], steady: list[list[UsageWindow]]
) -> None:
    store = open_store()
    metrics = CollectorMetrics(__version__)
    sink = FindingSink(store, DetectorEngine(CONFIG, TENANTS), metrics, metrics.load_store(store))
    report = warm_up(store, sink, CONFIG)
    assert (report.windows, report.plan.end_leaf, report.continued) == (0, 0, 0)
    feed = Site.enroll(store, sorted({w.node_id for ws in steady for w in ws}))
    for ws in steady[:60]:
        feed.ingest(ws, sink)
    assert [r.detected_ms for r in store.findings()] == [_detected_at(uninterrupted(steady))]


def test_warm_start_skips_payloads_aged_into_aggregates(
    open_store: Callable[..., Any], steady: list[list[UsageWindow]]
) -> None:
    store = open_store()
    feed = Site.enroll(store, sorted({w.node_id for ws in steady for w in ws}))
    sink, _ = start(store)
    for ws in steady[:70]:
        feed.ingest(ws, sink)
    before = [(r.finding_id, r.detected_ms, r.json_text) for r in store.findings()]
    assert len(before) == 1
    # Retention ages everything but the last 20 minutes: the look-back is only partly there.
    age_statements(store, START_MS + 50 * WINDOW_MS, START_MS + 71 * WINDOW_MS, chunk=200)
    sink, _ = start(store)
    report = plan(store, CONFIG)
    assert report.start_leaf > 0
    after = [(r.finding_id, r.detected_ms) for r in store.findings()]
    assert after == [(i, d) for i, d, _ in before], "the stored finding is kept, not raised again"
    for ws in steady[70:]:
        feed.ingest(ws, sink)
    assert [r.finding_id for r in store.findings()] == [before[0][0]]
    # Everything aged: nothing to replay, nothing breaks.
    age_statements(store, START_MS + 101 * WINDOW_MS, START_MS + 102 * WINDOW_MS, chunk=500)
    metrics = CollectorMetrics(__version__)
    sink = FindingSink(store, DetectorEngine(CONFIG, TENANTS), metrics, metrics.load_store(store))
    empty = warm_up(store, sink, CONFIG)
    assert empty.windows == 0 and empty.plan.start_leaf == empty.plan.end_leaf == store.log_size()


class _CountingStore:
    """A store that counts the statements ``log_statements`` returns."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def log_statements(self, start: int, end: int | None = None) -> Any:
        rows = self.inner.log_statements(start, end)
        self.read += len(rows)
        return rows


def test_the_start_leaf_is_found_without_reading_the_whole_log(open_store: Callable[..., Any]) -> None:
    rounds = site(330, train_from=40)  # five and a half hours, received as they end
    store = open_store()
    feed = Site.enroll(store, sorted({w.node_id for ws in rounds for w in ws}))
    for ws in rounds:
        feed.ingest(ws, None)
    counting = _CountingStore(store)
    metrics = CollectorMetrics(__version__)
    sink = FindingSink(store, DetectorEngine(CONFIG, TENANTS), metrics, {})
    report = warm_up(counting, sink, CONFIG)
    p = report.plan
    nodes = len(rounds[0])
    newest_end = max(w.end_ms for w in rounds[-1])
    assert p.since_ms <= newest_end - lookback_ms(CONFIG, WINDOW_MS), "the whole look-back is replayed"
    assert report.windows == sum(1 for ws in rounds for w in ws if w.end_ms > p.since_ms)
    assert all(rec.end_ms <= p.since_ms for _, rec in store.log_statements(0, p.start_leaf)), (
        "no window of the look-back lies before the start leaf"
    )
    # Reads: the newest 500 leaves, one leaf per step of the search, then the replay (with the
    # lateness margin's worth of older windows): a small part of the log.
    margin = (CONFIG.allowed_lateness_s * 1000 // WINDOW_MS + 1) * nodes
    assert counting.read <= 500 + 13 + report.windows + margin, counting.read
    assert counting.read < store.log_size() / 2, (counting.read, store.log_size())


def test_a_finding_of_a_run_still_going_is_recorded_at_least_once_per_history_span() -> None:
    rounds = site(200, train_from=5)
    eng = DetectorEngine(CONFIG, TENANTS)
    emitted: list[Finding] = []
    for ws in rounds:
        for w in ws:
            emitted.extend(f for f in eng.observe(w) if f.tenant == DEMO_OPAQUE_TENANT)
    ends = [f.updated_at_ms for f in emitted]
    span = history_span_ms(CONFIG, WINDOW_MS)
    assert ends and all(b - a <= span for a, b in zip(ends, ends[1:], strict=False)), [
        (b - a) // WINDOW_MS for a, b in zip(ends, ends[1:], strict=False)
    ]
    last_window_end = max(w.end_ms for w in rounds[-1])
    assert last_window_end - ends[-1] <= span + CONFIG.allowed_lateness_s * 1000


def test_a_stored_finding_that_is_not_large_training_or_unreadable_is_left_alone(
    open_store: Callable[..., Any], steady: list[list[UsageWindow]]
) -> None:
    store = open_store()
    store.save_finding("f-broken", KIND_LARGE_TRAINING, "t-x", "low", START_MS, START_MS, "{not json")
    store.save_finding("i-1", "equivocation", "node-x", "high", START_MS, START_MS, "{}")
    feed = Site.enroll(store, sorted({w.node_id for ws in steady for w in ws}))
    for ws in steady[:10]:
        feed.ingest(ws, None)
    metrics = CollectorMetrics(__version__)
    sink = FindingSink(store, DetectorEngine(CONFIG, TENANTS), metrics, metrics.load_store(store))
    report = warm_up(store, sink, CONFIG)
    assert report.windows == 10 * len(steady[0]) and report.continued == 0
    assert {r.finding_id for r in store.findings()} == {"f-broken", "i-1"}
