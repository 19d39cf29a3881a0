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

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any, Self

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

_logger = logging.getLogger(__name__)

KEY_ASSURANCES = ("software", "tpm", "hsm")
MAX_NODE_ID_CHARS = 253
DEFAULT_MAX_REFUSAL_ROWS = 100_000
_PAGE_ROWS = 500

# Script i brings the schema from version i to version i + 1. Append only: never edit a
# migration that has shipped.
MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE join_tokens (
        token_sha256  TEXT PRIMARY KEY,          -- hex SHA-256 of the token; the token is never stored
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        used_ms       INTEGER,
        used_by_node  TEXT
    ) STRICT;

    CREATE TABLE node_keys (
        key_id       TEXT PRIMARY KEY,           -- "sha256:" + hex SHA-256 of spki_der
        node_id      TEXT NOT NULL,
        algorithm    TEXT NOT NULL,
        spki_der     BLOB NOT NULL,
        assurance    TEXT NOT NULL,
        enrolled_ms  INTEGER NOT NULL,
        revoked_ms   INTEGER
    ) STRICT;
    CREATE INDEX node_keys_node ON node_keys (node_id);

    CREATE TABLE chain_heads (
        key_id         TEXT PRIMARY KEY REFERENCES node_keys (key_id),
        seq            INTEGER NOT NULL,
        digest         TEXT NOT NULL,
        end_ms         INTEGER NOT NULL,
        boot_id        TEXT NOT NULL,
        energy_end_mj  TEXT NOT NULL             -- JSON object: GPU uuid -> mJ
    ) STRICT;

    CREATE TABLE statements (
        id            INTEGER PRIMARY KEY,
        key_id        TEXT NOT NULL REFERENCES node_keys (key_id),
        seq           INTEGER NOT NULL,
        node_id       TEXT NOT NULL,
        start_ms      INTEGER NOT NULL,
        end_ms        INTEGER NOT NULL,
        digest        TEXT NOT NULL,             -- hex SHA-256 of the envelope's PAE
        payload       BLOB NOT NULL,             -- the signed bytes, exactly as received
        payload_type  TEXT NOT NULL,
        signatures    TEXT NOT NULL,             -- JSON, DSSE envelope.md form
        received_ms   INTEGER NOT NULL,
        UNIQUE (key_id, seq)
    ) STRICT;
    CREATE INDEX statements_window ON statements (start_ms);

    CREATE TABLE conflicts (
        id               INTEGER PRIMARY KEY,
        key_id           TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        original_digest  TEXT NOT NULL,
        digest           TEXT NOT NULL,
        payload          BLOB NOT NULL,
        payload_type     TEXT NOT NULL,
        signatures       TEXT NOT NULL,
        received_ms      INTEGER NOT NULL,
        UNIQUE (key_id, seq, digest)
    ) STRICT;

    CREATE TABLE refusals (
        id        INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        node_id   TEXT,
        key_id    TEXT,
        seq       INTEGER,
        reason    TEXT NOT NULL,
        message   TEXT NOT NULL
    ) STRICT;

    CREATE TABLE refusal_counts (
        reason  TEXT PRIMARY KEY,
        count   INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE findings (
        finding_id   TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        tenant       TEXT NOT NULL,
        severity     TEXT NOT NULL,
        started_ms   INTEGER NOT NULL,
        detected_ms  INTEGER NOT NULL,
        json         TEXT NOT NULL
    ) STRICT;
    CREATE INDEX findings_tenant ON findings (tenant, started_ms);
    """,
    # 2: the transparency log (RFC 9162 leaves, in commit order) and its signed checkpoints.
    # Statements stored before this version get their leaves when the store is opened
    # (_backfill_log_leaves): SQLite cannot compute SHA-256 in a migration script.
    """
    CREATE TABLE log_leaves (
        leaf_index  INTEGER PRIMARY KEY,        -- 0, 1, 2, ... in the order statements committed
        key_id      TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        leaf_hash   BLOB NOT NULL,              -- SHA-256(0x00 || PAE)
        UNIQUE (key_id, seq),
        FOREIGN KEY (key_id, seq) REFERENCES statements (key_id, seq)
    ) STRICT;

    CREATE TABLE checkpoints (
        id          INTEGER PRIMARY KEY,
        tree_size   INTEGER NOT NULL,
        root_hash   BLOB NOT NULL,
        signed_ms   INTEGER NOT NULL,
        note        TEXT NOT NULL               -- the C2SP signed note, exactly as signed
    ) STRICT;
    """,
    # 3: retention: a statement's payload and signatures may age into hourly aggregates;
    # its row (digest, chain position) and its log leaf stay (collector/retention.py).
    """
    ALTER TABLE statements ADD COLUMN pruned_ms INTEGER;   -- set when the payload was dropped
    CREATE TABLE usage_hourly (
        hour_ms           INTEGER NOT NULL,     -- UTC hour the windows start in
        node_id           TEXT NOT NULL,
        gpu_uuid          TEXT NOT NULL,
        tenant            TEXT NOT NULL,        -- "" = no workload
        windows           INTEGER NOT NULL,
        window_ms         INTEGER NOT NULL,
        energy_mj         INTEGER NOT NULL,
        util_permille_ms  INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, gpu_uuid, tenant)
    ) STRICT;
    CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant, hour_ms);
    """,
    # 4: tenant pseudonyms revealed by an operator (collector/pseudonyms.py): who, when, why.
    """
    CREATE TABLE reveal_audit (
        id          INTEGER PRIMARY KEY,
        at_ms       INTEGER NOT NULL,
        pseudonym   TEXT NOT NULL,
        tenant      TEXT,                       -- NULL: no tenant has this pseudonym
        operator    TEXT NOT NULL,
        reason      TEXT NOT NULL
    ) STRICT;
    """,
    # 5: the roots of complete tiles of log leaves (collector/log.py), so that a restarted
    # collector rebuilds its tree from one row per 1,024 leaves instead of reading every leaf.
    """
    CREATE TABLE log_tiles (
        height      INTEGER NOT NULL,            -- log2 of the leaves per tile
        tile        INTEGER NOT NULL,            -- leaves tile * 2**height .. (tile + 1) * 2**height - 1
        root        BLOB NOT NULL,               -- RFC 9162 hash of the tile's subtree
        PRIMARY KEY (height, tile)
    ) STRICT;
    """,
    # 6: per-key heads committed at the latest checkpoint (attestation/heads.py, collector/log.py):
    # for each key, its statement with the highest seq among the first tree_size leaves.
    """
    CREATE TABLE log_heads (
        key_id      TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        leaf_index  INTEGER NOT NULL,
        digest      TEXT NOT NULL,               -- hex SHA-256 of the statement's PAE
        end_ms      INTEGER NOT NULL,
        serials     TEXT NOT NULL                -- JSON list of the GPU serials it names
    ) STRICT;
    CREATE TABLE log_heads_state (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        tree_size   INTEGER NOT NULL             -- the heads in log_heads are those at this size
    ) STRICT;
    INSERT INTO log_heads_state (id, tree_size) VALUES (1, 0);
    """,
)

_CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)"
)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


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


class SqliteStore:
    """The collector's store in one SQLite file (see the module docstring)."""

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
    # enrollment

    def create_token(self, ttl_s: int, now_ms: int) -> str:
        if ttl_s <= 0:
            raise ValueError(f"token ttl must be positive, got {ttl_s} s")
        token = secrets.token_urlsafe(32)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO join_tokens (token_sha256, created_ms, expires_ms) VALUES (?, ?, ?)",
                (token_sha256(token), now_ms, now_ms + ttl_s * 1000),
            )
        return token

    def tokens(self) -> list[TokenRecord]:
        rows = self._query(
            "SELECT token_sha256, created_ms, expires_ms, used_ms, used_by_node FROM join_tokens ORDER BY created_ms"
        )
        return [TokenRecord(*row) for row in rows]

    def enroll(self, node_id: str, token: str, spki_der: bytes, assurance: str, now_ms: int) -> str:
        if not node_id or len(node_id) > MAX_NODE_ID_CHARS or not _utf8(node_id):
            raise EnrollmentError(f"node id {node_id!r} is empty, too long or not UTF-8", reason="bad_request")
        if assurance not in KEY_ASSURANCES:
            raise EnrollmentError(
                f"key assurance {assurance!r} is not one of {', '.join(KEY_ASSURANCES)}", reason="bad_request"
            )
        # Check the key before touching the token, so a malformed key does not burn it.
        try:
            public = PublicKey.from_spki(spki_der)
        except KeyFileError as exc:
            raise EnrollmentError(f"public key refused: {exc}", reason="bad_key") from exc
        key_id = key_id_of(spki_der)
        digest = token_sha256(token)
        with self._tx() as conn:
            row = conn.execute(
                "SELECT expires_ms, used_ms, used_by_node FROM join_tokens WHERE token_sha256 = ?", (digest,)
            ).fetchone()
            if row is None:
                raise EnrollmentError("join token is not known to this collector", reason="bad_token")
            expires_ms, used_ms, used_by = row
            if used_ms is not None:
                same = conn.execute(
                    "SELECT 1 FROM node_keys WHERE key_id = ? AND node_id = ?", (key_id, node_id)
                ).fetchone()
                if used_by == node_id and same is not None:
                    # The same node retrying with the same token and key (the first answer was
                    # lost in transit): enrollment is idempotent.
                    return key_id
                raise EnrollmentError(f"join token was already used (by node {used_by!r})", reason="token_used")
            if now_ms >= expires_ms:
                raise EnrollmentError(
                    f"join token expired {(now_ms - expires_ms) // 1000} s ago", reason="token_expired"
                )
            existing = conn.execute("SELECT node_id FROM node_keys WHERE key_id = ?", (key_id,)).fetchone()
            if existing is not None:
                raise EnrollmentError(f"key {key_id} is already enrolled for node {existing[0]!r}", reason="key_exists")
            cur = conn.execute(
                "UPDATE join_tokens SET used_ms = ?, used_by_node = ? WHERE token_sha256 = ? AND used_ms IS NULL",
                (now_ms, node_id, digest),
            )
            if cur.rowcount != 1:  # pragma: no cover - BEGIN IMMEDIATE excludes other writers
                raise EnrollmentError("join token was already used", reason="token_used")
            conn.execute(
                "INSERT INTO node_keys (key_id, node_id, algorithm, spki_der, assurance, enrolled_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, node_id, public.algorithm, spki_der, assurance, now_ms),
            )
        _logger.info("enrolled node %s with key %s (%s, %s)", node_id, key_id, public.algorithm, assurance)
        return key_id

    def revoke_key(self, key_id: str, now_ms: int) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE node_keys SET revoked_ms = ? WHERE key_id = ? AND revoked_ms IS NULL", (now_ms, key_id)
            )
            changed = cur.rowcount == 1
        if changed:
            _logger.info("revoked key %s", key_id)
        return changed

    _KEY_COLUMNS = "key_id, node_id, algorithm, spki_der, assurance, enrolled_ms, revoked_ms"

    def key(self, key_id: str) -> KeyRecord | None:
        rows = self._query(f"SELECT {self._KEY_COLUMNS} FROM node_keys WHERE key_id = ?", (key_id,))
        return KeyRecord(*rows[0]) if rows else None

    def keys(self) -> list[KeyRecord]:
        rows = self._query(f"SELECT {self._KEY_COLUMNS} FROM node_keys ORDER BY node_id, enrolled_ms")
        return [KeyRecord(*row) for row in rows]

    def keys_by_id(self, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
        out: dict[str, KeyRecord] = {}
        for chunk in _chunks(key_ids):
            rows = self._query(
                f"SELECT {self._KEY_COLUMNS} FROM node_keys WHERE key_id IN ({', '.join('?' * len(chunk))})", chunk
            )
            for row in rows:
                out[row[0]] = KeyRecord(*row)
        return out

    # ------------------------------------------------------------------
    # chains and statements

    def head(self, key_id: str) -> ChainHead | None:
        rows = self._query(
            "SELECT seq, digest, end_ms, boot_id, energy_end_mj FROM chain_heads WHERE key_id = ?", (key_id,)
        )
        return _head(key_id, rows[0]) if rows else None

    def heads(self, key_ids: Sequence[str]) -> dict[str, ChainHead]:
        out: dict[str, ChainHead] = {}
        for chunk in _chunks(key_ids):
            rows = self._query(
                "SELECT key_id, seq, digest, end_ms, boot_id, energy_end_mj FROM chain_heads "
                f"WHERE key_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                out[row[0]] = _head(row[0], row[1:])
        return out

    def next_seq(self, key_id: str) -> int:
        rows = self._query("SELECT seq FROM chain_heads WHERE key_id = ?", (key_id,))
        return 0 if not rows else int(rows[0][0]) + 1

    def statement_digest(self, key_id: str, seq: int) -> str | None:
        rows = self._query("SELECT digest FROM statements WHERE key_id = ? AND seq = ?", (key_id, seq))
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
            if statements:
                conn.executemany(
                    "INSERT INTO statements (key_id, seq, node_id, start_ms, end_ms, digest, payload, payload_type, "
                    "signatures, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                # The statements' log leaves, in the same transaction, in commit order.
                (next_index,) = conn.execute("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM log_leaves").fetchone()
                conn.executemany(
                    "INSERT INTO log_leaves (leaf_index, key_id, seq, leaf_hash) VALUES (?, ?, ?, ?)",
                    [(next_index + i, s.key_id, s.seq, _leaf_hash(s)) for i, s in enumerate(statements)],
                )
            if heads:
                conn.executemany(
                    "INSERT INTO chain_heads (key_id, seq, digest, end_ms, boot_id, energy_end_mj) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET seq = excluded.seq, "
                    "digest = excluded.digest, end_ms = excluded.end_ms, boot_id = excluded.boot_id, "
                    "energy_end_mj = excluded.energy_end_mj",
                    [
                        (h.key_id, h.seq, h.digest, h.end_ms, h.boot_id, json.dumps(h.energy_end_mj, sort_keys=True))
                        for h in heads
                    ],
                )
            if conflicts:
                conn.executemany(
                    "INSERT OR IGNORE INTO conflicts (key_id, seq, original_digest, digest, payload, payload_type, "
                    "signatures, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        # Keyset paging: the lock is held per page, never across a yield.
        where = ["pruned_ms IS NULL"]  # payloads aged into aggregates are gone
        params: list[object] = []
        if key_id is not None:
            where.append("key_id = ?")
            params.append(key_id)
        if from_seq:
            where.append("seq >= ?")
            params.append(from_seq)
        if window_from_ms is not None:
            where.append("end_ms > ?")
            params.append(window_from_ms)
        if window_to_ms is not None:
            where.append("start_ms < ?")
            params.append(window_to_ms)
        after: tuple[object, object] = ("", -1)
        while True:
            clause = " AND ".join([*where, "(key_id, seq) > (?, ?)"])
            rows = self._query(
                f"SELECT {self._STATEMENT_COLUMNS} FROM statements WHERE {clause} ORDER BY key_id, seq LIMIT ?",
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
            sql += " WHERE key_id = ?"
            params.append(key_id)
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
        sql = "SELECT leaf_index, key_id, seq, leaf_hash FROM log_leaves WHERE leaf_index >= ?"
        params: list[object] = [start]
        if end is not None:
            sql += " AND leaf_index < ?"
            params.append(end)
        rows = self._query(sql + " ORDER BY leaf_index", params)
        return [LogLeafRecord(int(i), str(k), int(q), bytes(h)) for i, k, q, h in rows]

    def leaf_index(self, key_id: str, seq: int) -> int | None:
        rows = self._query("SELECT leaf_index FROM log_leaves WHERE key_id = ? AND seq = ?", (key_id, seq))
        return int(rows[0][0]) if rows else None

    def log_tile_roots(self, height: int, start: int, end: int) -> list[bytes]:
        rows = self._query(
            "SELECT tile, root FROM log_tiles WHERE height = ? AND tile >= ? AND tile < ? ORDER BY tile",
            (height, start, end),
        )
        return contiguous_tile_roots(rows, start)

    def save_log_tile_roots(self, height: int, start: int, roots: Sequence[bytes]) -> None:
        if not roots:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO log_tiles (height, tile, root) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(height, start + i, root) for i, root in enumerate(roots)],
            )

    def save_checkpoint(self, record: CheckpointRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO checkpoints (tree_size, root_hash, signed_ms, note) VALUES (?, ?, ?, ?)",
                (record.tree_size, record.root_hash, record.signed_ms, record.note),
            )

    def latest_checkpoint(self) -> CheckpointRecord | None:
        rows = self._query("SELECT tree_size, root_hash, signed_ms, note FROM checkpoints ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        size, root, signed_ms, note = rows[0]
        return CheckpointRecord(int(size), bytes(root), int(signed_ms), str(note))

    def committed_heads(self) -> tuple[int, list[KeyHead]]:
        return read_committed_heads(self._query)

    def save_committed_heads(self, tree_size: int, heads: Sequence[KeyHead]) -> bool:
        with self._tx() as conn:
            (stored,) = conn.execute("SELECT tree_size FROM log_heads_state WHERE id = 1").fetchone()
            if tree_size <= int(stored):
                return False
            conn.executemany(
                "INSERT INTO log_heads (key_id, node_id, seq, leaf_index, digest, end_ms, serials) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET node_id = excluded.node_id, "
                "seq = excluded.seq, leaf_index = excluded.leaf_index, digest = excluded.digest, "
                "end_ms = excluded.end_ms, serials = excluded.serials",
                [heads_params(h) for h in heads],
            )
            conn.execute("UPDATE log_heads_state SET tree_size = ? WHERE id = 1", (tree_size,))
            return True

    def log_statements(self, start: int, end: int | None = None) -> list[tuple[int, StatementRecord]]:
        cols = ", ".join(f"s.{c.strip()}" for c in self._STATEMENT_COLUMNS.split(","))
        sql = (
            f"SELECT l.leaf_index, {cols} FROM log_leaves l JOIN statements s ON s.key_id = l.key_id "
            "AND s.seq = l.seq WHERE l.leaf_index >= ? AND s.pruned_ms IS NULL"
        )
        params: list[object] = [start]
        if end is not None:
            sql += " AND l.leaf_index < ?"
            params.append(end)
        rows = self._query(sql + " ORDER BY l.leaf_index", params)
        return [(int(r[0]), _statement(r[1:])) for r in rows]

    # ------------------------------------------------------------------
    # retention

    def prune_statements(
        self, keys: Sequence[tuple[str, int]], aggregates: Sequence[UsageAggregate], now_ms: int
    ) -> int:
        if not keys:
            return 0
        unique = sorted(set(keys))
        with self._tx() as conn:
            cur = conn.cursor()
            cur.executemany(
                "UPDATE statements SET payload = X'', signatures = '[]', pruned_ms = ? "
                "WHERE key_id = ? AND seq = ? AND pruned_ms IS NULL",
                [(now_ms, k, q) for k, q in unique],
            )
            if cur.rowcount != len(unique):
                raise StoreConflictError(
                    f"store {self._path}: {len(unique) - cur.rowcount} statement(s) were already pruned or unknown"
                )
            cur.executemany(
                "INSERT INTO usage_hourly (hour_ms, node_id, gpu_uuid, tenant, windows, window_ms, energy_mj, "
                "util_permille_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hour_ms, gpu_uuid, tenant) "
                "DO UPDATE SET windows = windows + excluded.windows, window_ms = window_ms + excluded.window_ms, "
                "energy_mj = energy_mj + excluded.energy_mj, "
                "util_permille_ms = util_permille_ms + excluded.util_permille_ms",
                [astuple(a) for a in aggregates],
            )
        return len(unique)

    def usage_hourly(self, tenant: str | None = None) -> list[UsageAggregate]:
        sql = (
            "SELECT hour_ms, node_id, gpu_uuid, tenant, windows, window_ms, energy_mj, util_permille_ms "
            "FROM usage_hourly"
        )
        params: list[object] = []
        if tenant is not None:
            sql += " WHERE tenant = ?"
            params.append(tenant)
        rows = self._query(sql + " ORDER BY hour_ms, gpu_uuid, tenant", params)
        return [UsageAggregate(*row) for row in rows]

    # ------------------------------------------------------------------
    # several collectors

    # One SQLite file has one collector writing it; it runs detection itself.
    concurrent_writers = False

    def try_detection_lease(self) -> bool:
        return True

    # ------------------------------------------------------------------
    # refusals

    def _insert_refusals(self, conn: sqlite3.Connection, refusals: Sequence[RefusalRecord]) -> None:
        cur = conn.cursor()
        cur.executemany(
            "INSERT INTO refusals (at_ms, node_id, key_id, seq, reason, message) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.at_ms, r.node_id, r.key_id, r.seq, r.reason, r.message) for r in refusals],
        )
        per_reason: dict[str, int] = {}
        for r in refusals:
            per_reason[r.reason] = per_reason.get(r.reason, 0) + 1
        cur.executemany(
            "INSERT INTO refusal_counts (reason, count) VALUES (?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
            sorted(per_reason.items()),
        )
        # Keep the newest rows only; the per-reason counts stay exact.
        (max_id,) = cur.execute("SELECT COALESCE(MAX(id), 0) FROM refusals").fetchone()
        if max_id > self._max_refusal_rows:
            cur.execute("DELETE FROM refusals WHERE id <= ?", (max_id - self._max_refusal_rows,))

    def record_refusal(self, refusal: RefusalRecord) -> None:
        with self._tx() as conn:
            self._insert_refusals(conn, [refusal])

    def refusal_counts(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self._query("SELECT reason, count FROM refusal_counts")}

    def refusals(self, limit: int = 100) -> list[RefusalRecord]:
        rows = self._query(
            "SELECT at_ms, reason, message, node_id, key_id, seq FROM refusals ORDER BY id DESC LIMIT ?", (limit,)
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
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (finding_id) DO UPDATE SET kind = excluded.kind, "
                "tenant = excluded.tenant, severity = excluded.severity, started_ms = excluded.started_ms, "
                "detected_ms = MIN(findings.detected_ms, excluded.detected_ms), json = excluded.json",
                (finding_id, kind, tenant, severity, started_ms, detected_ms, json_text),
            )

    def findings(self, tenant: str | None = None) -> list[FindingRecord]:
        sql = "SELECT finding_id, kind, tenant, severity, started_ms, detected_ms, json FROM findings"
        params: list[object] = []
        if tenant is not None:
            sql += " WHERE tenant = ?"
            params.append(tenant)
        rows = self._query(sql + " ORDER BY started_ms, finding_id", params)
        return [FindingRecord(*row) for row in rows]

    # ------------------------------------------------------------------
    # tenant pseudonyms revealed (collector/pseudonyms.py)

    def record_reveal(self, at_ms: int, pseudonym: str, tenant: str | None, operator: str, reason: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO reveal_audit (at_ms, pseudonym, tenant, operator, reason) VALUES (?, ?, ?, ?, ?)",
                (at_ms, pseudonym, tenant, operator, reason),
            )

    def reveals(self) -> list[tuple[int, str, str | None, str, str]]:
        """(at_ms, pseudonym, tenant, operator, reason), oldest first."""
        rows = self._query("SELECT at_ms, pseudonym, tenant, operator, reason FROM reveal_audit ORDER BY id")
        return [(int(a), str(p), None if t is None else str(t), str(o), str(r)) for a, p, t, o, r in rows]


def _leaf_hash(s: StatementRecord) -> bytes:
    return leaf_hash(pae(s.payload_type, s.payload))


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


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Ids per query of the batched lookups: below SQLite's bound on host parameters (999 before 3.32).
_LOOKUP_CHUNK = 500


def _chunks(key_ids: Sequence[str]) -> list[list[str]]:
    """The distinct ``key_ids``, in order, in lists of at most ``_LOOKUP_CHUNK``."""
    distinct = list(dict.fromkeys(key_ids))
    return [distinct[i : i + _LOOKUP_CHUNK] for i in range(0, len(distinct), _LOOKUP_CHUNK)]


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
