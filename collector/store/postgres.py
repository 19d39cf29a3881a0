"""PostgreSQL backend of the collector's store, for several collectors on one database.

Same ``Store`` protocol and the same tests as ``collector.store.sqlite``; it needs the
optional ``postgres`` extra (psycopg 3), imported only when a ``postgresql://`` URL is
configured, so a SQLite collector starts without it.

Durability: a commit returns after PostgreSQL has flushed its WAL (``synchronous_commit``
is forced ``on`` for this session), so an acknowledgement means the statement survives a
crash of the database server.

Concurrency between collector processes:

- ``UNIQUE (key_id, seq)`` decides which collector stores a statement; a unique violation,
  a serialization failure or a deadlock raises ``StoreConflictError`` and the whole batch
  is rolled back, so ``collector.ingest`` re-reads the chain heads and checks the batch
  again. Chain heads only move forward (the upsert keeps the higher seq).
- Leaf indices come from a single-row counter (``log_state``) incremented in the
  transaction that inserts the statements. Its row lock is held until commit, so indices
  are handed out in commit order with no gap and no duplicate across collectors.
- Detection runs on one collector only: ``try_detection_lease`` takes a session-level
  advisory lock on a dedicated connection; the lock is released when that collector's
  connection ends (crash included), and another collector can take it over.

Migrations (``collector.store.schema``) mirror SQLite's one for one (a test fails when
SQLite has a version PostgreSQL lacks). Each is applied in its own transaction under a
transaction-level advisory lock, together with its row in ``schema_migrations``; a
database newer than the code is refused, never written.

One connection per store guarded by a lock (psycopg_pool is not required); the schema is
whatever the URL's ``search_path`` selects (``?options=-csearch_path%3Dname``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from collector.errors import MigrationError, SchemaVersionError, StoreConflictError, StoreError
from collector.store.schema import POSTGRES_MIGRATIONS as MIGRATIONS
from collector.store.shared import SqlStore
from collector.store.sql import DEFAULT_MAX_REFUSAL_ROWS, Dialect, utf8

_logger = logging.getLogger(__name__)

# Advisory lock keys. pg_advisory_lock's key space is shared by the whole database, so each
# lock is the pair (purpose, hash of the store's schema): stores in different schemas of one
# database (a staging and a production collector, parallel test workers) never block each
# other, and every collector of one store takes the same lock.
MIGRATION_LOCK = 0x67707561
DETECTION_LOCK = 0x67707562
RETENTION_LOCK = 0x67707563
_SCHEMA_KEY = "hashtext(current_schema())"

_CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)"
)


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(got[0]) if got else 0


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[str], now_ms: int, *, where: str = "") -> int:
    """Bring ``conn`` (autocommit mode) to ``len(migrations)``; return the resulting version."""
    known = len(migrations)
    current = schema_version(conn)
    if current > known:
        raise SchemaVersionError(f"database {where} has schema version {current}; this collector knows up to {known}")
    if current == known:
        return current
    for version in range(current + 1, known + 1):
        try:
            with conn.transaction():
                # Collectors starting together: one migrates, the others wait and see it done.
                conn.execute(f"SELECT pg_advisory_xact_lock(%s, {_SCHEMA_KEY})", (MIGRATION_LOCK,))
                conn.execute(_CREATE_MIGRATIONS_TABLE)
                now_at = schema_version(conn)
                if now_at > known:
                    raise SchemaVersionError(
                        f"database {where} has schema version {now_at}; this collector knows up to {known}"
                    )
                if now_at >= version:
                    continue
                conn.execute(migrations[version - 1].encode("utf-8"))
                conn.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES (%s, %s)", (version, now_ms))
        except SchemaVersionError:
            raise
        except psycopg.Error as exc:
            raise MigrationError(f"migration to schema version {version} of {where} failed: {exc}") from exc
        _logger.info("store %s migrated to schema version %d", where, version)
    return known


def _text(text: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates (SQLite's does): escape them.

    Only attacker-chosen strings (a Hello's key id, refusal messages) can contain them;
    none can equal a stored key id, so lookups are unaffected.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


POSTGRES = Dialect(
    placeholder="%s",
    collate_c=' COLLATE "C"',  # the database's collation need not be Python's string order
    least="LEAST",
    for_update=" FOR UPDATE",
    token_order="created_ms, token_sha256",
    key_order="node_id, enrolled_ms, key_id",
    head_guard=" WHERE chain_heads.seq < excluded.seq",
    insert_ignore="INSERT",
    insert_ignore_end=" ON CONFLICT DO NOTHING",
    array_params=True,
    text=_text,
    node_id_ok=lambda node_id: utf8(node_id) and "\x00" not in node_id,
)


_CONFLICTS = (pg_errors.UniqueViolation, pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


class PostgresStore(SqlStore):
    """The collector's store in a PostgreSQL database (see the module docstring)."""

    dialect: ClassVar[Dialect] = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        max_refusal_rows: int = DEFAULT_MAX_REFUSAL_ROWS,
        connect_timeout_s: int = 10,
        write_lock_timeout_ms: int = 10_000,
        now_ms: int | None = None,
    ) -> None:
        self._url = url
        self._where = redact(url)
        self._max_refusal_rows = max_refusal_rows
        self._connect_timeout_s = connect_timeout_s
        # How long a statement batch waits for a table or row lock held elsewhere before its
        # commit fails (as SQLite's busy_timeout): collector.service then holds and retries it,
        # and health says NOT_SERVING, instead of every stream waiting silently.
        self._write_lock_timeout_ms = write_lock_timeout_ms
        self._lock = threading.RLock()
        self._lease_conn: psycopg.Connection[Any] | None = None
        self._lease_lock = threading.Lock()
        conn = self._connect()
        try:
            migrate(conn, MIGRATIONS, now_ms if now_ms is not None else time.time_ns() // 1_000_000, where=self._where)
        except BaseException:
            conn.close()
            raise
        self._conn: psycopg.Connection[Any] | None = conn

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout_s)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to store {self._where}: {exc}") from exc
        conn.execute("SET synchronous_commit = on")
        return conn

    # ------------------------------------------------------------------
    # plumbing

    @property
    def path(self) -> str:
        return self._where

    def _c(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise StoreError(f"store {self._where} is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction, rolled back on any exception."""
        with self._lock:
            conn = self._c()
            try:
                with conn.transaction():
                    yield conn
            except _CONFLICTS as exc:
                raise StoreConflictError(f"store {self._where}: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"store {self._where}: {exc}") from exc

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            try:
                return list(self._c().execute(sql, params).fetchall())
            except psycopg.Error as exc:
                raise StoreError(f"store {self._where}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._lease_lock:
            if self._lease_conn is not None:
                self._lease_conn.close()
                self._lease_conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._c())

    # ------------------------------------------------------------------
    # several collectors

    concurrent_writers = True

    def try_detection_lease(self) -> bool:
        """True while this store holds the database's detection lock (taking it if free)."""
        with self._lease_lock:
            try:
                if self._lease_conn is not None and not self._lease_conn.closed:
                    self._lease_conn.execute("SELECT 1")
                    return True
                conn = self._connect()
                row = conn.execute(f"SELECT pg_try_advisory_lock(%s, {_SCHEMA_KEY})", (DETECTION_LOCK,)).fetchone()
                if row and row[0]:
                    self._lease_conn = conn
                    _logger.info("store %s: this collector now runs detection", self._where)
                    return True
                conn.close()
                return False
            except psycopg.Error as exc:
                _logger.warning("store %s: detection lease lost or unavailable: %s", self._where, exc)
                if self._lease_conn is not None:
                    self._lease_conn.close()
                    self._lease_conn = None
                return False

    # ------------------------------------------------------------------
    # what PostgreSQL does its own way

    def _begin_batch(self, cur: Any) -> None:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(self._write_lock_timeout_ms)}ms",))

    def _claim_leaf_indices(self, cur: Any, count: int) -> int:
        # The counter's row lock is held until commit: indices follow commit order.
        row = cur.execute(
            "UPDATE log_state SET size = size + %s WHERE id = 1 RETURNING size - %s", (count, count)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _drop_payloads(self, cur: Any, keys: Sequence[tuple[str, int]], now_ms: int) -> int:
        """Raises StoreConflictError (nothing changed) when one of ``keys`` is already pruned
        or unknown, so that an aggregate is never counted twice."""
        cur.execute(f"SELECT pg_advisory_xact_lock(%s, {_SCHEMA_KEY})", (RETENTION_LOCK,))
        cur.executemany(
            "UPDATE statements SET payload = '\\x'::bytea, signatures = '[]', pruned_ms = %s "
            "WHERE key_id = %s AND seq = %s AND pruned_ms IS NULL",
            [(now_ms, k, q) for k, q in keys],
        )
        (pruned,) = cur.execute(
            "SELECT COUNT(*) FROM statements WHERE pruned_ms = %s AND (key_id, seq) IN "
            "(SELECT * FROM unnest(%s::text[], %s::bigint[]))",
            (now_ms, [k for k, _ in keys], [q for _, q in keys]),
        ).fetchone() or (0,)
        if int(pruned) != len(set(keys)):
            raise StoreConflictError(
                f"store {self._where}: {len(set(keys)) - int(pruned)} statement(s) were already pruned or unknown"
            )
        return int(pruned)
