"""A commit the store fails is not a broken chain (issue 16, part 5).

When a commit fails because the store cannot write (a lock held elsewhere, a full disk), the
statements of that batch and every later statement of the same streams are neither stored
nor refused: they are answered ``Unstored`` (the stream then ends with UNAVAILABLE and the
agent resends), the failed batch is retried until it commits, and only then is anything
chain-checked again. Before, the batch after a failed one was chain-checked against a head
that lacked the failed statements: ``seq_gap`` refusals, counted as chain breaks, for
honest nodes whose every statement was stored in the end.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from attestation.dsse import Envelope
from collector.errors import StoreConflictError, StoreError
from collector.ingest import Accepted, Ingestor, IngestResult, VerifiedBatch, store_fault_reason
from collector.metrics import CollectorMetrics
from collector.service import IngestBatcher, StreamTicket, Unstored

NodeChain = Any
Enroll = Callable[..., NodeChain]
NOW_MS = 1_700_000_000_000


def _sqlite_error(cls: type[sqlite3.Error], message: str, name: str) -> sqlite3.Error:
    exc = cls(message)
    exc.sqlite_errorname = name  # set by the sqlite3 module on real errors
    return exc


class _FlakyStore:
    """The test's store, whose next ``fail`` commits raise what a locked SQLite raises."""

    def __init__(self, inner: Any, error: Callable[[], StoreError] | None = None) -> None:
        self._inner = inner
        self.fail = 0
        self.failed = 0
        self._error = error or self.locked

    @staticmethod
    def locked() -> StoreError:
        cause = _sqlite_error(sqlite3.OperationalError, "database is locked", "SQLITE_BUSY")
        try:
            raise StoreError("store test.db: cannot begin a transaction: database is locked") from cause
        except StoreError as exc:
            return exc

    def save_batch(self, *args: Any, **kwargs: Any) -> None:
        if self.fail > 0:
            self.fail -= 1
            self.failed += 1
            raise self._error()
        self._inner.save_batch(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Run:
    def __init__(self, store: Any, **batcher: Any) -> None:
        self.flaky = _FlakyStore(store)
        self.metrics = CollectorMetrics("test")
        self.committed: list[IngestResult] = []
        self.writable: list[bool] = []
        self.batcher = IngestBatcher(
            Ingestor(self.flaky, clock_ms=lambda: NOW_MS),
            self.committed.extend,
            self.metrics,
            retry_initial_s=0.05,
            retry_max_s=0.1,
            **batcher,
        )

        async def note(ok: bool) -> None:
            self.writable.append(ok)

        self.batcher.on_writable(note)

    def refused(self) -> float:
        return sum(s.value for m in self.metrics.refused.collect() for s in m.samples if s.name.endswith("_total"))

    def chain_breaks(self) -> float:
        return sum(s.value for m in self.metrics.chain_breaks.collect() for s in m.samples if s.name.endswith("_total"))

    def write_failures(self, reason: str) -> float:
        return float(self.metrics.store_write_failures.labels(reason)._value.get())

    async def until_writable(self, timeout_s: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.batcher.writable:
            assert asyncio.get_running_loop().time() < deadline, "the held batch was never committed"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)  # the health callback runs in its own task


def _submit(batcher: IngestBatcher, node: NodeChain, envs: Sequence[Envelope], ticket: StreamTicket) -> list[Any]:
    return [batcher.submit(node.key_id, e, node.node_id, ticket) for e in envs]


def test_statements_after_a_failed_commit_are_held_back_not_refused_as_a_gap(store: Any, enroll: Enroll) -> None:
    node = enroll()
    envs = node.take(8)

    async def scenario() -> _Run:
        run = _Run(store, max_batch=2)
        run.batcher.start()
        try:
            first = StreamTicket()
            assert all(
                isinstance(r, Accepted) for r in await asyncio.gather(*_submit(run.batcher, node, envs[:4], first))
            )
            # One commit fails (seq 4, 5); seq 6, 7 are verified meanwhile, in the next batch.
            run.flaky.fail = 1
            outcomes = await asyncio.gather(*_submit(run.batcher, node, envs[4:], first))
            assert all(isinstance(o, Unstored) for o in outcomes), (
                f"seq 4..7 must be answered Unstored (the agent resends them), got {outcomes}"
            )
            assert outcomes[0].reason == "locked"
            await run.until_writable()
            # The held batch was committed by its retry; the agent resends from Resume.next_seq = 6.
            assert store.next_seq(node.key_id) == 6
            again = StreamTicket()  # the agent's new stream
            resent = await asyncio.gather(*_submit(run.batcher, node, envs[6:], again))
            assert [(r.seq, r.duplicate) for r in resent] == [(6, False), (7, False)], resent
        finally:
            await run.batcher.stop()
        return run

    run = asyncio.run(scenario())
    assert store.refusals(100) == [], f"statements of an honest node were refused: {store.refusals(100)}"
    assert run.refused() == 0 and run.chain_breaks() == 0, "a refusal or chain break was counted"
    assert [r.seq for r in store.iter_statements(node.key_id)] == list(range(8))
    assert run.writable == [False, True], f"health must go NOT_SERVING and back once, got {run.writable}"
    assert run.write_failures("locked") == 1
    assert run.metrics.store_write_failing._value.get() == 0


def test_while_the_store_cannot_write_every_stream_is_answered_at_once(store: Any, enroll: Enroll) -> None:
    a, b = enroll("node-a"), enroll("node-b")
    b_first = b.take(1)

    async def scenario() -> _Run:
        run = _Run(store)
        run.batcher.start()
        try:
            run.flaky.fail = 3  # the first commit and its next two retries
            (first,) = await asyncio.gather(*_submit(run.batcher, a, a.take(1), StreamTicket()))
            assert isinstance(first, Unstored)
            assert not run.batcher.writable
            # Another node's statement, while the store cannot write: answered at once, not queued
            # behind the fault and not chain-checked.
            (other,) = await asyncio.gather(*_submit(run.batcher, b, b_first, StreamTicket()))
            assert isinstance(other, Unstored) and other.reason == "locked"
            await run.until_writable()
            assert run.flaky.failed == 3
            # Node b's agent resends on a new stream once the store writes.
            (resent,) = await asyncio.gather(*_submit(run.batcher, b, b_first, StreamTicket()))
            assert isinstance(resent, Accepted) and resent.seq == 0 and not resent.duplicate
        finally:
            await run.batcher.stop()
        return run

    run = asyncio.run(scenario())
    assert run.write_failures("locked") == 3
    assert store.next_seq(a.key_id) == 1, "the held batch of node a was not committed when the store recovered"
    assert store.refusals(100) == []
    assert run.writable == [False, True]


def test_a_batch_the_store_refuses_is_not_held_and_health_stays_serving(store: Any, enroll: Enroll) -> None:
    a, b = enroll("node-a"), enroll("node-b")

    def rejected() -> StoreError:
        cause = _sqlite_error(sqlite3.IntegrityError, "CHECK constraint failed", "SQLITE_CONSTRAINT_CHECK")
        try:
            raise StoreError("store test.db: CHECK constraint failed") from cause
        except StoreError as exc:
            return exc

    async def scenario() -> _Run:
        run = _Run(store)
        run.flaky = _FlakyStore(store, rejected)
        run.batcher = IngestBatcher(Ingestor(run.flaky, clock_ms=lambda: NOW_MS), run.committed.extend, run.metrics)
        run.batcher.start()
        try:
            run.flaky.fail = 1
            (first,) = await asyncio.gather(*_submit(run.batcher, a, a.take(1), StreamTicket()))
            assert isinstance(first, Unstored) and first.reason == "rejected"
            assert run.batcher.writable, "a batch the store refused is not a store that cannot write"
            (other,) = await asyncio.gather(*_submit(run.batcher, b, b.take(1), StreamTicket()))
            assert isinstance(other, Accepted)
        finally:
            await run.batcher.stop()
        return run

    run = asyncio.run(scenario())
    assert run.write_failures("rejected") == 1 and run.metrics.store_write_failing._value.get() == 0
    assert store.refusals(100) == []


def test_a_stream_ended_by_a_failed_commit_has_no_refusal_recorded(store: Any, enroll: Enroll) -> None:
    """The envelopes a stream sent after one that was not stored are left out of the next
    commit whole: not chain-checked, and no refusal from verification recorded either (the
    agent resends them and they are judged then, once)."""
    node = enroll()
    good = node.take(1)
    bad = Envelope(payload=good[0].payload, payload_type=good[0].payload_type, signatures=())
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
    batch = ingestor.verify_batch([(node.key_id, bad), (node.key_id, good[0])])
    assert len(batch.refusals) == 1 and batch.refused_at == [0]
    kept = batch.subset([1])
    assert kept.refusals == [] and kept.size == 1 and [v.index for v in kept.verified] == [0]
    (result,) = ingestor.commit_batch(kept)
    assert isinstance(result, Accepted) and result.seq == 0
    assert store.refusals(100) == []
    assert isinstance(batch.subset([0]).results[0], type(batch.results[0]))


def _psycopg_error(sqlstate: str | None) -> StoreError:
    psycopg = pytest.importorskip("psycopg")
    cls = psycopg.errors.lookup(sqlstate) if sqlstate else psycopg.OperationalError
    try:
        raise StoreError("store postgresql://...: failed") from cls("failed")
    except StoreError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (lambda: _sqlite_error(sqlite3.OperationalError, "database is locked", "SQLITE_BUSY"), "locked"),
        (lambda: _sqlite_error(sqlite3.OperationalError, "database or disk is full", "SQLITE_FULL"), "disk_full"),
        (lambda: _sqlite_error(sqlite3.OperationalError, "disk I/O error", "SQLITE_IOERR_WRITE"), "io_error"),
        (lambda: _sqlite_error(sqlite3.OperationalError, "readonly", "SQLITE_READONLY"), "other"),
        (lambda: _sqlite_error(sqlite3.IntegrityError, "CHECK failed", "SQLITE_CONSTRAINT_CHECK"), "rejected"),
        (lambda: None, "other"),
    ],
)
def test_store_fault_reason_of_sqlite_errors(cause: Callable[[], BaseException | None], reason: str) -> None:
    exc = StoreError("store: failed")
    exc.__cause__ = cause()
    assert store_fault_reason(exc) == reason


@pytest.mark.parametrize(
    ("sqlstate", "reason"),
    [
        ("55P03", "locked"),  # lock_not_available: lock_timeout
        ("57014", "locked"),  # query_canceled: statement_timeout
        ("40P01", "locked"),  # deadlock_detected
        ("53100", "disk_full"),
        ("58030", "io_error"),
        ("08006", "connection"),
        ("57P01", "connection"),  # admin_shutdown
        (None, "connection"),  # no answer from the server
        ("22021", "rejected"),  # character_not_in_repertoire
        ("23514", "rejected"),  # check_violation
    ],
)
def test_store_fault_reason_of_postgres_errors(sqlstate: str | None, reason: str) -> None:
    assert store_fault_reason(_psycopg_error(sqlstate)) == reason


def test_a_conflict_is_not_a_store_that_cannot_write() -> None:
    assert store_fault_reason(StoreConflictError("another writer stored it first")) == "conflict"


def test_verified_batch_subset_keeps_refusals_with_their_items() -> None:
    batch = VerifiedBatch(3, NOW_MS, [None, None, None], [], [])
    assert batch.subset([0, 2]).size == 2
