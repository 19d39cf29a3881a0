"""The store's records, and the helpers both backends use to store and read them.

Records are frozen dataclasses; times are integer milliseconds since the Unix epoch
(``*_ms``). ``collector.store.base`` re-exports them with the ``Store`` interface.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from attestation.chain import ChainHead
from attestation.dsse import Envelope, Signature
from attestation.heads import KeyHead

__all__ = [
    "ChainHead",
    "CheckpointRecord",
    "ConflictRecord",
    "FindingAction",
    "FindingRecord",
    "KeyHead",
    "KeyRecord",
    "LogLeafRecord",
    "RefusalRecord",
    "StatementRecord",
    "TokenRecord",
    "UsageAggregate",
    "contiguous_tile_roots",
    "heads_params",
    "heads_row",
    "read_committed_heads",
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
class FindingAction:
    """One step of a finding's workflow, as recorded: who did what, to whom, why and when."""

    finding_id: str
    action: str  # one of collector.store.base.FINDING_ACTIONS
    actor: str
    assignee: str | None  # "assign" only
    reason: str  # "" only for an "assign" given no reason
    at_ms: int


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
