"""The agent's durable spool: every signed envelope stays here until the collector acks it.

One SQLite file (WAL, ``synchronous=FULL``): appending an envelope and advancing the
chain state happen in one transaction, so after a crash the agent resumes its chain exactly
where the last durable statement left it and resends whatever was not acknowledged.
``:memory:`` is allowed for replays and tests. The spool also keeps the latest collector
log checkpoint the agent received (table ``log_checkpoint``), so that the first statement
after a restart carries it too. Tables are created if missing, so a spool from an older
agent opens as it is.

The spool is bounded (``plan_drop``): by the bytes of its unacknowledged envelopes and by
the age of the oldest. When a bound is hit the signer drops statements and the next
statement it signs carries a signed ``dropped`` record (attestation/statement/), so the
collector sees an explained gap, never a silent hole. An explanation can only cover seqs
that end right before the statement carrying it (a collector accepts a chain strictly in
order), so the size bound drops the *newest* unacknowledged statements, keeping the
oldest (the start of the outage), and the age bound drops every unacknowledged statement
once the oldest is too old; either way the range ends at the statement being signed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attestation.errors import Error
from attestation.statement import LogCheckpointRef
from attestation.wire import envelope_from_bytes

_logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chain (
    key_id TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    last_digest TEXT,
    last_end_ms INTEGER
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spool (
    key_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    digest TEXT NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (key_id, seq)
);
CREATE TABLE IF NOT EXISTS log_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    origin TEXT NOT NULL,
    tree_size INTEGER NOT NULL,
    root_sha256 TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ChainState:
    next_seq: int
    last_digest: str | None
    last_end_ms: int | None


# Why statements are dropped unsent (``DropPlan.reason``): ``spool_max_bytes``, ``spool_max_age_s``.
DROP_REASONS = ("spool_size", "spool_age")


@dataclass(frozen=True)
class DropPlan:
    """Unacknowledged statements to drop (``from_seq``..``to_seq``) before the next is spooled."""

    from_seq: int
    to_seq: int
    reason: str  # "spool_size" or "spool_age"

    @property
    def count(self) -> int:
        return self.to_seq - self.from_seq + 1


@dataclass(frozen=True)
class Backlog:
    """Unacknowledged statements of one key: how many, their envelopes' bytes, and the window
    end of the oldest (None when there is none, or when it cannot be read: no made-up time)."""

    statements: int
    size_bytes: int
    oldest_end_ms: int | None


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full"), whatever the disk or quota."""
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class Spool:
    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def chain_state(self, key_id: str) -> ChainState:
        with self._lock:
            row = self._db.execute(
                "SELECT next_seq, last_digest, last_end_ms FROM chain WHERE key_id = ?", (key_id,)
            ).fetchone()
        if row is None:
            return ChainState(0, None, None)
        return ChainState(int(row[0]), row[1], row[2])

    def append(
        self,
        key_id: str,
        seq: int,
        digest: str,
        envelope: bytes,
        end_ms: int,
        drop: DropPlan | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> int:
        """Store a signed envelope and advance the chain in one transaction; ``drop``: the
        statements its ``dropped`` record announces are deleted in the same transaction;
        ``meta``: entries that must be durable exactly when the envelope is (a key rotation's
        hand-over, agent/signing.py). Returns how many statements ``drop`` deleted (those of
        its range still in the spool: a range that takes in an earlier record's is not
        counted twice)."""
        dropped = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for name, value in (meta or {}).items():
                    self._db.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (name, value),
                    )
                if drop is not None:
                    dropped = self._db.execute(
                        "DELETE FROM spool WHERE key_id = ? AND seq BETWEEN ? AND ?",
                        (key_id, drop.from_seq, drop.to_seq),
                    ).rowcount
                    self._db.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (f"dropped:{key_id}", json.dumps([drop.from_seq, drop.to_seq, drop.reason])),
                    )
                self._db.execute(
                    "INSERT INTO spool (key_id, seq, digest, envelope) VALUES (?, ?, ?, ?)",
                    (key_id, seq, digest, envelope),
                )
                self._db.execute(
                    "INSERT INTO chain (key_id, next_seq, last_digest, last_end_ms) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key_id) DO UPDATE SET next_seq = excluded.next_seq, "
                    "last_digest = excluded.last_digest, last_end_ms = excluded.last_end_ms",
                    (key_id, seq + 1, digest, end_ms),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL has already rolled it back
                    self._db.execute("ROLLBACK")
                raise
        return dropped

    def plan_drop(
        self, key_id: str, next_seq: int, incoming_bytes: int, max_bytes: int, max_age_ms: int, now_ms: int
    ) -> DropPlan | None:
        """What must be dropped so that a statement of about ``incoming_bytes`` fits the bounds
        (0: no bound), or None. The range always ends at ``next_seq - 1``; when it swallows
        the statement that carried the previous drop record, it takes that record's range too,
        so the new record explains everything missing."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, LENGTH(envelope) FROM spool WHERE key_id = ? ORDER BY seq", (key_id,)
            ).fetchall()
            oldest = None
            if rows and max_age_ms > 0:
                oldest = self._db.execute(
                    "SELECT envelope FROM spool WHERE key_id = ? AND seq = ?", (key_id, rows[0][0])
                ).fetchone()
            last = self._db.execute("SELECT value FROM meta WHERE name = ?", (f"dropped:{key_id}",)).fetchone()
        if not rows:
            return None
        from_seq: int | None = None
        reason = ""
        if oldest is not None and _end_ms(bytes(oldest[0])) < now_ms - max_age_ms:
            from_seq, reason = int(rows[0][0]), "spool_age"
        elif max_bytes > 0:
            kept = incoming_bytes
            for seq, size in rows:
                if kept + int(size) > max_bytes:
                    from_seq, reason = int(seq), "spool_size"
                    break
                kept += int(size)
        if from_seq is None:
            return None
        if last is not None:
            before_from, before_to, _ = json.loads(last[0])
            if before_to + 1 >= from_seq:  # the carrier of the previous record is dropped now
                from_seq = min(from_seq, int(before_from))
        return DropPlan(from_seq, next_seq - 1, reason)

    def size_bytes(self, key_id: str) -> int:
        """Bytes of the unacknowledged envelopes of ``key_id``."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(envelope)), 0) FROM spool WHERE key_id = ?", (key_id,)
            ).fetchone()
        return int(row[0])

    def backlog(self, key_id: str) -> Backlog:
        """What waits for the collector's acknowledgement under ``key_id``, read at one moment
        (agent/metrics.py): an ack between two reads cannot leave a count without an oldest."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM spool WHERE key_id = ?", (key_id,)
            ).fetchone()
            row = self._db.execute(
                "SELECT envelope FROM spool WHERE key_id = ? ORDER BY seq LIMIT 1", (key_id,)
            ).fetchone()
        oldest = None if row is None else _window_end_ms(bytes(row[0]))
        return Backlog(int(count), int(size), oldest)

    def pending(self, key_id: str, from_seq: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Unacknowledged envelopes with seq >= from_seq, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, envelope FROM spool WHERE key_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (key_id, from_seq, limit),
            ).fetchall()
        return [(int(s), bytes(e)) for s, e in rows]

    def ack(self, key_id: str, up_to_seq: int) -> None:
        """The collector has stored everything up to and including ``up_to_seq``.

        On a full disk the rows stay (deleting needs room in the WAL too) and are deleted
        with a later ack, or resent and acknowledged as duplicates: nothing is lost."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM spool WHERE key_id = ? AND seq <= ?", (key_id, up_to_seq))
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                _logger.debug("spool full: acknowledged statements stay until a later ack (%s)", exc)

    def count(self, key_id: str | None = None) -> int:
        with self._lock:
            if key_id is None:
                row = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM spool WHERE key_id = ?", (key_id,)).fetchone()
        return int(row[0])

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def log_checkpoint(self) -> LogCheckpointRef | None:
        """The latest collector log checkpoint the agent received (kept across restarts), or None."""
        with self._lock:
            row = self._db.execute("SELECT origin, tree_size, root_sha256 FROM log_checkpoint WHERE id = 0").fetchone()
        if row is None:
            return None
        return LogCheckpointRef(origin=str(row[0]), size=int(row[1]), root_sha256=str(row[2]))

    def save_log_checkpoint(self, checkpoint: LogCheckpointRef) -> None:
        """Remember ``checkpoint`` as the latest received. Best effort: on a full disk the
        previous one stays (the agent keeps the new one in memory)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO log_checkpoint (id, origin, tree_size, root_sha256) VALUES (0, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET origin = excluded.origin, tree_size = excluded.tree_size, "
                    "root_sha256 = excluded.root_sha256",
                    (checkpoint.origin, checkpoint.size, checkpoint.root_sha256),
                )
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                _logger.debug("spool full: the latest log checkpoint is kept in memory only (%s)", exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()


_UNREADABLE = (Error, ValueError, KeyError, TypeError)


def _read_end_ms(envelope: bytes) -> int:
    """The window end of a spooled statement (the agent's own bytes); raises ``_UNREADABLE``."""
    doc = json.loads(envelope_from_bytes(envelope).payload)
    return int(doc["predicate"]["window"]["end_ms"])


def _window_end_ms(envelope: bytes) -> int | None:
    """The window end of a spooled statement; None if unreadable."""
    try:
        return _read_end_ms(envelope)
    except _UNREADABLE as exc:
        _logger.debug("a spooled statement has no readable window end: %s", exc)
        return None


def _end_ms(envelope: bytes) -> int:
    """The window end of a spooled statement for the age bound (0 if unreadable: treated as old)."""
    try:
        return _read_end_ms(envelope)
    except _UNREADABLE as exc:
        _logger.warning("a spooled statement has no readable window end (%s); treating it as old", exc)
        return 0
