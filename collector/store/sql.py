"""What the SQLite and PostgreSQL stores share: the dialect that tells them apart, and the
rows they read, each mapped to its record once.

Statements are written once, with ``?`` placeholders; ``Dialect.q`` gives them the
backend's (``%s`` for psycopg). Everything else that differs between the two SQL
dialects is a field of ``Dialect``, named for what it does; what differs in how the
backends run (connections, transactions, locking, migrations, error mapping) stays in
``sqlite.py`` and ``postgres.py``. The methods written on this SQL are in
``collector.store.shared.SqlStore``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from attestation.chain import ChainHead
from attestation.dsse import pae
from attestation.merkle import leaf_hash
from collector.store.records import (
    ConflictRecord,
    KeyRecord,
    StatementRecord,
    UsageAggregate,
    signatures_from_json,
    signatures_to_json,
)

KEY_ASSURANCES = ("software", "tpm", "hsm")
MAX_NODE_ID_CHARS = 253
DEFAULT_MAX_REFUSAL_ROWS = 100_000

# Rows per page of ``iter_statements`` (keyset paging: no lock is held across a page).
PAGE_ROWS = 500
# Ids per query of the batched lookups: below SQLite's bound on host parameters (999
# before 3.32), and one bounded array parameter on PostgreSQL.
LOOKUP_CHUNK = 500


def _same(text: str) -> str:
    return text


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Dialect:
    """The differences between the backends' SQL, and nothing else."""

    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    # Text order: ' COLLATE "C"' where the default collation is not Python's string order.
    collate_c: str = ""
    least: str = "MIN"  # the smaller of two values
    for_update: str = ""  # row lock on a SELECT inside a write transaction
    # Ties broken where the backend gives no stable order of its own.
    token_order: str = "created_ms"
    key_order: str = "node_id, enrolled_ms"
    # A condition on the chain-head upsert ("" for none): concurrent writers' heads only move forward.
    head_guard: str = ""
    # An insert that skips a row already there: "{insert_ignore} INTO t (...) VALUES (...){insert_ignore_end}".
    insert_ignore: str = "INSERT OR IGNORE"
    insert_ignore_end: str = ""
    array_params: bool = False  # ``= ANY(array)`` instead of ``IN (?, ?, ...)``
    # Text as stored: the backend may not hold every Python string (PostgreSQL: no NUL).
    text: Callable[[str], str] = _same
    node_id_ok: Callable[[str], bool] = utf8

    def q(self, sql: str) -> str:
        """``sql`` (``?`` placeholders) in this backend's placeholders."""
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def opt_text(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def key_id_in(self, chunk: Sequence[str], column: str = "key_id") -> tuple[str, list[object]]:
        """A condition ``column`` is one of ``chunk``, and its parameters."""
        if self.array_params:
            return f"{column} = ANY({self.placeholder}::text[])", [list(chunk)]
        return f"{column} IN ({', '.join([self.placeholder] * len(chunk))})", list(chunk)


SQLITE = Dialect(placeholder="?")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def lookup_chunks(key_ids: Sequence[str], text: Callable[[str], str]) -> list[dict[str, list[str]]]:
    """The distinct ``key_ids`` in groups of at most ``LOOKUP_CHUNK`` stored forms, each
    group {stored form (``text``): the ids asked for that map to it}. Ids the backend must
    escape are escaped as ``key`` does, so every id gets the answer ``key`` gives it."""
    groups: list[dict[str, list[str]]] = []
    for key_id in dict.fromkeys(key_ids):
        stored = text(key_id)
        if not groups or (stored not in groups[-1] and len(groups[-1]) >= LOOKUP_CHUNK):
            groups.append({})
        groups[-1].setdefault(stored, []).append(key_id)
    return groups


# -- rows and their records --------------------------------------------------------

KEY_COLUMNS = "key_id, node_id, algorithm, spki_der, assurance, enrolled_ms, revoked_ms"
STATEMENT_COLUMNS = "key_id, seq, node_id, start_ms, end_ms, digest, payload, payload_type, signatures, received_ms"
HEAD_COLUMNS = "seq, digest, end_ms, boot_id, energy_end_mj"
CONFLICT_COLUMNS = "key_id, seq, original_digest, digest, payload, payload_type, signatures, received_ms"
USAGE_COLUMNS = "hour_ms, node_id, gpu_uuid, tenant, windows, window_ms, energy_mj, util_permille_ms"


def key_record(row: Any) -> KeyRecord:
    key_id, node_id, algorithm, spki, assurance, enrolled_ms, revoked_ms = row
    return KeyRecord(key_id, node_id, algorithm, bytes(spki), assurance, enrolled_ms, revoked_ms)


def chain_head(key_id: str, row: Sequence[Any]) -> ChainHead:
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


def head_params(h: ChainHead) -> tuple[object, ...]:
    return (h.key_id, h.seq, h.digest, h.end_ms, h.boot_id, json.dumps(h.energy_end_mj, sort_keys=True))


def statement_record(row: Any) -> StatementRecord:
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


def statement_params(s: StatementRecord) -> tuple[object, ...]:
    return (s.key_id, s.seq, s.node_id, s.start_ms, s.end_ms, s.digest, s.payload, s.payload_type,
            signatures_to_json(s.signatures), s.received_ms)  # fmt: skip


def statement_leaf_hash(s: StatementRecord) -> bytes:
    """The statement's log leaf hash: SHA-256(0x00 || PAE)."""
    return leaf_hash(pae(s.payload_type, s.payload))


def conflict_record(r: Any) -> ConflictRecord:
    return ConflictRecord(
        key_id=str(r[0]),
        seq=int(r[1]),
        original_digest=str(r[2]),
        digest=str(r[3]),
        payload=bytes(r[4]),
        payload_type=str(r[5]),
        signatures=signatures_from_json(str(r[6])),
        received_ms=int(r[7]),
    )


def conflict_params(c: ConflictRecord) -> tuple[object, ...]:
    return (c.key_id, c.seq, c.original_digest, c.digest, c.payload, c.payload_type,
            signatures_to_json(c.signatures), c.received_ms)  # fmt: skip


def usage_aggregate(row: Any) -> UsageAggregate:
    h, n, u, t, w, ms, e, ut = row
    return UsageAggregate(int(h), str(n), str(u), str(t), int(w), int(ms), int(e), int(ut))


def usage_params(a: UsageAggregate) -> tuple[object, ...]:
    return (a.hour_ms, a.node_id, a.gpu_uuid, a.tenant, a.windows, a.window_ms, a.energy_mj, a.util_permille_ms)
