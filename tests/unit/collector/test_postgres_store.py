"""PostgreSQL-only behaviour: migrations mirror SQLite's, and several collectors (stores)
writing one database concurrently lose nothing, store nothing twice and keep the log
contiguous. The shared store contract runs on both backends in test_sqlite_store.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from attestation.chain import ChainHead
from attestation.keys import Ed25519Signer
from collector.errors import SchemaVersionError, StoreConflictError
from collector.store import postgres, sqlite
from collector.store.base import StatementRecord
from collector.store.postgres import PostgresStore, redact

NOW_MS = 1_700_000_000_000


def test_postgres_has_a_migration_for_every_sqlite_migration() -> None:
    missing = list(range(len(postgres.MIGRATIONS) + 1, len(sqlite.MIGRATIONS) + 1))
    assert not missing, (
        f"SQLite has schema version(s) {missing} that collector/store/postgres.py MIGRATIONS lacks: "
        "append the equivalent PostgreSQL script(s) there, in the same order"
    )


def test_password_is_redacted_from_messages() -> None:
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def _statement(key_id: str, seq: int, digest: str = "ab" * 32) -> StatementRecord:
    return StatementRecord(key_id, seq, "node", seq * 60_000, (seq + 1) * 60_000, digest, b"{}", "t", (), NOW_MS)


def _head(key_id: str, seq: int) -> ChainHead:
    return ChainHead(key_id, seq, "ab" * 32, (seq + 1) * 60_000, "boot-1", {})


def _enroll(store: PostgresStore, node: str) -> str:
    spki = Ed25519Signer.generate().public_key().spki_der
    return store.enroll(node, store.create_token(60, NOW_MS), spki, "software", NOW_MS)


def _race(stores: list[PostgresStore], work: Callable[[int, PostgresStore], None]) -> list[BaseException]:
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(i: int, s: PostgresStore) -> None:
        barrier.wait()
        try:
            work(i, s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_same_statement_from_two_collectors_is_stored_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url, now_ms=NOW_MS) for _ in range(4)]
    try:
        key_id = _enroll(stores[0], "node-a")
        errors = _race(stores, lambda i, s: s.save_batch([_statement(key_id, 0)], [_head(key_id, 0)]))
        assert len(errors) == 3 and all(isinstance(e, StoreConflictError) for e in errors), errors
        assert stores[0].statement_count() == 1 and stores[0].log_size() == 1
    finally:
        for s in stores:
            s.close()


def test_concurrent_batches_get_contiguous_leaf_indices(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url, now_ms=NOW_MS) for _ in range(4)]
    try:
        keys = [_enroll(stores[0], f"node-{i}") for i in range(4)]

        def work(i: int, s: PostgresStore) -> None:
            for seq in range(0, 60, 3):
                s.save_batch([_statement(keys[i], q) for q in range(seq, seq + 3)], [_head(keys[i], seq + 2)])

        assert _race(stores, work) == []
        leaves = stores[0].log_leaves()
        assert [lf.index for lf in leaves] == list(range(240)), "leaf indices must be 0..n-1, no gap, no repeat"
        assert len({(lf.key_id, lf.seq) for lf in leaves}) == 240
        for k in keys:  # each chain's leaves in seq order: commit order is index order
            assert [lf.seq for lf in leaves if lf.key_id == k] == list(range(60))
            assert stores[0].next_seq(k) == 60
    finally:
        for s in stores:
            s.close()


def test_chain_head_never_moves_back(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as s:
        key_id = _enroll(s, "node-a")
        s.save_batch([_statement(key_id, 0), _statement(key_id, 1)], [_head(key_id, 1)])
        s.save_batch([], [_head(key_id, 0)])  # a stale writer
        assert s.next_seq(key_id) == 2


def test_one_collector_holds_the_detection_lease(postgres_url: str) -> None:
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        assert a.try_detection_lease()
        assert not b.try_detection_lease(), "a second collector must not detect while the first does"
        assert a.try_detection_lease(), "the holder keeps it"
        a.close()  # the detecting collector dies: its session and lock end
        assert b.try_detection_lease(), "another collector takes detection over"
    finally:
        a.close()
        b.close()


def test_newer_schema_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (len(postgres.MIGRATIONS) + 1,))
    with pytest.raises(SchemaVersionError):
        PostgresStore(postgres_url)


def test_collectors_starting_together_migrate_once(postgres_url: str) -> None:
    opened: list[Any] = []
    errors = _race(
        [None] * 4,  # type: ignore[list-item]
        lambda i, _: opened.append(PostgresStore(postgres_url, now_ms=NOW_MS)),
    )
    for s in opened:
        s.close()
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, len(postgres.MIGRATIONS) + 1))
