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

Migrations mirror ``collector.store.sqlite.MIGRATIONS`` one for one (a test fails when
SQLite has a version PostgreSQL lacks). Each is applied in its own transaction under a
transaction-level advisory lock, together with its row in ``schema_migrations``; a
database newer than the code is refused, never written.

One connection per store guarded by a lock (psycopg_pool is not required); the schema is
whatever the URL's ``search_path`` selects (``?options=-csearch_path%3Dname``).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from attestation.chain import ChainHead
from attestation.dsse import pae
from attestation.errors import KeyFileError
from attestation.keys import PublicKey, key_id_of
from attestation.merkle import leaf_hash
from collector.errors import (
    EnrollmentError,
    MigrationError,
    SchemaVersionError,
    StoreConflictError,
    StoreError,
)
from collector.store.base import (
    CheckpointRecord,
    ConflictRecord,
    FindingRecord,
    KeyHead,
    KeyRecord,
    LogLeafRecord,
    RefusalRecord,
    StatementRecord,
    TokenRecord,
    UsageAggregate,
    contiguous_tile_roots,
    heads_params,
    read_committed_heads,
    signatures_from_json,
    signatures_to_json,
)
from collector.store.sqlite import DEFAULT_MAX_REFUSAL_ROWS, KEY_ASSURANCES, MAX_NODE_ID_CHARS, token_sha256

_logger = logging.getLogger(__name__)

_PAGE_ROWS = 500
# Advisory lock keys (pg_advisory_lock's bigint space is shared by the whole database).
MIGRATION_LOCK = 0x67707561_00000001
DETECTION_LOCK = 0x67707561_00000002
RETENTION_LOCK = 0x67707561_00000003

# Script i brings the schema from version i to version i + 1, mirroring SQLite's script i.
# Append only: never edit a migration that has shipped.
MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema (sqlite 1)
    """
    CREATE TABLE join_tokens (
        token_sha256  TEXT PRIMARY KEY,
        created_ms    BIGINT NOT NULL,
        expires_ms    BIGINT NOT NULL,
        used_ms       BIGINT,
        used_by_node  TEXT
    );
    CREATE TABLE node_keys (
        key_id       TEXT PRIMARY KEY,
        node_id      TEXT NOT NULL,
        algorithm    TEXT NOT NULL,
        spki_der     BYTEA NOT NULL,
        assurance    TEXT NOT NULL,
        enrolled_ms  BIGINT NOT NULL,
        revoked_ms   BIGINT
    );
    CREATE INDEX node_keys_node ON node_keys (node_id);
    CREATE TABLE chain_heads (
        key_id         TEXT PRIMARY KEY REFERENCES node_keys (key_id),
        seq            BIGINT NOT NULL,
        digest         TEXT NOT NULL,
        end_ms         BIGINT NOT NULL,
        boot_id        TEXT NOT NULL,
        energy_end_mj  TEXT NOT NULL
    );
    CREATE TABLE statements (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id        TEXT NOT NULL REFERENCES node_keys (key_id),
        seq           BIGINT NOT NULL,
        node_id       TEXT NOT NULL,
        start_ms      BIGINT NOT NULL,
        end_ms        BIGINT NOT NULL,
        digest        TEXT NOT NULL,
        payload       BYTEA NOT NULL,
        payload_type  TEXT NOT NULL,
        signatures    TEXT NOT NULL,
        received_ms   BIGINT NOT NULL,
        UNIQUE (key_id, seq)
    );
    CREATE INDEX statements_window ON statements (start_ms);
    CREATE TABLE conflicts (
        id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id           TEXT NOT NULL,
        seq              BIGINT NOT NULL,
        original_digest  TEXT NOT NULL,
        digest           TEXT NOT NULL,
        payload          BYTEA NOT NULL,
        payload_type     TEXT NOT NULL,
        signatures       TEXT NOT NULL,
        received_ms      BIGINT NOT NULL,
        UNIQUE (key_id, seq, digest)
    );
    CREATE TABLE refusals (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms     BIGINT NOT NULL,
        node_id   TEXT,
        key_id    TEXT,
        seq       BIGINT,
        reason    TEXT NOT NULL,
        message   TEXT NOT NULL
    );
    CREATE TABLE refusal_counts (
        reason  TEXT PRIMARY KEY,
        count   BIGINT NOT NULL
    );
    CREATE TABLE findings (
        finding_id   TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        tenant       TEXT NOT NULL,
        severity     TEXT NOT NULL,
        started_ms   BIGINT NOT NULL,
        detected_ms  BIGINT NOT NULL,
        json         TEXT NOT NULL
    );
    CREATE INDEX findings_tenant ON findings (tenant, started_ms);
    """,
    # 2: the transparency log (sqlite 2), plus the single-row leaf counter that sequences
    # leaves across collectors.
    """
    CREATE TABLE log_leaves (
        leaf_index  BIGINT PRIMARY KEY,
        key_id      TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        leaf_hash   BYTEA NOT NULL,
        UNIQUE (key_id, seq),
        FOREIGN KEY (key_id, seq) REFERENCES statements (key_id, seq)
    );
    CREATE TABLE checkpoints (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tree_size   BIGINT NOT NULL,
        root_hash   BYTEA NOT NULL,
        signed_ms   BIGINT NOT NULL,
        note        TEXT NOT NULL
    );
    CREATE TABLE log_state (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        size  BIGINT NOT NULL
    );
    INSERT INTO log_state (id, size) VALUES (1, 0);
    """,
    # 3: retention (sqlite 3): statements whose payload aged into hourly aggregates.
    """
    ALTER TABLE statements ADD COLUMN pruned_ms BIGINT;
    CREATE TABLE usage_hourly (
        hour_ms           BIGINT NOT NULL,
        node_id           TEXT NOT NULL,
        gpu_uuid          TEXT NOT NULL,
        tenant            TEXT NOT NULL,
        windows           BIGINT NOT NULL,
        window_ms         BIGINT NOT NULL,
        energy_mj         BIGINT NOT NULL,
        util_permille_ms  BIGINT NOT NULL,
        PRIMARY KEY (hour_ms, gpu_uuid, tenant)
    );
    CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant, hour_ms);
    """,
    # 4: tenant pseudonyms revealed by an operator (sqlite 4).
    """
    CREATE TABLE reveal_audit (
        id          BIGSERIAL PRIMARY KEY,
        at_ms       BIGINT NOT NULL,
        pseudonym   TEXT NOT NULL,
        tenant      TEXT,
        operator    TEXT NOT NULL,
        reason      TEXT NOT NULL
    );
    """,
    # 5: roots of complete tiles of log leaves (sqlite 5).
    """
    CREATE TABLE log_tiles (
        height      BIGINT NOT NULL,            -- log2 of the leaves per tile
        tile        BIGINT NOT NULL,            -- leaves tile * 2**height .. (tile + 1) * 2**height - 1
        root        BYTEA NOT NULL,              -- RFC 9162 hash of the tile's subtree
        PRIMARY KEY (height, tile)
    );
    """,
    # 6: per-key heads committed at the latest checkpoint (sqlite 6).
    """
    CREATE TABLE log_heads (
        key_id      TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        leaf_index  BIGINT NOT NULL,
        digest      TEXT NOT NULL,
        end_ms      BIGINT NOT NULL,
        serials     TEXT NOT NULL
    );
    CREATE TABLE log_heads_state (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        tree_size   BIGINT NOT NULL
    );
    INSERT INTO log_heads_state (id, tree_size) VALUES (1, 0);
    """,
)

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
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
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


_CONFLICTS = (pg_errors.UniqueViolation, pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


class PostgresStore:
    """The collector's store in a PostgreSQL database (see the module docstring)."""

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
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (DETECTION_LOCK,)).fetchone()
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
    # enrollment

    def create_token(self, ttl_s: int, now_ms: int) -> str:
        if ttl_s <= 0:
            raise ValueError(f"token ttl must be positive, got {ttl_s} s")
        token = secrets.token_urlsafe(32)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO join_tokens (token_sha256, created_ms, expires_ms) VALUES (%s, %s, %s)",
                (token_sha256(token), now_ms, now_ms + ttl_s * 1000),
            )
        return token

    def tokens(self) -> list[TokenRecord]:
        rows = self._query(
            "SELECT token_sha256, created_ms, expires_ms, used_ms, used_by_node FROM join_tokens "
            "ORDER BY created_ms, token_sha256"
        )
        return [TokenRecord(*row) for row in rows]

    def enroll(self, node_id: str, token: str, spki_der: bytes, assurance: str, now_ms: int) -> str:
        if not node_id or len(node_id) > MAX_NODE_ID_CHARS or not _utf8(node_id) or "\x00" in node_id:
            raise EnrollmentError(f"node id {node_id!r} is empty, too long or not UTF-8", reason="bad_request")
        if assurance not in KEY_ASSURANCES:
            raise EnrollmentError(
                f"key assurance {assurance!r} is not one of {', '.join(KEY_ASSURANCES)}", reason="bad_request"
            )
        try:
            public = PublicKey.from_spki(spki_der)
        except KeyFileError as exc:
            raise EnrollmentError(f"public key refused: {exc}", reason="bad_key") from exc
        key_id = key_id_of(spki_der)
        digest = token_sha256(token)
        with self._tx() as conn:
            # FOR UPDATE: a second collector enrolling with the same token waits, then sees it used.
            row = conn.execute(
                "SELECT expires_ms, used_ms, used_by_node FROM join_tokens WHERE token_sha256 = %s FOR UPDATE",
                (digest,),
            ).fetchone()
            if row is None:
                raise EnrollmentError("join token is not known to this collector", reason="bad_token")
            expires_ms, used_ms, used_by = row
            if used_ms is not None:
                same = conn.execute(
                    "SELECT 1 FROM node_keys WHERE key_id = %s AND node_id = %s", (key_id, node_id)
                ).fetchone()
                if used_by == node_id and same is not None:
                    return key_id  # the same node retrying: idempotent
                raise EnrollmentError(f"join token was already used (by node {used_by!r})", reason="token_used")
            if now_ms >= expires_ms:
                raise EnrollmentError(
                    f"join token expired {(now_ms - expires_ms) // 1000} s ago", reason="token_expired"
                )
            existing = conn.execute("SELECT node_id FROM node_keys WHERE key_id = %s", (key_id,)).fetchone()
            if existing is not None:
                raise EnrollmentError(f"key {key_id} is already enrolled for node {existing[0]!r}", reason="key_exists")
            cur = conn.execute(
                "UPDATE join_tokens SET used_ms = %s, used_by_node = %s WHERE token_sha256 = %s AND used_ms IS NULL",
                (now_ms, node_id, digest),
            )
            if cur.rowcount != 1:  # pragma: no cover - the row lock excludes other writers
                raise EnrollmentError("join token was already used", reason="token_used")
            conn.execute(
                "INSERT INTO node_keys (key_id, node_id, algorithm, spki_der, assurance, enrolled_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (key_id, node_id, public.algorithm, spki_der, assurance, now_ms),
            )
        _logger.info("enrolled node %s with key %s (%s, %s)", node_id, key_id, public.algorithm, assurance)
        return key_id

    def revoke_key(self, key_id: str, now_ms: int) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE node_keys SET revoked_ms = %s WHERE key_id = %s AND revoked_ms IS NULL", (now_ms, key_id)
            )
            changed = cur.rowcount == 1
        if changed:
            _logger.info("revoked key %s", key_id)
        return changed

    _KEY_COLUMNS = "key_id, node_id, algorithm, spki_der, assurance, enrolled_ms, revoked_ms"

    def key(self, key_id: str) -> KeyRecord | None:
        rows = self._query(f"SELECT {self._KEY_COLUMNS} FROM node_keys WHERE key_id = %s", (_text(key_id),))
        return _key(rows[0]) if rows else None

    def keys(self) -> list[KeyRecord]:
        rows = self._query(f"SELECT {self._KEY_COLUMNS} FROM node_keys ORDER BY node_id, enrolled_ms, key_id")
        return [_key(row) for row in rows]

    def keys_by_id(self, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
        out: dict[str, KeyRecord] = {}
        for wanted in _lookup_chunks(key_ids):
            rows = self._query(
                f"SELECT {self._KEY_COLUMNS} FROM node_keys WHERE key_id = ANY(%s::text[])", (list(wanted),)
            )
            for row in rows:
                record = _key(row)
                for key_id in wanted[str(row[0])]:
                    out[key_id] = record
        return out

    # ------------------------------------------------------------------
    # chains and statements

    def head(self, key_id: str) -> ChainHead | None:
        rows = self._query(
            "SELECT seq, digest, end_ms, boot_id, energy_end_mj FROM chain_heads WHERE key_id = %s", (_text(key_id),)
        )
        return _head(key_id, rows[0]) if rows else None

    def heads(self, key_ids: Sequence[str]) -> dict[str, ChainHead]:
        out: dict[str, ChainHead] = {}
        for wanted in _lookup_chunks(key_ids):
            rows = self._query(
                "SELECT key_id, seq, digest, end_ms, boot_id, energy_end_mj FROM chain_heads "
                "WHERE key_id = ANY(%s::text[])",
                (list(wanted),),
            )
            for row in rows:
                for key_id in wanted[str(row[0])]:
                    out[key_id] = _head(key_id, row[1:])
        return out

    def next_seq(self, key_id: str) -> int:
        rows = self._query("SELECT seq FROM chain_heads WHERE key_id = %s", (_text(key_id),))
        return 0 if not rows else int(rows[0][0]) + 1

    def statement_digest(self, key_id: str, seq: int) -> str | None:
        rows = self._query("SELECT digest FROM statements WHERE key_id = %s AND seq = %s", (_text(key_id), seq))
        return str(rows[0][0]) if rows else None

    def save_batch(
        self,
        statements: Sequence[StatementRecord],
        heads: Sequence[ChainHead],
        conflicts: Sequence[ConflictRecord] = (),
        refusals: Sequence[RefusalRecord] = (),
    ) -> None:
        if not (statements or heads or conflicts or refusals):
            return
        with self._tx() as conn:
            cur = conn.cursor()
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(self._write_lock_timeout_ms)}ms",))
            if statements:
                # Statements first: a (key_id, seq) another collector stored raises here,
                # before this transaction takes the log counter's row lock.
                cur.executemany(
                    "INSERT INTO statements (key_id, seq, node_id, start_ms, end_ms, digest, payload, payload_type, "
                    "signatures, received_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            s.key_id,
                            s.seq,
                            s.node_id,
                            s.start_ms,
                            s.end_ms,
                            s.digest,
                            s.payload,
                            s.payload_type,
                            signatures_to_json(s.signatures),
                            s.received_ms,
                        )
                        for s in statements
                    ],
                )
                # The counter's row lock is held until commit: indices follow commit order.
                row = cur.execute(
                    "UPDATE log_state SET size = size + %s WHERE id = 1 RETURNING size - %s",
                    (len(statements), len(statements)),
                ).fetchone()
                assert row is not None
                first = int(row[0])
                cur.executemany(
                    "INSERT INTO log_leaves (leaf_index, key_id, seq, leaf_hash) VALUES (%s, %s, %s, %s)",
                    [(first + i, s.key_id, s.seq, _leaf_hash(s)) for i, s in enumerate(statements)],
                )
            if heads:
                cur.executemany(
                    "INSERT INTO chain_heads (key_id, seq, digest, end_ms, boot_id, energy_end_mj) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO UPDATE SET seq = excluded.seq, "
                    "digest = excluded.digest, end_ms = excluded.end_ms, boot_id = excluded.boot_id, "
                    "energy_end_mj = excluded.energy_end_mj WHERE chain_heads.seq < excluded.seq",
                    [
                        (h.key_id, h.seq, h.digest, h.end_ms, h.boot_id, json.dumps(h.energy_end_mj, sort_keys=True))
                        for h in sorted(heads, key=lambda h: h.key_id)
                    ],
                )
            if conflicts:
                cur.executemany(
                    "INSERT INTO conflicts (key_id, seq, original_digest, digest, payload, payload_type, "
                    "signatures, received_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (
                            c.key_id,
                            c.seq,
                            c.original_digest,
                            c.digest,
                            c.payload,
                            c.payload_type,
                            signatures_to_json(c.signatures),
                            c.received_ms,
                        )
                        for c in conflicts
                    ],
                )
            if refusals:
                self._insert_refusals(conn, refusals)

    def statement_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM statements")[0][0])

    _STATEMENT_COLUMNS = (
        "key_id, seq, node_id, start_ms, end_ms, digest, payload, payload_type, signatures, received_ms"
    )

    def iter_statements(
        self,
        key_id: str | None = None,
        *,
        from_seq: int = 0,
        window_from_ms: int | None = None,
        window_to_ms: int | None = None,
    ) -> Iterator[StatementRecord]:
        # Keyset paging; statements whose payload aged into aggregates are left out.
        where = ["pruned_ms IS NULL"]
        params: list[object] = []
        if key_id is not None:
            where.append("key_id = %s")
            params.append(_text(key_id))
        if from_seq:
            where.append("seq >= %s")
            params.append(from_seq)
        if window_from_ms is not None:
            where.append("end_ms > %s")
            params.append(window_from_ms)
        if window_to_ms is not None:
            where.append("start_ms < %s")
            params.append(window_to_ms)
        after: tuple[object, object] = ("", -1)
        while True:
            # COLLATE "C": page order must match Python's string order (and SQLite's BINARY).
            clause = " AND ".join([*where, '(key_id COLLATE "C", seq) > (%s, %s)'])
            rows = self._query(
                f"SELECT {self._STATEMENT_COLUMNS} FROM statements WHERE {clause} "
                f'ORDER BY key_id COLLATE "C", seq LIMIT %s',
                [*params, *after, _PAGE_ROWS],
            )
            for row in rows:
                yield _statement(row)
            if len(rows) < _PAGE_ROWS:
                return
            after = (rows[-1][0], rows[-1][1])

    def conflicts(self, key_id: str | None = None) -> list[ConflictRecord]:
        sql = (
            "SELECT key_id, seq, original_digest, digest, payload, payload_type, signatures, received_ms FROM conflicts"
        )
        params: list[object] = []
        if key_id is not None:
            sql += " WHERE key_id = %s"
            params.append(_text(key_id))
        rows = self._query(sql + " ORDER BY id", params)
        return [
            ConflictRecord(
                key_id=str(r[0]),
                seq=int(r[1]),
                original_digest=str(r[2]),
                digest=str(r[3]),
                payload=bytes(r[4]),
                payload_type=str(r[5]),
                signatures=signatures_from_json(str(r[6])),
                received_ms=int(r[7]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------------
    # transparency log

    def log_size(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM log_leaves")[0][0])

    def log_leaves(self, start: int = 0, end: int | None = None) -> list[LogLeafRecord]:
        sql = "SELECT leaf_index, key_id, seq, leaf_hash FROM log_leaves WHERE leaf_index >= %s"
        params: list[object] = [start]
        if end is not None:
            sql += " AND leaf_index < %s"
            params.append(end)
        rows = self._query(sql + " ORDER BY leaf_index", params)
        return [LogLeafRecord(int(i), str(k), int(q), bytes(h)) for i, k, q, h in rows]

    def log_statements(self, start: int, end: int | None = None) -> list[tuple[int, StatementRecord]]:
        """(leaf index, statement) for leaves ``start <= index < end`` whose payload is kept."""
        sql = (
            "SELECT l.leaf_index, "
            + ", ".join(f"s.{c.strip()}" for c in self._STATEMENT_COLUMNS.split(","))
            + " FROM log_leaves l JOIN statements s ON s.key_id = l.key_id AND s.seq = l.seq "
            "WHERE l.leaf_index >= %s AND s.pruned_ms IS NULL"
        )
        params: list[object] = [start]
        if end is not None:
            sql += " AND l.leaf_index < %s"
            params.append(end)
        rows = self._query(sql + " ORDER BY l.leaf_index", params)
        return [(int(r[0]), _statement(r[1:])) for r in rows]

    def leaf_index(self, key_id: str, seq: int) -> int | None:
        rows = self._query("SELECT leaf_index FROM log_leaves WHERE key_id = %s AND seq = %s", (key_id, seq))
        return int(rows[0][0]) if rows else None

    def log_tile_roots(self, height: int, start: int, end: int) -> list[bytes]:
        rows = self._query(
            "SELECT tile, root FROM log_tiles WHERE height = %s AND tile >= %s AND tile < %s ORDER BY tile",
            (height, start, end),
        )
        return contiguous_tile_roots(rows, start)

    def save_log_tile_roots(self, height: int, start: int, roots: Sequence[bytes]) -> None:
        if not roots:
            return
        with self._tx() as conn:
            conn.cursor().executemany(
                "INSERT INTO log_tiles (height, tile, root) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(height, start + i, root) for i, root in enumerate(roots)],
            )

    def committed_heads(self) -> tuple[int, list[KeyHead]]:
        return read_committed_heads(self._query)

    def save_committed_heads(self, tree_size: int, heads: Sequence[KeyHead]) -> bool:
        with self._tx() as conn:
            row = conn.execute("SELECT tree_size FROM log_heads_state WHERE id = 1 FOR UPDATE").fetchone()
            if row is None or tree_size <= int(row[0]):
                return False
            conn.cursor().executemany(
                "INSERT INTO log_heads (key_id, node_id, seq, leaf_index, digest, end_ms, serials) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO UPDATE SET node_id = excluded.node_id, "
                "seq = excluded.seq, leaf_index = excluded.leaf_index, digest = excluded.digest, "
                "end_ms = excluded.end_ms, serials = excluded.serials",
                [heads_params(h) for h in heads],
            )
            conn.execute("UPDATE log_heads_state SET tree_size = %s WHERE id = 1", (tree_size,))
            return True

    def save_checkpoint(self, record: CheckpointRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO checkpoints (tree_size, root_hash, signed_ms, note) VALUES (%s, %s, %s, %s)",
                (record.tree_size, record.root_hash, record.signed_ms, record.note),
            )

    def latest_checkpoint(self) -> CheckpointRecord | None:
        rows = self._query("SELECT tree_size, root_hash, signed_ms, note FROM checkpoints ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        size, root, signed_ms, note = rows[0]
        return CheckpointRecord(int(size), bytes(root), int(signed_ms), str(note))

    # ------------------------------------------------------------------
    # retention

    def prune_statements(
        self, keys: Sequence[tuple[str, int]], aggregates: Sequence[UsageAggregate], now_ms: int
    ) -> int:
        """Fold ``aggregates`` into the hourly table and drop the payloads of ``keys``, atomically.

        Raises StoreConflictError (nothing changed) when one of ``keys`` is already pruned
        or unknown, so that an aggregate is never counted twice.
        """
        if not keys:
            return 0
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (RETENTION_LOCK,))
            cur = conn.cursor()
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
            cur.executemany(
                "INSERT INTO usage_hourly (hour_ms, node_id, gpu_uuid, tenant, windows, window_ms, energy_mj, "
                "util_permille_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (hour_ms, gpu_uuid, tenant) "
                "DO UPDATE SET windows = usage_hourly.windows + excluded.windows, "
                "window_ms = usage_hourly.window_ms + excluded.window_ms, "
                "energy_mj = usage_hourly.energy_mj + excluded.energy_mj, "
                "util_permille_ms = usage_hourly.util_permille_ms + excluded.util_permille_ms",
                [
                    (
                        a.hour_ms,
                        a.node_id,
                        a.gpu_uuid,
                        a.tenant,
                        a.windows,
                        a.window_ms,
                        a.energy_mj,
                        a.util_permille_ms,
                    )
                    for a in sorted(aggregates, key=lambda a: (a.hour_ms, a.gpu_uuid, a.tenant))
                ],
            )
        return int(pruned)

    def usage_hourly(self, tenant: str | None = None) -> list[UsageAggregate]:
        sql = (
            "SELECT hour_ms, node_id, gpu_uuid, tenant, windows, window_ms, energy_mj, util_permille_ms "
            "FROM usage_hourly"
        )
        params: list[object] = []
        if tenant is not None:
            sql += " WHERE tenant = %s"
            params.append(tenant)
        rows = self._query(sql + ' ORDER BY hour_ms, gpu_uuid COLLATE "C", tenant COLLATE "C"', params)
        return [
            UsageAggregate(int(h), str(n), str(u), str(t), int(w), int(ms), int(e), int(ut))
            for h, n, u, t, w, ms, e, ut in rows
        ]

    # ------------------------------------------------------------------
    # refusals

    def _insert_refusals(self, conn: psycopg.Connection[Any], refusals: Sequence[RefusalRecord]) -> None:
        cur = conn.cursor()
        cur.executemany(
            "INSERT INTO refusals (at_ms, node_id, key_id, seq, reason, message) VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (r.at_ms, _opt_text(r.node_id), _opt_text(r.key_id), r.seq, _text(r.reason), _text(r.message))
                for r in refusals
            ],
        )
        per_reason: dict[str, int] = {}
        for r in refusals:
            per_reason[_text(r.reason)] = per_reason.get(_text(r.reason), 0) + 1
        cur.executemany(
            "INSERT INTO refusal_counts (reason, count) VALUES (%s, %s) "
            "ON CONFLICT (reason) DO UPDATE SET count = refusal_counts.count + excluded.count",
            sorted(per_reason.items()),
        )
        row = cur.execute("SELECT COALESCE(MAX(id), 0) FROM refusals").fetchone()
        max_id = int(row[0]) if row else 0
        if max_id > self._max_refusal_rows:
            cur.execute("DELETE FROM refusals WHERE id <= %s", (max_id - self._max_refusal_rows,))

    def record_refusal(self, refusal: RefusalRecord) -> None:
        with self._tx() as conn:
            self._insert_refusals(conn, [refusal])

    def refusal_counts(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self._query("SELECT reason, count FROM refusal_counts")}

    def refusals(self, limit: int = 100) -> list[RefusalRecord]:
        rows = self._query(
            "SELECT at_ms, reason, message, node_id, key_id, seq FROM refusals ORDER BY id DESC LIMIT %s", (limit,)
        )
        return [RefusalRecord(*row) for row in rows]

    # ------------------------------------------------------------------
    # findings

    def save_finding(
        self,
        finding_id: str,
        kind: str,
        tenant: str,
        severity: str,
        started_ms: int,
        detected_ms: int,
        json_text: str,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO findings (finding_id, kind, tenant, severity, started_ms, detected_ms, json) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (finding_id) DO UPDATE SET kind = excluded.kind, "
                "tenant = excluded.tenant, severity = excluded.severity, started_ms = excluded.started_ms, "
                "detected_ms = LEAST(findings.detected_ms, excluded.detected_ms), json = excluded.json",
                (finding_id, kind, tenant, severity, started_ms, detected_ms, json_text),
            )

    def findings(self, tenant: str | None = None) -> list[FindingRecord]:
        sql = "SELECT finding_id, kind, tenant, severity, started_ms, detected_ms, json FROM findings"
        params: list[object] = []
        if tenant is not None:
            sql += " WHERE tenant = %s"
            params.append(tenant)
        rows = self._query(sql + ' ORDER BY started_ms, finding_id COLLATE "C"', params)
        return [FindingRecord(*row) for row in rows]

    # -- tenant pseudonyms revealed (collector/pseudonyms.py) --------------------------

    def record_reveal(self, at_ms: int, pseudonym: str, tenant: str | None, operator: str, reason: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO reveal_audit (at_ms, pseudonym, tenant, operator, reason) VALUES (%s, %s, %s, %s, %s)",
                (at_ms, pseudonym, tenant, operator, reason),
            )

    def reveals(self) -> list[tuple[int, str, str | None, str, str]]:
        """(at_ms, pseudonym, tenant, operator, reason), oldest first."""
        rows = self._query("SELECT at_ms, pseudonym, tenant, operator, reason FROM reveal_audit ORDER BY id")
        return [(int(a), str(p), None if t is None else str(t), str(o), str(r)) for a, p, t, o, r in rows]


def _leaf_hash(s: StatementRecord) -> bytes:
    return leaf_hash(pae(s.payload_type, s.payload))


def _key(row: Any) -> KeyRecord:
    key_id, node_id, algorithm, spki, assurance, enrolled_ms, revoked_ms = row
    return KeyRecord(key_id, node_id, algorithm, bytes(spki), assurance, enrolled_ms, revoked_ms)


def _head(key_id: str, row: Sequence[Any]) -> ChainHead:
    """A chain head from (seq, digest, end_ms, boot_id, energy_end_mj)."""
    seq, digest, end_ms, boot_id, energy = row
    return ChainHead(
        key_id=key_id,
        seq=int(seq),
        digest=str(digest),
        end_ms=int(end_ms),
        boot_id=str(boot_id),
        energy_end_mj={str(k): int(v) for k, v in json.loads(str(energy)).items()},
    )


# Ids per query of the batched lookups (one array parameter; bounded to keep queries small).
_LOOKUP_CHUNK = 500


def _lookup_chunks(key_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """The distinct ``key_ids`` in groups of at most ``_LOOKUP_CHUNK`` stored forms, each
    group {stored form (``_text``): the ids asked for that map to it}. Ids with NUL or lone
    surrogates are escaped as ``key`` does, so every id gets the answer ``key`` gives it."""
    groups: list[dict[str, list[str]]] = []
    for key_id in dict.fromkeys(key_ids):
        text = _text(key_id)
        if not groups or (text not in groups[-1] and len(groups[-1]) >= _LOOKUP_CHUNK):
            groups.append({})
        groups[-1].setdefault(text, []).append(key_id)
    return groups


def _statement(row: Any) -> StatementRecord:
    return StatementRecord(
        key_id=str(row[0]),
        seq=int(row[1]),
        node_id=str(row[2]),
        start_ms=int(row[3]),
        end_ms=int(row[4]),
        digest=str(row[5]),
        payload=bytes(row[6]),
        payload_type=str(row[7]),
        signatures=signatures_from_json(str(row[8])),
        received_ms=int(row[9]),
    )


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


def _opt_text(text: str | None) -> str | None:
    return None if text is None else _text(text)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
