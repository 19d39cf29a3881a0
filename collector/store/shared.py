"""``SqlStore``: the ``Store`` methods whose SQL both backends share, written once.

A backend subclasses it and supplies its ``dialect`` (``collector.store.sql.Dialect``),
``_tx`` (one write transaction, yielding a DB-API connection and mapping the driver's
errors to ``StoreError``/``StoreConflictError``), ``_query`` (one read), and the steps
whose SQL or locking truly differ: ``_begin_batch``, ``_claim_leaf_indices`` and
``_drop_payloads``. Which method belongs to which concern is ``collector.store.base``'s.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from attestation.chain import ChainHead
from attestation.errors import KeyFileError
from attestation.keys import PublicKey, key_id_of
from collector.errors import EnrollmentError, FindingWorkflowError
from collector.store import sql
from collector.store.base import FindingAction, check_finding_action, workflow_state
from collector.store.records import (
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
)
from collector.store.sql import (
    CONFLICT_COLUMNS,
    HEAD_COLUMNS,
    KEY_ASSURANCES,
    KEY_COLUMNS,
    MAX_NODE_ID_CHARS,
    STATEMENT_COLUMNS,
    USAGE_COLUMNS,
    Dialect,
    token_sha256,
)

_logger = logging.getLogger(__name__)


class SqlStore:
    """The shared half of ``SqliteStore`` and ``PostgresStore`` (see the module docstring)."""

    dialect: ClassVar[Dialect]
    _max_refusal_rows: int

    # -- what a backend supplies ------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the store is, for messages (a PostgreSQL URL without its password)."""
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        raise NotImplementedError

    def _begin_batch(self, cur: Any) -> None:
        """First step of a ``save_batch`` transaction (PostgreSQL: its lock timeout)."""

    def _claim_leaf_indices(self, cur: Any, count: int) -> int:
        """The first of ``count`` log leaf indices for statements just inserted by ``cur``."""
        raise NotImplementedError

    def _drop_payloads(self, cur: Any, keys: Sequence[tuple[str, int]], now_ms: int) -> int:
        """Drop the payloads of ``keys`` (``prune_statements``); return how many, or raise
        StoreConflictError when one is unknown or already pruned."""
        raise NotImplementedError

    # -- enrollment -------------------------------------------------------------------

    def create_token(self, ttl_s: int, now_ms: int) -> str:
        if ttl_s <= 0:
            raise ValueError(f"token ttl must be positive, got {ttl_s} s")
        # A fixed prefix: a token never starts with "-" (a command line would read it as an
        # option: `--join-token -Xy…`), and secret scanners can recognise it.
        token = "gpa_" + secrets.token_urlsafe(32)
        with self._tx() as conn:
            conn.execute(
                self.dialect.q("INSERT INTO join_tokens (token_sha256, created_ms, expires_ms) VALUES (?, ?, ?)"),
                (token_sha256(token), now_ms, now_ms + ttl_s * 1000),
            )
        return token

    def tokens(self) -> list[TokenRecord]:
        rows = self._query(
            "SELECT token_sha256, created_ms, expires_ms, used_ms, used_by_node FROM join_tokens "
            f"ORDER BY {self.dialect.token_order}"
        )
        return [TokenRecord(*row) for row in rows]

    def enroll(self, node_id: str, token: str, spki_der: bytes, assurance: str, now_ms: int) -> str:
        d = self.dialect
        if not node_id or len(node_id) > MAX_NODE_ID_CHARS or not d.node_id_ok(node_id):
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
            # SQLite's BEGIN IMMEDIATE excludes other writers; on PostgreSQL, FOR UPDATE: a
            # second collector enrolling with the same token waits, then sees it used.
            row = conn.execute(
                d.q(f"SELECT expires_ms, used_ms, used_by_node FROM join_tokens WHERE token_sha256 = ?{d.for_update}"),
                (digest,),
            ).fetchone()
            if row is None:
                raise EnrollmentError("join token is not known to this collector", reason="bad_token")
            expires_ms, used_ms, used_by = row
            if used_ms is not None:
                same = conn.execute(
                    d.q("SELECT 1 FROM node_keys WHERE key_id = ? AND node_id = ?"), (key_id, node_id)
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
            existing = conn.execute(d.q("SELECT node_id FROM node_keys WHERE key_id = ?"), (key_id,)).fetchone()
            if existing is not None:
                raise EnrollmentError(f"key {key_id} is already enrolled for node {existing[0]!r}", reason="key_exists")
            cur = conn.execute(
                d.q("UPDATE join_tokens SET used_ms = ?, used_by_node = ? WHERE token_sha256 = ? AND used_ms IS NULL"),
                (now_ms, node_id, digest),
            )
            if cur.rowcount != 1:  # pragma: no cover - the write lock excludes other writers
                raise EnrollmentError("join token was already used", reason="token_used")
            conn.execute(
                d.q(
                    "INSERT INTO node_keys (key_id, node_id, algorithm, spki_der, assurance, enrolled_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)"
                ),
                (key_id, node_id, public.algorithm, spki_der, assurance, now_ms),
            )
        _logger.info("enrolled node %s with key %s (%s, %s)", node_id, key_id, public.algorithm, assurance)
        return key_id

    def revoke_key(self, key_id: str, now_ms: int) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                self.dialect.q("UPDATE node_keys SET revoked_ms = ? WHERE key_id = ? AND revoked_ms IS NULL"),
                (now_ms, key_id),
            )
            changed = bool(cur.rowcount == 1)
        if changed:
            _logger.info("revoked key %s", key_id)
        return changed

    def key(self, key_id: str) -> KeyRecord | None:
        d = self.dialect
        rows = self._query(d.q(f"SELECT {KEY_COLUMNS} FROM node_keys WHERE key_id = ?"), (d.text(key_id),))
        return sql.key_record(rows[0]) if rows else None

    def keys(self) -> list[KeyRecord]:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM node_keys ORDER BY {self.dialect.key_order}")
        return [sql.key_record(row) for row in rows]

    def keys_by_id(self, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
        out: dict[str, KeyRecord] = {}
        for wanted in sql.lookup_chunks(key_ids, self.dialect.text):
            where, params = self.dialect.key_id_in(list(wanted))
            for row in self._query(f"SELECT {KEY_COLUMNS} FROM node_keys WHERE {where}", params):
                record = sql.key_record(row)
                for key_id in wanted[str(row[0])]:
                    out[key_id] = record
        return out

    # -- chains and statements --------------------------------------------------------

    def head(self, key_id: str) -> ChainHead | None:
        d = self.dialect
        rows = self._query(d.q(f"SELECT {HEAD_COLUMNS} FROM chain_heads WHERE key_id = ?"), (d.text(key_id),))
        return sql.chain_head(key_id, rows[0]) if rows else None

    def heads(self, key_ids: Sequence[str]) -> dict[str, ChainHead]:
        out: dict[str, ChainHead] = {}
        for wanted in sql.lookup_chunks(key_ids, self.dialect.text):
            where, params = self.dialect.key_id_in(list(wanted))
            for row in self._query(f"SELECT key_id, {HEAD_COLUMNS} FROM chain_heads WHERE {where}", params):
                for key_id in wanted[str(row[0])]:
                    out[key_id] = sql.chain_head(key_id, row[1:])
        return out

    def next_seq(self, key_id: str) -> int:
        d = self.dialect
        rows = self._query(d.q("SELECT seq FROM chain_heads WHERE key_id = ?"), (d.text(key_id),))
        return 0 if not rows else int(rows[0][0]) + 1

    def statement_digest(self, key_id: str, seq: int) -> str | None:
        d = self.dialect
        rows = self._query(d.q("SELECT digest FROM statements WHERE key_id = ? AND seq = ?"), (d.text(key_id), seq))
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
        d = self.dialect
        with self._tx() as conn:
            cur = conn.cursor()
            self._begin_batch(cur)
            if statements:
                # Statements first: a (key_id, seq) another writer stored raises here, before
                # the log's leaf indices are claimed.
                cur.executemany(
                    d.q(f"INSERT INTO statements ({STATEMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    [sql.statement_params(s) for s in statements],
                )
                # The statements' log leaves, in the same transaction, in commit order.
                first = self._claim_leaf_indices(cur, len(statements))
                cur.executemany(
                    d.q("INSERT INTO log_leaves (leaf_index, key_id, seq, leaf_hash) VALUES (?, ?, ?, ?)"),
                    [(first + i, s.key_id, s.seq, sql.statement_leaf_hash(s)) for i, s in enumerate(statements)],
                )
            if heads:
                cur.executemany(
                    d.q(
                        "INSERT INTO chain_heads (key_id, seq, digest, end_ms, boot_id, energy_end_mj) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET seq = excluded.seq, "
                        "digest = excluded.digest, end_ms = excluded.end_ms, boot_id = excluded.boot_id, "
                        f"energy_end_mj = excluded.energy_end_mj{d.head_guard}"
                    ),
                    # In key order, so that concurrent writers lock rows in one order.
                    [sql.head_params(h) for h in sorted(heads, key=lambda h: h.key_id)],
                )
            if conflicts:
                cur.executemany(
                    d.q(
                        f"{d.insert_ignore} INTO conflicts ({CONFLICT_COLUMNS}) "
                        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?){d.insert_ignore_end}"
                    ),
                    [sql.conflict_params(c) for c in conflicts],
                )
            if refusals:
                self._insert_refusals(cur, refusals)

    def statement_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM statements")[0][0])

    def iter_statements(
        self,
        key_id: str | None = None,
        *,
        from_seq: int = 0,
        window_from_ms: int | None = None,
        window_to_ms: int | None = None,
    ) -> Iterator[StatementRecord]:
        # Keyset paging: the lock is held per page, never across a yield.
        d = self.dialect
        where = ["pruned_ms IS NULL"]  # payloads aged into aggregates are gone
        params: list[object] = []
        if key_id is not None:
            where.append("key_id = ?")
            params.append(d.text(key_id))
        if from_seq:
            where.append("seq >= ?")
            params.append(from_seq)
        if window_from_ms is not None:
            where.append("end_ms > ?")
            params.append(window_from_ms)
        if window_to_ms is not None:
            where.append("start_ms < ?")
            params.append(window_to_ms)
        # The page order must be Python's string order (COLLATE "C" on PostgreSQL).
        where.append(f"(key_id{d.collate_c}, seq) > (?, ?)")
        query = d.q(
            f"SELECT {STATEMENT_COLUMNS} FROM statements WHERE {' AND '.join(where)} "
            f"ORDER BY key_id{d.collate_c}, seq LIMIT ?"
        )
        after: tuple[object, object] = ("", -1)
        while True:
            page = sql.PAGE_ROWS
            rows = self._query(query, [*params, *after, page])
            for row in rows:
                yield sql.statement_record(row)
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][1])

    def conflicts(self, key_id: str | None = None) -> list[ConflictRecord]:
        query = f"SELECT {CONFLICT_COLUMNS} FROM conflicts"
        params: list[object] = []
        if key_id is not None:
            query += " WHERE key_id = ?"
            params.append(self.dialect.text(key_id))
        rows = self._query(self.dialect.q(query + " ORDER BY id"), params)
        return [sql.conflict_record(r) for r in rows]

    # -- transparency log -------------------------------------------------------------

    def log_size(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM log_leaves")[0][0])

    def log_leaves(self, start: int = 0, end: int | None = None) -> list[LogLeafRecord]:
        query = "SELECT leaf_index, key_id, seq, leaf_hash FROM log_leaves WHERE leaf_index >= ?"
        params: list[object] = [start]
        if end is not None:
            query += " AND leaf_index < ?"
            params.append(end)
        rows = self._query(self.dialect.q(query + " ORDER BY leaf_index"), params)
        return [LogLeafRecord(int(i), str(k), int(q), bytes(h)) for i, k, q, h in rows]

    def leaf_index(self, key_id: str, seq: int) -> int | None:
        rows = self._query(
            self.dialect.q("SELECT leaf_index FROM log_leaves WHERE key_id = ? AND seq = ?"), (key_id, seq)
        )
        return int(rows[0][0]) if rows else None

    def log_tile_roots(self, height: int, start: int, end: int) -> list[bytes]:
        rows = self._query(
            self.dialect.q(
                "SELECT tile, root FROM log_tiles WHERE height = ? AND tile >= ? AND tile < ? ORDER BY tile"
            ),
            (height, start, end),
        )
        return contiguous_tile_roots(rows, start)

    def save_log_tile_roots(self, height: int, start: int, roots: Sequence[bytes]) -> None:
        if not roots:
            return
        with self._tx() as conn:
            conn.cursor().executemany(
                self.dialect.q("INSERT INTO log_tiles (height, tile, root) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"),
                [(height, start + i, root) for i, root in enumerate(roots)],
            )

    def save_checkpoint(self, record: CheckpointRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                self.dialect.q("INSERT INTO checkpoints (tree_size, root_hash, signed_ms, note) VALUES (?, ?, ?, ?)"),
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
        d = self.dialect
        with self._tx() as conn:
            row = conn.execute(f"SELECT tree_size FROM log_heads_state WHERE id = 1{d.for_update}").fetchone()
            if row is None or tree_size <= int(row[0]):
                return False
            conn.cursor().executemany(
                d.q(
                    "INSERT INTO log_heads (key_id, node_id, seq, leaf_index, digest, end_ms, serials) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET node_id = excluded.node_id, "
                    "seq = excluded.seq, leaf_index = excluded.leaf_index, digest = excluded.digest, "
                    "end_ms = excluded.end_ms, serials = excluded.serials"
                ),
                [heads_params(h) for h in heads],
            )
            conn.execute(d.q("UPDATE log_heads_state SET tree_size = ? WHERE id = 1"), (tree_size,))
            return True

    def log_statements(self, start: int, end: int | None = None) -> list[tuple[int, StatementRecord]]:
        cols = ", ".join(f"s.{c.strip()}" for c in STATEMENT_COLUMNS.split(","))
        query = (
            f"SELECT l.leaf_index, {cols} FROM log_leaves l JOIN statements s ON s.key_id = l.key_id "
            "AND s.seq = l.seq WHERE l.leaf_index >= ? AND s.pruned_ms IS NULL"
        )
        params: list[object] = [start]
        if end is not None:
            query += " AND l.leaf_index < ?"
            params.append(end)
        rows = self._query(self.dialect.q(query + " ORDER BY l.leaf_index"), params)
        return [(int(r[0]), sql.statement_record(r[1:])) for r in rows]

    # -- retention --------------------------------------------------------------------

    def prune_statements(
        self, keys: Sequence[tuple[str, int]], aggregates: Sequence[UsageAggregate], now_ms: int
    ) -> int:
        if not keys:
            return 0
        with self._tx() as conn:
            cur = conn.cursor()
            pruned = self._drop_payloads(cur, keys, now_ms)
            cur.executemany(
                self.dialect.q(
                    f"INSERT INTO usage_hourly ({USAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (hour_ms, gpu_uuid, tenant) "
                    "DO UPDATE SET windows = usage_hourly.windows + excluded.windows, "
                    "window_ms = usage_hourly.window_ms + excluded.window_ms, "
                    "energy_mj = usage_hourly.energy_mj + excluded.energy_mj, "
                    "util_permille_ms = usage_hourly.util_permille_ms + excluded.util_permille_ms"
                ),
                [sql.usage_params(a) for a in sorted(aggregates, key=lambda a: (a.hour_ms, a.gpu_uuid, a.tenant))],
            )
        return pruned

    def usage_hourly(self, tenant: str | None = None) -> list[UsageAggregate]:
        c = self.dialect.collate_c
        query = f"SELECT {USAGE_COLUMNS} FROM usage_hourly"
        params: list[object] = []
        if tenant is not None:
            query += " WHERE tenant = ?"
            params.append(tenant)
        rows = self._query(self.dialect.q(f"{query} ORDER BY hour_ms, gpu_uuid{c}, tenant{c}"), params)
        return [sql.usage_aggregate(row) for row in rows]

    # -- refusals ---------------------------------------------------------------------

    def _insert_refusals(self, cur: Any, refusals: Sequence[RefusalRecord]) -> None:
        d = self.dialect
        cur.executemany(
            d.q("INSERT INTO refusals (at_ms, node_id, key_id, seq, reason, message) VALUES (?, ?, ?, ?, ?, ?)"),
            [
                (r.at_ms, d.opt_text(r.node_id), d.opt_text(r.key_id), r.seq, d.text(r.reason), d.text(r.message))
                for r in refusals
            ],
        )
        per_reason: dict[str, int] = {}
        for r in refusals:
            per_reason[d.text(r.reason)] = per_reason.get(d.text(r.reason), 0) + 1
        cur.executemany(
            d.q(
                "INSERT INTO refusal_counts (reason, count) VALUES (?, ?) "
                "ON CONFLICT (reason) DO UPDATE SET count = refusal_counts.count + excluded.count"
            ),
            sorted(per_reason.items()),
        )
        # Keep the newest rows only; the per-reason counts stay exact.
        row = cur.execute("SELECT COALESCE(MAX(id), 0) FROM refusals").fetchone()
        max_id = int(row[0]) if row else 0
        if max_id > self._max_refusal_rows:
            cur.execute(d.q("DELETE FROM refusals WHERE id <= ?"), (max_id - self._max_refusal_rows,))

    def record_refusal(self, refusal: RefusalRecord) -> None:
        with self._tx() as conn:
            self._insert_refusals(conn.cursor(), [refusal])

    def refusal_counts(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self._query("SELECT reason, count FROM refusal_counts")}

    def refusals(self, limit: int = 100) -> list[RefusalRecord]:
        rows = self._query(
            self.dialect.q(
                "SELECT at_ms, reason, message, node_id, key_id, seq FROM refusals ORDER BY id DESC LIMIT ?"
            ),
            (limit,),
        )
        return [RefusalRecord(*row) for row in rows]

    # -- findings ---------------------------------------------------------------------

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
        d = self.dialect
        with self._tx() as conn:
            conn.execute(
                d.q(
                    "INSERT INTO findings (finding_id, kind, tenant, severity, started_ms, detected_ms, json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (finding_id) DO UPDATE SET kind = excluded.kind, "
                    "tenant = excluded.tenant, severity = excluded.severity, started_ms = excluded.started_ms, "
                    f"detected_ms = {d.least}(findings.detected_ms, excluded.detected_ms), json = excluded.json"
                ),
                (finding_id, kind, tenant, severity, started_ms, detected_ms, json_text),
            )

    def findings(self, tenant: str | None = None) -> list[FindingRecord]:
        query = "SELECT finding_id, kind, tenant, severity, started_ms, detected_ms, json FROM findings"
        params: list[object] = []
        if tenant is not None:
            query += " WHERE tenant = ?"
            params.append(tenant)
        rows = self._query(self.dialect.q(f"{query} ORDER BY started_ms, finding_id{self.dialect.collate_c}"), params)
        return [FindingRecord(*row) for row in rows]

    # -- the findings workflow: append-only actions beside the detector's rows --------

    _ACTION_COLUMNS = "finding_id, action, actor, assignee, reason, at_ms"

    def record_finding_action(
        self,
        finding_id: str,
        action: str,
        actor: str,
        reason: str,
        at_ms: int,
        *,
        assignee: str | None = None,
    ) -> FindingAction:
        d = self.dialect
        record = FindingAction(d.text(finding_id), action, d.text(actor), d.opt_text(assignee), d.text(reason), at_ms)
        with self._tx() as conn:
            # The finding's row, locked (PostgreSQL; SQLite's BEGIN IMMEDIATE excludes other
            # writers) and only read: two people closing one finding cannot both succeed.
            found = conn.execute(
                d.q(f"SELECT 1 FROM findings WHERE finding_id = ?{d.for_update}"), (record.finding_id,)
            ).fetchone()
            if found is None:
                raise FindingWorkflowError(f"no finding {finding_id!r} in the store", reason="unknown_finding")
            rows = conn.execute(
                d.q(f"SELECT {self._ACTION_COLUMNS} FROM finding_actions WHERE finding_id = ? ORDER BY id"),
                (record.finding_id,),
            ).fetchall()
            check_finding_action(workflow_state(_finding_action(r) for r in rows), record)
            conn.execute(
                d.q(f"INSERT INTO finding_actions ({self._ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"),
                (record.finding_id, record.action, record.actor, record.assignee, record.reason, record.at_ms),
            )
        _logger.info("finding %s: %s by %s", finding_id, action, actor)
        return record

    def finding_actions(self, finding_id: str | None = None) -> list[FindingAction]:
        query = f"SELECT {self._ACTION_COLUMNS} FROM finding_actions"
        params: list[object] = []
        if finding_id is not None:
            query += " WHERE finding_id = ?"
            params.append(self.dialect.text(finding_id))
        rows = self._query(self.dialect.q(query + " ORDER BY id"), params)
        return [_finding_action(r) for r in rows]

    # -- tenant pseudonyms revealed (collector/pseudonyms.py) -------------------------

    def record_reveal(self, at_ms: int, pseudonym: str, tenant: str | None, operator: str, reason: str) -> None:
        with self._tx() as conn:
            conn.execute(
                self.dialect.q(
                    "INSERT INTO reveal_audit (at_ms, pseudonym, tenant, operator, reason) VALUES (?, ?, ?, ?, ?)"
                ),
                (at_ms, pseudonym, tenant, operator, reason),
            )

    def reveals(self) -> list[tuple[int, str, str | None, str, str]]:
        """(at_ms, pseudonym, tenant, operator, reason), oldest first."""
        rows = self._query("SELECT at_ms, pseudonym, tenant, operator, reason FROM reveal_audit ORDER BY id")
        return [(int(a), str(p), None if t is None else str(t), str(o), str(r)) for a, p, t, o, r in rows]


def _finding_action(row: Any) -> FindingAction:
    finding_id, action, actor, assignee, reason, at_ms = row
    return FindingAction(
        str(finding_id), str(action), str(actor), None if assignee is None else str(assignee), str(reason), int(at_ms)
    )
