"""SQLite backend of the collector's store: one file, WAL, ``synchronous=FULL``.

An acknowledgement means the statement is durable, so every commit is fsynced
(``synchronous=FULL``); WAL lets readers (CLIs, metrics) run beside the writer.

Schema migrations are an ordered list of SQL scripts; script *i* brings the schema to
version *i + 1*. Each is applied in its own ``BEGIN IMMEDIATE`` transaction together
with its row in ``schema_migrations``, so a failed migration leaves the previous version
intact. A database whose version is higher than the code knows is refused, never written.

One connection per store, guarded by a lock, so one ``SqliteStore`` may be shared by the
gRPC server's threads. ``":memory:"`` opens a private in-memory database (tests).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

from attestation.dsse import pae
from attestation.merkle import leaf_hash
from collector.errors import MigrationError, SchemaVersionError, StoreConflictError, StoreError
from collector.store.schema import SQLITE_MIGRATIONS as MIGRATIONS
from collector.store.shared import SqlStore
from collector.store.sql import (
    DEFAULT_MAX_REFUSAL_ROWS,
    KEY_ASSURANCES,
    MAX_NODE_ID_CHARS,
    SQLITE,
    Dialect,
    token_sha256,
)

__all__ = [
    "DEFAULT_MAX_REFUSAL_ROWS",
    "KEY_ASSURANCES",
    "MAX_NODE_ID_CHARS",
    "MIGRATIONS",
    "SqliteStore",
    "migrate",
    "schema_version",
    "split_script",
    "token_sha256",
]


_logger = logging.getLogger(__name__)

_CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)"
)


def split_script(script: str) -> list[str]:
    """Split an SQL script into complete statements (``sqlite3.complete_statement`` decides)."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            if stmt.strip(";").strip() and not _only_comments(stmt):
                out.append(stmt)
            buf = ""
    rest = buf[:-1]  # the ";" appended after the last part
    if rest.strip(" \t\n;") and not _only_comments(rest):
        raise ValueError(f"incomplete SQL statement at the end of the script: {buf.strip()[:80]!r}")
    return out


def _only_comments(stmt: str) -> bool:
    lines = [ln.strip() for ln in stmt.splitlines()]
    return all(not ln or ln.startswith("--") or ln == ";" for ln in lines)


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection, migrations: Sequence[str], now_ms: int, *, where: str = "") -> int:
    """Bring ``conn`` (autocommit mode) to ``len(migrations)``; return the resulting version.

    Raises SchemaVersionError if the database is newer than ``migrations`` and
    MigrationError (after rolling the failed step back) if a script fails.
    """
    known = len(migrations)
    current = schema_version(conn)
    if current > known:
        raise SchemaVersionError(f"database {where} has schema version {current}; this collector knows up to {known}")
    if current == known:
        return current
    conn.execute(_CREATE_MIGRATIONS_TABLE)
    for version in range(current + 1, known + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            now_at = schema_version(conn)
            if now_at > known:
                raise SchemaVersionError(
                    f"database {where} has schema version {now_at}; this collector knows up to {known}"
                )
            if now_at >= version:
                conn.execute("COMMIT")
                continue
            for stmt in split_script(migrations[version - 1]):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)", (version, now_ms))
            conn.execute("COMMIT")
        except SchemaVersionError:
            conn.execute("ROLLBACK")
            raise
        except (sqlite3.Error, ValueError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise MigrationError(f"migration to schema version {version} of {where} failed: {exc}") from exc
        _logger.info("store %s migrated to schema version %d", where, version)
    return known


class SqliteStore(SqlStore):
    """The collector's store in one SQLite file (see the module docstring)."""

    dialect: ClassVar[Dialect] = SQLITE

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_refusal_rows: int = DEFAULT_MAX_REFUSAL_ROWS,
        busy_timeout_ms: int = 10_000,
        now_ms: int | None = None,
    ) -> None:
        """Open (creating and migrating if needed) the store at ``path``.

        ``now_ms`` only stamps newly applied migrations; it defaults to the wall clock.
        """
        self._path = str(path)
        self._max_refusal_rows = max_refusal_rows
        self._lock = threading.RLock()
        memory = self._path == ":memory:"
        if not memory and not Path(self._path).parent.is_dir():
            raise StoreError(f"directory of the store {self._path} does not exist")
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not memory:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if str(mode).lower() != "wal":
                    raise StoreError(f"store {self._path}: cannot enable WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if now_ms is None:
                now_ms = time.time_ns() // 1_000_000
            migrate(conn, MIGRATIONS, now_ms, where=self._path)
            _backfill_log_leaves(conn, self._path)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn

    # ------------------------------------------------------------------
    # plumbing

    @property
    def path(self) -> str:
        return self._path

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self._path} is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any exception."""
        with self._lock:
            conn = self._c()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store {self._path}: cannot begin a transaction: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # pragma: no cover - the original error matters more
                        _logger.exception("rollback failed on store %s", self._path)
                if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
                    raise StoreConflictError(f"store {self._path}: {exc}") from exc
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"store {self._path}: {exc}") from exc
                raise

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            try:
                return list(self._c().execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"store {self._path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._c())

    # ------------------------------------------------------------------
    # what SQLite does its own way

    def _claim_leaf_indices(self, cur: Any, count: int) -> int:
        # BEGIN IMMEDIATE excludes other writers: the next index is the one after the last.
        (next_index,) = cur.execute("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM log_leaves").fetchone()
        return int(next_index)

    def _drop_payloads(self, cur: Any, keys: Sequence[tuple[str, int]], now_ms: int) -> int:
        unique = sorted(set(keys))
        cur.executemany(
            "UPDATE statements SET payload = X'', signatures = '[]', pruned_ms = ? "
            "WHERE key_id = ? AND seq = ? AND pruned_ms IS NULL",
            [(now_ms, k, q) for k, q in unique],
        )
        if cur.rowcount != len(unique):
            raise StoreConflictError(
                f"store {self._path}: {len(unique) - cur.rowcount} statement(s) were already pruned or unknown"
            )
        return len(unique)

    # One SQLite file has one collector writing it; it runs detection itself.
    concurrent_writers = False

    def try_detection_lease(self) -> bool:
        return True


def _backfill_log_leaves(conn: sqlite3.Connection, where: str) -> None:
    """Give statements stored before schema version 2 their log leaves, in commit (id) order."""
    (missing,) = conn.execute("SELECT (SELECT COUNT(*) FROM statements) - (SELECT COUNT(*) FROM log_leaves)").fetchone()
    if not missing:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT s.key_id, s.seq, s.payload, s.payload_type FROM statements s WHERE NOT EXISTS "
            "(SELECT 1 FROM log_leaves l WHERE l.key_id = s.key_id AND l.seq = s.seq) ORDER BY s.id"
        ).fetchall()
        (next_index,) = conn.execute("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM log_leaves").fetchone()
        conn.executemany(
            "INSERT INTO log_leaves (leaf_index, key_id, seq, leaf_hash) VALUES (?, ?, ?, ?)",
            [
                (next_index + i, key_id, seq, leaf_hash(pae(str(ptype), bytes(payload))))
                for i, (key_id, seq, payload, ptype) in enumerate(rows)
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _logger.info("store %s: added %d statement(s) stored before the log existed to the log", where, len(rows))
