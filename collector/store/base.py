"""The collector's store: the interface every backend implements, and its records.

``collector.store.sqlite.SqliteStore`` is the default backend; a PostgreSQL backend will
implement the same ``Store`` protocol and pass the same tests. Records are frozen
dataclasses; times are integer milliseconds since the Unix epoch (``*_ms``).

Contract for every backend:

- ``save_batch`` writes everything it is given in one transaction and returns only after
  the transaction is durable: the caller acknowledges statements after it returns.
- Join tokens are stored as their SHA-256, never in the clear, and are one-time: marking a
  token used and enrolling the key happen atomically.
- ``(key_id, seq)`` is unique among statements. A backend MUST raise
  ``collector.errors.StoreConflictError`` (and store nothing of the batch) when another
  writer stored the same ``(key_id, seq)`` first.
- Every statement ``save_batch`` stores becomes a leaf of the transparency log in the
  same transaction: leaf indices count 0, 1, 2, ... in commit order, without gaps, and
  the leaf hash is SHA-256(0x00 || PAE) (``attestation.merkle``). Leaves and signed
  checkpoints are never changed or deleted.
- Errors are ``collector.errors.StoreError`` (or ``EnrollmentError`` from ``enroll``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from attestation.chain import ChainHead
from attestation.dsse import Envelope, Signature
from attestation.heads import KeyHead

__all__ = [
    "ChainHead",
    "CheckpointRecord",
    "ConflictRecord",
    "FindingRecord",
    "KeyHead",
    "KeyRecord",
    "LogLeafRecord",
    "RefusalRecord",
    "StatementRecord",
    "Store",
    "TokenRecord",
    "UsageAggregate",
    "contiguous_tile_roots",
    "heads_params",
    "heads_row",
    "signatures_from_json",
    "signatures_to_json",
]


@dataclass(frozen=True)
class TokenRecord:
    """A join token as stored: its SHA-256 only."""

    token_sha256: str
    created_ms: int
    expires_ms: int
    used_ms: int | None
    used_by_node: str | None


@dataclass(frozen=True)
class KeyRecord:
    """An enrolled node signing key."""

    key_id: str
    node_id: str
    algorithm: str
    spki_der: bytes
    assurance: str
    enrolled_ms: int
    revoked_ms: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_ms is not None


@dataclass(frozen=True)
class StatementRecord:
    """An accepted statement: the exact signed envelope plus what is indexed about it."""

    key_id: str
    seq: int
    node_id: str
    start_ms: int
    end_ms: int
    digest: str  # hex SHA-256 of the envelope's PAE
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]
    received_ms: int

    def envelope(self) -> Envelope:
        """The envelope exactly as it was signed and received."""
        return Envelope(payload=self.payload, payload_type=self.payload_type, signatures=self.signatures)


@dataclass(frozen=True)
class ConflictRecord:
    """Evidence of equivocation: a validly signed envelope whose (key, seq) was already used."""

    key_id: str
    seq: int
    original_digest: str
    digest: str
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]
    received_ms: int

    def envelope(self) -> Envelope:
        return Envelope(payload=self.payload, payload_type=self.payload_type, signatures=self.signatures)


@dataclass(frozen=True)
class RefusalRecord:
    """A statement the collector refused. ``key_id``/``node_id``/``seq`` are None when unknown."""

    at_ms: int
    reason: str
    message: str
    node_id: str | None = None
    key_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class FindingRecord:
    """A detector finding; ``json_text`` is the finding's full JSON document."""

    finding_id: str
    kind: str
    tenant: str
    severity: str
    started_ms: int
    detected_ms: int
    json_text: str


@dataclass(frozen=True)
class LogLeafRecord:
    """One leaf of the collector's transparency log: the statement (key_id, seq) at ``index``."""

    index: int
    key_id: str
    seq: int
    leaf_hash: bytes  # SHA-256(0x00 || PAE of the statement's envelope)


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint the collector signed: the C2SP signed note and what it commits to."""

    tree_size: int
    root_hash: bytes
    signed_ms: int
    note: str


@dataclass(frozen=True)
class UsageAggregate:
    """What is kept of aged statements: one GPU's use by one tenant in one UTC hour.

    ``tenant`` is "" for time with no workload on the GPU. A window is counted in the hour
    it starts; a GPU shared by several tenants splits its energy and time by their
    ``share_permille``. Mean utilisation = ``util_permille_ms / window_ms``.
    """

    hour_ms: int
    node_id: str
    gpu_uuid: str
    tenant: str
    windows: int
    window_ms: int
    energy_mj: int
    util_permille_ms: int


def contiguous_tile_roots(rows: Sequence[Sequence[Any]], start: int) -> list[bytes]:
    """``log_tile_roots`` from (tile, root) rows in tile order: the roots up to the first gap."""
    roots: list[bytes] = []
    for tile, root in rows:
        if tile != start + len(roots):
            break  # a gap: the tiles after it are read from their leaves
        roots.append(bytes(root))
    return roots


def heads_params(head: KeyHead) -> tuple[object, ...]:
    """A committed head as the row ``log_heads`` stores (serials as a JSON list)."""
    return (
        head.key_id,
        head.node_id,
        head.seq,
        head.leaf_index,
        head.digest,
        head.end_ms,
        json.dumps(list(head.serials), separators=(",", ":")),
    )


def heads_row(row: Sequence[Any]) -> KeyHead:
    key_id, node_id, seq, leaf_index, digest, end_ms, serials = row
    return KeyHead(str(key_id), str(node_id), int(seq), int(leaf_index), str(digest), int(end_ms),
                   tuple(str(s) for s in json.loads(str(serials))))  # fmt: skip


def read_committed_heads(query: Callable[[str], list[Any]]) -> tuple[int, list[KeyHead]]:
    """The heads committed at the latest checkpoint and its tree size (both stores' SQL)."""
    rows = query("SELECT tree_size FROM log_heads_state WHERE id = 1")
    size = int(rows[0][0]) if rows else 0
    heads = query("SELECT key_id, node_id, seq, leaf_index, digest, end_ms, serials FROM log_heads ORDER BY key_id")
    return size, [heads_row(r) for r in heads]


def signatures_to_json(signatures: Sequence[Signature]) -> str:
    """DSSE envelope.md's ``signatures`` array (base64 ``sig``), for storage as text."""
    return json.dumps(
        [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in signatures],
        separators=(",", ":"),
    )


def signatures_from_json(text: str) -> tuple[Signature, ...]:
    return tuple(Signature(keyid=str(s["keyid"]), sig=base64.b64decode(s["sig"])) for s in json.loads(text))


class Store(Protocol):
    """What ingest, the gRPC service and the CLIs need from a store."""

    # -- enrollment -------------------------------------------------------
    def create_token(self, ttl_s: int, now_ms: int) -> str:
        """Create a one-time join token valid for ``ttl_s`` seconds; return the secret (shown once)."""
        ...

    def tokens(self) -> list[TokenRecord]: ...

    def enroll(self, node_id: str, token: str, spki_der: bytes, assurance: str, now_ms: int) -> str:
        """Consume ``token`` and enroll the key; return its key id. Raises EnrollmentError."""
        ...

    def revoke_key(self, key_id: str, now_ms: int) -> bool:
        """Revoke a key; False if it is unknown or already revoked."""
        ...

    def key(self, key_id: str) -> KeyRecord | None: ...

    def keys(self) -> list[KeyRecord]: ...

    def keys_by_id(self, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
        """``key`` for many ids at once: {key id: its record} for the ids that are enrolled
        (revoked keys included, with their ``revoked_ms``); unknown ids are absent, repeated
        ids are looked up once. Backends answer it in one query (or a few, for long lists);
        this default, for a store that subclasses ``Store``, asks ``key`` once per id."""
        out: dict[str, KeyRecord] = {}
        for key_id in dict.fromkeys(key_ids):
            record = self.key(key_id)
            if record is not None:
                out[key_id] = record
        return out

    # -- chains and statements -------------------------------------------
    def head(self, key_id: str) -> ChainHead | None: ...

    def heads(self, key_ids: Sequence[str]) -> dict[str, ChainHead]:
        """``head`` for many ids at once: {key id: its chain head} for the ids that have one;
        ids without a stored statement (or unknown) are absent. Backends answer it in one
        query (or a few, for long lists); this default asks ``head`` once per id."""
        out: dict[str, ChainHead] = {}
        for key_id in dict.fromkeys(key_ids):
            head = self.head(key_id)
            if head is not None:
                out[key_id] = head
        return out

    def next_seq(self, key_id: str) -> int:
        """The seq the key's next statement must carry (0 before its first)."""
        ...

    def statement_digest(self, key_id: str, seq: int) -> str | None: ...

    def save_batch(
        self,
        statements: Sequence[StatementRecord],
        heads: Sequence[ChainHead],
        conflicts: Sequence[ConflictRecord] = (),
        refusals: Sequence[RefusalRecord] = (),
    ) -> None:
        """Write all of it in one durable transaction, or nothing."""
        ...

    def statement_count(self) -> int: ...

    def iter_statements(
        self,
        key_id: str | None = None,
        *,
        from_seq: int = 0,
        window_from_ms: int | None = None,
        window_to_ms: int | None = None,
    ) -> Iterator[StatementRecord]:
        """Statements ordered by (key_id, seq); optionally one key's, and only windows
        overlapping [window_from_ms, window_to_ms)."""
        ...

    def conflicts(self, key_id: str | None = None) -> list[ConflictRecord]: ...

    # -- transparency log -------------------------------------------------
    def log_size(self) -> int:
        """Number of leaves in the log (= statements ever stored)."""
        ...

    def log_leaves(self, start: int = 0, end: int | None = None) -> list[LogLeafRecord]:
        """Leaves with ``start <= index < end`` (default: to the end), in index order."""
        ...

    def leaf_index(self, key_id: str, seq: int) -> int | None:
        """The log leaf index of statement (key_id, seq); None if it was never stored."""
        ...

    def log_tile_roots(self, height: int, start: int, end: int) -> list[bytes]:
        """Stored roots of log tiles ``start <= tile < end`` of ``2**height`` leaves, in order,
        up to the first one missing."""
        ...

    def save_log_tile_roots(self, height: int, start: int, roots: Sequence[bytes]) -> None:
        """Store the roots of tiles ``start, start + 1, ...``; tiles already stored are kept."""
        ...

    def save_checkpoint(self, record: CheckpointRecord) -> None:
        """Store a signed checkpoint (append-only)."""
        ...

    def latest_checkpoint(self) -> CheckpointRecord | None:
        """The checkpoint signed last, or None before the first."""
        ...

    def log_statements(self, start: int, end: int | None = None) -> list[tuple[int, StatementRecord]]:
        """(leaf index, statement) for leaves ``start <= index < end`` whose payload is kept, in order."""
        ...

    def committed_heads(self) -> tuple[int, list[KeyHead]]:
        """The per-key heads last committed (``save_committed_heads``) and the tree size they
        are the heads at: (0, []) before the first (attestation/heads.py)."""
        ...

    def save_committed_heads(self, tree_size: int, heads: Sequence[KeyHead]) -> bool:
        """Record the heads at ``tree_size``: ``heads`` are those that changed since the
        stored size (the others are kept). Does nothing and returns False unless
        ``tree_size`` is beyond the stored size (another collector got there first)."""
        ...

    # -- retention --------------------------------------------------------
    def prune_statements(
        self, keys: Sequence[tuple[str, int]], aggregates: Sequence[UsageAggregate], now_ms: int
    ) -> int:
        """Add ``aggregates`` to the hourly table and drop the payloads and signatures of the
        statements ``keys`` (their rows, digests and log leaves stay), in one transaction.
        Pruned statements are no longer returned by ``iter_statements``. Raises
        StoreConflictError, changing nothing, if one of ``keys`` is unknown or already pruned."""
        ...

    def usage_hourly(self, tenant: str | None = None) -> list[UsageAggregate]: ...

    # -- several collectors -----------------------------------------------
    def try_detection_lease(self) -> bool:
        """True if this collector is (now) the one that runs detection on this store."""
        ...

    # -- refusals ---------------------------------------------------------
    def record_refusal(self, refusal: RefusalRecord) -> None: ...

    def refusal_counts(self) -> dict[str, int]:
        """Refusals ever recorded, per reason (exact, even when old rows were pruned)."""
        ...

    def refusals(self, limit: int = 100) -> list[RefusalRecord]:
        """The most recent refusals, newest first."""
        ...

    # -- findings ---------------------------------------------------------
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
        """Insert or update a finding by id; the earliest ``detected_ms`` is kept."""
        ...

    def findings(self, tenant: str | None = None) -> list[FindingRecord]: ...

    # -- tenant pseudonyms revealed (collector/pseudonyms.py) -------------
    def record_reveal(self, at_ms: int, pseudonym: str, tenant: str | None, operator: str, reason: str) -> None:
        """Append to the reveal audit (``tenant`` None: no tenant has the pseudonym)."""
        ...

    def reveals(self) -> list[tuple[int, str, str | None, str, str]]:
        """(at_ms, pseudonym, tenant, operator, reason), oldest first."""
        ...

    def close(self) -> None: ...
