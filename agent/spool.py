"""The agent's durable spool: every signed envelope stays here until the collector acks it.

One SQLite file (WAL, ``synchronous=FULL``): appending an envelope and advancing the
chain state happen in one transaction, so after a crash the agent resumes its chain exactly
where the last durable statement left it and resends whatever was not acknowledged.
``:memory:`` is allowed for replays and tests.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

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
"""


@dataclass(frozen=True)
class ChainState:
    next_seq: int
    last_digest: str | None
    last_end_ms: int | None


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

    def append(self, key_id: str, seq: int, digest: str, envelope: bytes, end_ms: int) -> None:
        """Store a signed envelope and advance the chain in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
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
                self._db.execute("ROLLBACK")
                raise

    def pending(self, key_id: str, from_seq: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Unacknowledged envelopes with seq >= from_seq, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, envelope FROM spool WHERE key_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (key_id, from_seq, limit),
            ).fetchall()
        return [(int(s), bytes(e)) for s, e in rows]

    def ack(self, key_id: str, up_to_seq: int) -> None:
        """The collector has stored everything up to and including ``up_to_seq``."""
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE key_id = ? AND seq <= ?", (key_id, up_to_seq))

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
