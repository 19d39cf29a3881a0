"""The collector's store: the interface every backend implements, one protocol per concern.

``collector.store.sqlite.SqliteStore`` is the default backend and
``collector.store.postgres.PostgresStore`` the one for several collectors; both implement
``Store`` through the SQL they share (``collector.store.sql``) and pass the same contract
tests (tests/unit/collector/test_store_contract.py). ``Store`` is the union of the
per-concern protocols below; code that needs one concern only may ask for that one. The
records (``collector.store.records``) are re-exported here.

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
- A finding's workflow (``record_finding_action``) is append-only history beside the
  detector's row, which it never changes; the finding's state is derived from it
  (``workflow_state``). A backend checks the transition and appends in one transaction,
  with the finding's row locked, so two people closing the same finding cannot both succeed.
- Errors are ``collector.errors.StoreError`` (or ``EnrollmentError`` from ``enroll``,
  ``FindingWorkflowError`` from ``record_finding_action``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from collector.errors import FindingWorkflowError
from collector.store.records import (
    ChainHead,
    CheckpointRecord,
    ConflictRecord,
    FindingAction,
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
    heads_row,
    read_committed_heads,
    signatures_from_json,
    signatures_to_json,
)

__all__ = [
    "ChainHead",
    "CheckpointRecord",
    "ConflictRecord",
    "FINDING_ACTIONS",
    "DetectionLease",
    "EnrollmentStore",
    "FindingAction",
    "FindingRecord",
    "FindingStore",
    "KeyHead",
    "KeyRecord",
    "LogLeafRecord",
    "LogStore",
    "RefusalRecord",
    "RefusalStore",
    "RetentionStore",
    "RevealStore",
    "StatementRecord",
    "StatementStore",
    "Store",
    "TokenRecord",
    "UsageAggregate",
    "WorkflowState",
    "check_finding_action",
    "contiguous_tile_roots",
    "heads_params",
    "heads_row",
    "read_committed_heads",
    "signatures_from_json",
    "signatures_to_json",
    "workflow_state",
]

# -- the findings workflow: its rules (both backends check them the same way) -------------

FINDING_ACTIONS = ("acknowledge", "assign", "close", "reopen")


@dataclass(frozen=True)
class WorkflowState:
    """Where a finding stands: "open", "acknowledged" or "closed", and who it is assigned to."""

    state: str = "open"
    assignee: str | None = None


def _apply(current: WorkflowState, action: FindingAction) -> WorkflowState:
    if action.action == "acknowledge":
        return WorkflowState("acknowledged", current.assignee)
    if action.action == "assign":  # assigning someone acknowledges an open finding
        return WorkflowState("acknowledged", action.assignee)
    if action.action == "close":
        return WorkflowState("closed", current.assignee)
    if action.action == "reopen":  # the assignee stays, to pick it up again
        return WorkflowState("open", current.assignee)
    return current


def workflow_state(actions: Iterable[FindingAction]) -> WorkflowState:
    """The state a finding's actions (in recorded order) leave it in: open -> acknowledged
    (acknowledge, or assign) -> closed; reopen -> open. No actions: open, unassigned."""
    state = WorkflowState()
    for action in actions:
        state = _apply(state, action)
    return state


def check_finding_action(current: WorkflowState, action: FindingAction) -> WorkflowState:
    """The state after ``action``, or FindingWorkflowError if it does not fit ``current``:
    acknowledge an open finding; assign or close one not closed; reopen a closed one."""
    fid = action.finding_id
    if action.action not in FINDING_ACTIONS:
        raise FindingWorkflowError(
            f"finding action {action.action!r} is not one of {', '.join(FINDING_ACTIONS)}", reason="bad_action"
        )
    if not action.actor.strip():
        raise FindingWorkflowError(f"finding {fid}: {action.action} needs who does it", reason="bad_action")
    if action.action == "assign":
        if not (action.assignee or "").strip():
            raise FindingWorkflowError(f"finding {fid}: assign needs whom to assign it to", reason="bad_action")
    elif action.assignee is not None:
        raise FindingWorkflowError(f"finding {fid}: only assign names an assignee", reason="bad_action")
    elif not action.reason.strip():
        raise FindingWorkflowError(f"finding {fid}: {action.action} needs a reason", reason="bad_action")
    allowed = {
        "acknowledge": ("open",),
        "assign": ("open", "acknowledged"),
        "close": ("open", "acknowledged"),
        "reopen": ("closed",),
    }[action.action]
    if current.state not in allowed:
        raise FindingWorkflowError(
            f"finding {fid} is {current.state}: cannot {action.action} it"
            + ("; reopen it first" if current.state == "closed" else ""),
            reason="bad_transition",
        )
    return _apply(current, action)


class EnrollmentStore(Protocol):
    """Join tokens and node keys (collector/ingest.py, the enroll and key CLIs)."""

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


class StatementStore(Protocol):
    """Chain heads and the statements ``save_batch`` stores (collector/ingest.py, export)."""

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


class LogStore(Protocol):
    """The transparency log's leaves, tile roots, checkpoints and committed heads (collector/log.py)."""

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


class RetentionStore(Protocol):
    """Payloads aged into hourly aggregates (collector/retention.py)."""

    def prune_statements(
        self, keys: Sequence[tuple[str, int]], aggregates: Sequence[UsageAggregate], now_ms: int
    ) -> int:
        """Add ``aggregates`` to the hourly table and drop the payloads and signatures of the
        statements ``keys`` (their rows, digests and log leaves stay), in one transaction.
        Pruned statements are no longer returned by ``iter_statements``. Raises
        StoreConflictError, changing nothing, if one of ``keys`` is unknown or already pruned."""
        ...

    def usage_hourly(self, tenant: str | None = None) -> list[UsageAggregate]: ...


class DetectionLease(Protocol):
    """Which collector runs detection on a shared store (collector/follow.py)."""

    def try_detection_lease(self) -> bool:
        """True if this collector is (now) the one that runs detection on this store."""
        ...


class RefusalStore(Protocol):
    """Statements the collector refused (collector/ingest.py, metrics)."""

    def record_refusal(self, refusal: RefusalRecord) -> None: ...

    def refusal_counts(self) -> dict[str, int]:
        """Refusals ever recorded, per reason (exact, even when old rows were pruned)."""
        ...

    def refusals(self, limit: int = 100) -> list[RefusalRecord]:
        """The most recent refusals, newest first."""
        ...


class FindingStore(Protocol):
    """The detector's findings (collector/server.py, warmup, report)."""

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
        """Append one workflow action to a finding (``FINDING_ACTIONS``), after checking it
        fits the finding's state (``check_finding_action``), in one transaction; return it.
        Raises FindingWorkflowError ("unknown_finding", "bad_transition", "bad_action"),
        storing nothing. The finding's own row is never changed."""
        ...

    def finding_actions(self, finding_id: str | None = None) -> list[FindingAction]:
        """The actions recorded on one finding (or on all), in the order they were recorded."""
        ...


class RevealStore(Protocol):
    """The audit of tenant pseudonyms revealed (collector/pseudonyms.py)."""

    def record_reveal(self, at_ms: int, pseudonym: str, tenant: str | None, operator: str, reason: str) -> None:
        """Append to the reveal audit (``tenant`` None: no tenant has the pseudonym)."""
        ...

    def reveals(self) -> list[tuple[int, str, str | None, str, str]]:
        """(at_ms, pseudonym, tenant, operator, reason), oldest first."""
        ...


class Store(
    EnrollmentStore,
    StatementStore,
    LogStore,
    RetentionStore,
    DetectionLease,
    RefusalStore,
    FindingStore,
    RevealStore,
    Protocol,
):
    """What ingest, the gRPC service and the CLIs need from a store: every concern above."""

    def close(self) -> None: ...
