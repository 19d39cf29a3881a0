"""Ingest: verify signed usage statements, check their chain, store them atomically.

``Ingestor.ingest_batch`` takes the envelopes a stream received (each with the key id the
stream's Hello announced) and returns one result per envelope, in order: ``Accepted``
(stored now, or a duplicate of what was stored before) or ``Refused`` (never stored, with
a stable reason). Each envelope goes through these steps:

1. its key is enrolled and not revoked ("unknown_key", "revoked_key");
2. its payload and signature list are within limits ("too_large");
3. a signature by that key verifies over PAE(payloadType, payload) (DSSE protocol.md;
   "bad_payload_type", "bad_signature"); a signature's keyid is only a hint, and one
   without it, or with an empty or another keyid, is tried with the key too;
4. the verified bytes parse as a usage-window statement ("bad_schema",
   "bad_predicate_type"), JSON that every parser reads alike included (no duplicate
   names, lone surrogates, integers beyond 2**53 - 1, NaN: attestation.strictjson); the
   statement names the enrolled node ("node_mismatch") and the signing key
   ("key_mismatch");
5. a seq below the chain head's is a duplicate if its digest equals the stored one
   (accepted, stored once) and equivocation otherwise (refused, kept as evidence in the
   store's conflicts);
6. otherwise ``attestation.chain.check_next`` against the head, which includes earlier
   statements of the same batch ("seq_gap", "prev_mismatch", "window_overlap",
   "energy_decrease", ...); a seq jump that the statement's signed ``dropped`` record
   covers is accepted and recorded as an explained gap (reason "explained_gap" in the
   refusals table, for the operator; the statement itself is stored);
7. everything accepted, the new chain heads, conflicts and refusals are written in one
   transaction; only after it commits are the results returned, so the caller may ack.

A refusal never affects other envelopes and never raises. A store failure raises
``collector.errors.StoreError`` out of ``ingest_batch`` and nothing of the batch is
acknowledged: the agent keeps the envelopes and resends them. ``store_fault_reason`` says
whether such a failure means the store cannot write (locked, disk full, I/O, connection) or
that it refused this batch's data; collector.service holds back the statements behind a
failed commit, so that none is chain-checked against a head that lacks the failed batch.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from attestation import dsse
from attestation.chain import AGENT_START_EVENT, ChainHead, advance, check_next, explained_gap
from attestation.dsse import Envelope
from attestation.errors import ChainError, KeyFileError, SchemaError, VerificationError
from attestation.keys import PublicKey, key_id_of
from attestation.statement import UsageWindow, parse_statement
from collector.errors import StoreConflictError, StoreError
from collector.integrity import SEVERITY, IntegrityFinding
from collector.store.base import ConflictRecord, KeyRecord, RefusalRecord, StatementRecord, Store

_logger = logging.getLogger(__name__)

# A statement for 8 GPUs with a 60-bucket series is about 25 KB; 1 MiB leaves room for
# large nodes and is still small enough that a hostile stream cannot exhaust memory.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
DEFAULT_MAX_SIGNATURES = 8
_MAX_MESSAGE_CHARS = 1000
# Retries of the chain step when another writer stored the same (key, seq) first.
_CONFLICT_RETRIES = 2


@dataclass(frozen=True)
class Accepted:
    """The statement is durably stored (``duplicate``: it already was, and was not stored again)."""

    seq: int
    duplicate: bool
    window: UsageWindow
    key_id: str
    digest: str
    # Seqs (first, last) missing before this statement that its signed ``dropped`` record explains.
    gap: tuple[int, int] | None = None

    accepted = True


@dataclass(frozen=True)
class Refused:
    """The statement was refused and will never be stored. ``seq`` is None when it could not
    be read from verified bytes."""

    seq: int | None
    reason: str
    message: str
    key_id: str

    accepted = False


IngestResult = Accepted | Refused


@dataclass(frozen=True)
class _Verified:
    """An envelope that passed steps 1-4."""

    index: int
    key: KeyRecord
    envelope: Envelope
    window: UsageWindow
    digest: str


@dataclass(frozen=True)
class VerifiedBatch:
    """A batch after steps 1-4 (``Ingestor.verify_batch``), for ``Ingestor.commit_batch``."""

    size: int
    now_ms: int
    results: list[IngestResult | None]  # the refusals of steps 1-4; None where verified
    refusals: list[RefusalRecord]
    verified: list[_Verified]
    refused_at: list[int] = field(default_factory=list)  # the item index of each of ``refusals``

    def subset(self, keep: Sequence[int]) -> VerifiedBatch:
        """The batch of items ``keep`` (ascending indices) alone, re-indexed from 0: the others
        are neither chain-checked nor recorded as refused (collector.service leaves out the
        envelopes of a stream that a failed commit ended)."""
        new_index = {old: new for new, old in enumerate(keep)}
        assert len(self.refused_at) == len(self.refusals), "refused_at must name each refusal's item"
        return VerifiedBatch(
            size=len(keep),
            now_ms=self.now_ms,
            results=[self.results[i] for i in keep],
            refusals=[r for r, i in zip(self.refusals, self.refused_at, strict=True) if i in new_index],
            verified=[replace(v, index=new_index[v.index]) for v in self.verified if v.index in new_index],
            refused_at=[new_index[i] for i in self.refused_at if i in new_index],
        )


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _clean(text: str) -> str:
    """A message safe to store and to put in a protobuf string: valid UTF-8, bounded."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


class Ingestor:
    """Verifies, chains and stores statement batches (see the module docstring).

    Safe to share between the gRPC server's threads: signature verification runs
    concurrently, the chain check and the write of a batch are serialised.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_signatures: int = DEFAULT_MAX_SIGNATURES,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        on_finding: Callable[[IntegrityFinding], None] | None = None,
    ) -> None:
        self._store = store
        # Called with each integrity finding once the store has recorded it (metrics).
        self._on_finding = on_finding
        self._max_payload_bytes = max_payload_bytes
        self._max_signatures = max_signatures
        self._clock_ms = clock_ms
        self._chain_lock = threading.Lock()

    def ingest_batch(self, items: Sequence[tuple[str, Envelope]]) -> list[IngestResult]:
        """Verify, chain and store ``items`` (hello key id, envelope); one result per item, in order.

        Returns after the accepted statements are durably stored. Raises StoreError only
        when the store fails, in which case nothing of the batch may be acknowledged.
        """
        return self.commit_batch(self.verify_batch(items))

    def verify_batch(self, items: Sequence[tuple[str, Envelope]]) -> VerifiedBatch:
        """Steps 1-4 of ``ingest_batch``: no chain state, so batches may be verified while an
        earlier one commits (collector.service.IngestBatcher). Raises StoreError only when the
        store fails."""
        now_ms = self._clock_ms()
        results: list[IngestResult | None] = [None] * len(items)
        refusals: list[RefusalRecord] = []
        refused_at: list[int] = []
        verified: list[_Verified] = []
        keys: dict[str, tuple[KeyRecord, PublicKey] | None] = {}
        # Step 1's lookups, all keys of the batch in one store call (None: ask per key).
        records = self._lookup_keys(items)

        def refuse(index: int, key_id: str, key: KeyRecord | None, seq: int | None, reason: str, msg: str) -> None:
            key_id = _clean(str(key_id))
            msg = _clean(msg)
            results[index] = Refused(seq=seq, reason=reason, message=msg, key_id=key_id)
            refused_at.append(index)
            refusals.append(
                RefusalRecord(
                    at_ms=now_ms,
                    reason=reason,
                    message=msg,
                    node_id=key.node_id if key is not None else None,
                    key_id=key_id,
                    seq=seq,
                )
            )

        # Steps 1-4 need no chain state and run outside the lock.
        for index, (key_id, envelope) in enumerate(items):
            try:
                outcome = self._verify(index, key_id, envelope, keys, records)
            except StoreError:
                raise
            except Exception as exc:  # a bug must not turn one bad envelope into a failed batch
                _logger.exception("unexpected error verifying an envelope for key %r", _clean(str(key_id)))
                refuse(index, str(key_id), None, None, "internal_error", f"unexpected error: {exc!r}")
                continue
            if isinstance(outcome, _Verified):
                verified.append(outcome)
            else:
                key = keys.get(key_id)
                refuse(index, key_id, key[0] if key else None, outcome[0], outcome[1], outcome[2])
        return VerifiedBatch(len(items), now_ms, results, refusals, verified, refused_at)

    def commit_batch(self, batch: VerifiedBatch) -> list[IngestResult]:
        """Steps 5-7 of ``ingest_batch`` for a verified batch; batches must be committed in the
        order their envelopes arrived. Returns after the accepted statements are durably
        stored; raises StoreError when the store fails (nothing of the batch may be acked)."""
        now_ms, results, refusals = batch.now_ms, list(batch.results), list(batch.refusals)
        # Steps 5-7 under the lock, so that two streams of one key cannot both extend it.
        with self._chain_lock:
            verified = self._still_enrolled(batch.verified, results, refusals, now_ms)
            for attempt in range(_CONFLICT_RETRIES + 1):
                findings: list[IntegrityFinding] = []
                chain_results, statements, heads, conflicts, chain_refusals = self._chain(verified, now_ms, findings)
                try:
                    self._store.save_batch(statements, heads, conflicts, [*refusals, *chain_refusals])
                except StoreConflictError:
                    if attempt == _CONFLICT_RETRIES:
                        raise
                    _logger.warning("another writer extended a chain of this batch; checking the batch again")
                    continue
                break
        for index, result in chain_results.items():
            results[index] = result
        self._save_findings(findings)
        self._apply_rotations([r for r in results if isinstance(r, Accepted) and not r.duplicate])
        if refusals or chain_refusals:
            _logger.debug(
                "batch of %d: %d refused (%s)",
                batch.size,
                len(refusals) + len(chain_refusals),
                ", ".join(sorted({r.reason for r in [*refusals, *chain_refusals]})),
            )
        out: list[IngestResult] = []
        for r in results:
            assert r is not None
            out.append(r)
        return out

    def _still_enrolled(
        self,
        verified: Sequence[_Verified],
        results: list[IngestResult | None],
        refusals: list[RefusalRecord],
        now_ms: int,
    ) -> list[_Verified]:
        """Step 1 again, at commit: a key revoked since its batch was verified (by a rotation
        the batch before committed, or by an operator) no longer extends its chain."""
        if not verified:
            return []
        current = self._store.keys_by_id(list(dict.fromkeys(v.key.key_id for v in verified)))
        out = []
        for v in verified:
            record = current.get(v.key.key_id)
            if record is not None and record.revoked_ms is None:
                out.append(v)
                continue
            seq = v.window.chain.seq
            msg = _clean(f"key {v.key.key_id} of node {v.key.node_id!r} was revoked while the statement was checked")
            results[v.index] = Refused(seq=seq, reason="revoked_key", message=msg, key_id=v.key.key_id)
            refusals.append(
                RefusalRecord(
                    at_ms=now_ms, reason="revoked_key", message=msg, node_id=v.key.node_id, key_id=v.key.key_id, seq=seq
                )
            )
        return out

    def _lookup_keys(self, items: Sequence[tuple[str, Envelope]]) -> dict[str, KeyRecord] | None:
        """The enrolled keys among the batch's key ids, in one store call; None when that call
        fails other than with StoreError (an id the store cannot take, e.g. not valid
        UTF-8): ``_verify`` then looks each key up alone, so only the envelopes of that id
        are refused, as before."""
        key_ids = list(dict.fromkeys(key_id for key_id, _ in items if isinstance(key_id, str)))
        if not key_ids:
            return {}
        try:
            return self._store.keys_by_id(key_ids)
        except StoreError:
            raise
        except Exception as exc:
            _logger.debug("batched key lookup failed (%r); looking the keys up one by one", exc)
            return None

    def _verify(
        self,
        index: int,
        key_id: str,
        envelope: Envelope,
        keys: dict[str, tuple[KeyRecord, PublicKey] | None],
        records: dict[str, KeyRecord] | None = None,
    ) -> _Verified | tuple[int | None, str, str]:
        """Steps 1-4. Returns the verified statement or (seq, reason, message).

        ``records``: the batch's enrolled keys from ``Store.keys_by_id`` (None: ask the store)."""
        # 1.
        if key_id not in keys:
            if not isinstance(key_id, str):
                record = None
            elif records is not None:
                record = records.get(key_id)
            else:
                record = self._store.key(key_id)
            keys[key_id] = None if record is None else (record, PublicKey(record.algorithm, record.spki_der))
        known = keys[key_id]
        if known is None:
            return None, "unknown_key", f"key {key_id!r} is not enrolled; enroll the node with a join token"
        key, public = known
        if key.revoked_ms is not None:
            return None, "revoked_key", f"key {key_id} of node {key.node_id!r} was revoked at {key.revoked_ms} ms"
        # 2.
        if len(envelope.payload) > self._max_payload_bytes:
            return None, "too_large", f"payload of {len(envelope.payload)} bytes exceeds {self._max_payload_bytes}"
        if len(envelope.signatures) > self._max_signatures:
            return None, "too_large", f"{len(envelope.signatures)} signatures exceed {self._max_signatures}"
        # 3.
        try:
            payload = dsse.verify(envelope, public)
        except VerificationError as exc:
            # dsse says "unknown_key" when no signature names the key and none verifies with
            # it (keyid is only a hint: an absent, empty or other keyid is tried too): for the
            # collector the key is known (step 1) and the envelope is not signed by it.
            reason = "bad_signature" if exc.reason == "unknown_key" else exc.reason
            return None, reason, str(exc)
        # 4.
        try:
            window = parse_statement(payload)
        except SchemaError as exc:
            return None, exc.reason, str(exc)
        except (ValueError, RecursionError) as exc:  # e.g. an integer beyond int_max_str_digits
            return None, "bad_schema", f"payload is not acceptable JSON: {exc}"
        seq = window.chain.seq
        if window.node_id != key.node_id:
            return seq, "node_mismatch", f"statement names node {window.node_id!r}, key enrolled for {key.node_id!r}"
        if window.chain.key_id != key_id:
            return seq, "key_mismatch", f"statement names key {window.chain.key_id!r}, signed by {key_id}"
        r = window.rotation
        if r is not None:
            try:
                PublicKey.from_spki(r.new_key_spki)
            except KeyFileError as exc:
                return seq, "bad_rotation", f"$.predicate.rotation.new_key_spki: {exc}"
            if key_id_of(r.new_key_spki) != r.new_key_id:
                return (
                    seq,
                    "bad_rotation",
                    f"rotation names key {r.new_key_id} but carries key {key_id_of(r.new_key_spki)}",
                )
        if not _utf8(window.boot_id):
            return seq, "bad_schema", "$.predicate.node.boot_id: not valid Unicode"
        return _Verified(index=index, key=key, envelope=envelope, window=window, digest=envelope.digest())

    def _save_findings(self, findings: Sequence[IntegrityFinding]) -> None:
        """Integrity findings, after the batch committed (collector.integrity). Never raises:
        the statements are stored and will be acknowledged either way."""
        for f in findings:
            _logger.warning(
                "integrity finding %s: %s of node %s, key %s: %s", f.id, f.kind, f.node_id, f.key_id, f.message
            )
            try:
                self._store.save_finding(f.id, f.kind, "", SEVERITY, f.started_ms, f.detected_ms, f.json_text())
            except Exception:
                _logger.exception("could not store integrity finding %s", f.id)
                continue
            if self._on_finding is not None:
                try:
                    self._on_finding(f)
                except Exception:
                    _logger.exception("integrity finding %s is stored; reporting it failed", f.id)

    def _rotation_problem(self, v: _Verified) -> str | None:
        """Why the chain start ``v`` does not continue its node's previous key, or None."""
        c = v.window.chain
        old = self._store.key(c.prev_key_id or "")
        if old is None or old.node_id != v.key.node_id:
            return f"prev_key_id {c.prev_key_id} is not a key of node {v.key.node_id!r}"
        head = self._store.head(old.key_id)
        if head is None or head.digest != c.prev_key_digest:
            return f"prev_key_digest {c.prev_key_digest} is not the last statement of key {old.key_id}"
        env = self._stored_envelope(old.key_id, head.seq, {})
        rotation = parse_statement(env.payload).rotation if env is not None else None
        if rotation is None or rotation.new_key_id != v.key.key_id:
            return f"the last statement of key {old.key_id} does not hand over to key {v.key.key_id}"
        return None

    def _apply_rotations(self, accepted: Sequence[Accepted]) -> None:
        """For each accepted ``rotation`` statement (its key's last, signed by the old key):
        enroll the new key for the same node without a join token, and retire the old key
        from the end of that statement's window. Never raises."""
        for a in accepted:
            r = a.window.rotation
            if r is None:
                continue
            try:
                if self._store.key(r.new_key_id) is None:
                    token = self._store.create_token(60, self._clock_ms())
                    new_id = self._store.enroll(
                        a.window.node_id, token, r.new_key_spki, r.new_key_assurance, self._clock_ms()
                    )
                    if new_id != r.new_key_id:
                        _logger.error("rotation statement names key %s but its SPKI is key %s", r.new_key_id, new_id)
                self._store.revoke_key(a.key_id, a.window.end_ms)
                _logger.info(
                    "node %s rotated key %s -> %s (statement seq %d)", a.window.node_id, a.key_id, r.new_key_id, a.seq
                )
            except Exception:
                _logger.exception("could not apply the key rotation of %s/%d", a.key_id, a.seq)

    def _stored_envelope(self, key_id: str, seq: int, batch: dict[tuple[str, int], Envelope]) -> Envelope | None:
        if (key_id, seq) in batch:
            return batch[(key_id, seq)]
        for rec in self._store.iter_statements(key_id, from_seq=seq):
            return rec.envelope() if rec.seq == seq else None
        return None

    def _chain(
        self, verified: Sequence[_Verified], now_ms: int, findings: list[IntegrityFinding] | None = None
    ) -> tuple[
        dict[int, IngestResult],
        list[StatementRecord],
        list[ChainHead],
        list[ConflictRecord],
        list[RefusalRecord],
    ]:
        """Steps 5-6 over the verified envelopes, from the store's heads as they are now."""
        results: dict[int, IngestResult] = {}
        statements: list[StatementRecord] = []
        conflicts: list[ConflictRecord] = []
        refusals: list[RefusalRecord] = []
        heads: dict[str, ChainHead | None] = {}
        changed: dict[str, ChainHead] = {}
        batch_digests: dict[tuple[str, int], str] = {}
        batch_envelopes: dict[tuple[str, int], Envelope] = {}
        if findings is None:
            findings = []
        # The heads as the store has them now (re-read on each attempt), one store call.
        stored_heads = self._store.heads(list(dict.fromkeys(v.key.key_id for v in verified))) if verified else {}

        def finding(v: _Verified, kind: str, earlier_seq: int, message: str) -> None:
            earlier = self._stored_envelope(v.key.key_id, earlier_seq, batch_envelopes)
            if earlier is None:
                _logger.warning("no stored statement %s/%d to prove %s with", v.key.key_id, earlier_seq, kind)
                return
            assert findings is not None
            findings.append(
                IntegrityFinding(
                    kind=kind,
                    node_id=v.key.node_id,
                    key_id=v.key.key_id,
                    seq=v.window.chain.seq,
                    detected_ms=now_ms,
                    started_ms=v.window.start_ms,
                    message=_clean(message),
                    evidence=(earlier, v.envelope),
                )
            )

        def refuse(v: _Verified, reason: str, msg: str) -> None:
            msg = _clean(msg)
            results[v.index] = Refused(seq=v.window.chain.seq, reason=reason, message=msg, key_id=v.key.key_id)
            refusals.append(
                RefusalRecord(
                    at_ms=now_ms,
                    reason=reason,
                    message=msg,
                    node_id=v.key.node_id,
                    key_id=v.key.key_id,
                    seq=v.window.chain.seq,
                )
            )

        for v in verified:
            key_id = v.key.key_id
            seq = v.window.chain.seq
            if key_id not in heads:
                heads[key_id] = stored_heads.get(key_id)
            head = heads[key_id]
            expected = 0 if head is None else head.seq + 1
            # 5.
            if seq < expected:
                stored = batch_digests.get((key_id, seq)) or self._store.statement_digest(key_id, seq)
                if stored == v.digest:
                    results[v.index] = Accepted(
                        seq=seq, duplicate=True, window=v.window, key_id=key_id, digest=v.digest
                    )
                elif stored is None:
                    refuse(v, "seq_replay", f"seq {seq} is below the chain head {expected - 1} but is not stored")
                else:
                    _logger.warning(
                        "equivocation: key %s of node %s signed two statements with seq %d (%s, %s)",
                        key_id,
                        v.key.node_id,
                        seq,
                        stored,
                        v.digest,
                    )
                    conflicts.append(
                        ConflictRecord(
                            key_id=key_id,
                            seq=seq,
                            original_digest=stored,
                            digest=v.digest,
                            payload=v.envelope.payload,
                            payload_type=v.envelope.payload_type,
                            signatures=v.envelope.signatures,
                            received_ms=now_ms,
                        )
                    )
                    refuse(
                        v,
                        "equivocation",
                        f"seq {seq} was already stored with digest {stored}; this statement ({v.digest}) "
                        "is kept as evidence",
                    )
                    # A reused seq for a window after the chain head: the chain state went back.
                    rolled_back = head is not None and v.window.start_ms >= head.end_ms
                    finding(
                        v,
                        "rollback" if rolled_back else "equivocation",
                        seq,
                        f"seq {seq} signed twice: stored {stored}, now {v.digest}"
                        + (f" for a window after the chain head (seq {head.seq})" if rolled_back and head else ""),
                    )
                continue
            # 6.
            if seq == 0 and v.window.chain.prev_key_id is not None:
                problem = self._rotation_problem(v)
                if problem is not None:
                    refuse(v, "bad_rotation", problem)
                    continue
            try:
                check_next(head, v.window, v.digest, key_id)
            except ChainError as exc:
                refuse(v, exc.reason, str(exc))
                if exc.reason == "energy_decrease" and head is not None:
                    finding(v, "energy_reset", head.seq, str(exc))
                continue
            if (
                head is not None
                and head.boot_id != v.window.boot_id
                and not any(e.kind == AGENT_START_EVENT for e in v.window.events)
            ):
                finding(
                    v,
                    "unexplained_reboot",
                    head.seq,
                    f"boot id changed from {head.boot_id!r} to {v.window.boot_id!r} on an unbroken chain "
                    "without an agent_start event",
                )
            gap = explained_gap(head, v.window)
            if gap is not None:
                assert v.window.dropped is not None
                _logger.warning(
                    "node %s dropped seq %d..%d unsent (%s); seq %d explains the gap, signed",
                    v.key.node_id,
                    gap[0],
                    gap[1],
                    v.window.dropped.reason,
                    seq,
                )
                refusals.append(
                    RefusalRecord(
                        at_ms=now_ms,
                        reason="explained_gap",
                        message=_clean(
                            f"seq {gap[0]}..{gap[1]} dropped by the agent ({v.window.dropped.reason}); "
                            f"explained by seq {seq}, which was stored"
                        ),
                        node_id=v.key.node_id,
                        key_id=key_id,
                        seq=seq,
                    )
                )
            new_head = advance(head, v.window, v.digest)
            heads[key_id] = new_head
            changed[key_id] = new_head
            batch_digests[(key_id, seq)] = v.digest
            batch_envelopes[(key_id, seq)] = v.envelope
            statements.append(
                StatementRecord(
                    key_id=key_id,
                    seq=seq,
                    node_id=v.window.node_id,
                    start_ms=v.window.start_ms,
                    end_ms=v.window.end_ms,
                    digest=v.digest,
                    payload=v.envelope.payload,
                    payload_type=v.envelope.payload_type,
                    signatures=v.envelope.signatures,
                    received_ms=now_ms,
                )
            )
            results[v.index] = Accepted(
                seq=seq, duplicate=False, window=v.window, key_id=key_id, digest=v.digest, gap=gap
            )
        return results, statements, list(changed.values()), conflicts, refusals


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Why a commit failed (collector.service, metric gpuaudit_collector_store_write_failures_total).
# The store cannot write: "locked" (a lock held elsewhere beyond the store's wait), "disk_full",
# "io_error" (SQLite's EIO and EFBIG, e.g. a file-size limit), "connection" (PostgreSQL gone),
# "other"; the store wrote nothing but could: "conflict" (another collector stored the same
# (key, seq) first), "rejected" (the database refused this batch's data).
STORE_FAULT_REASONS = ("locked", "disk_full", "io_error", "connection", "other", "conflict", "rejected")
# Of those, the faults after which the store is expected to fail every write until it recovers.
CANNOT_WRITE_REASONS = frozenset({"locked", "disk_full", "io_error", "connection", "other"})


def store_fault_reason(exc: BaseException) -> str:
    """Why the store failed a write: one of ``STORE_FAULT_REASONS``, from the driver's error
    that ``exc`` (a StoreError) was raised from (sqlite3 error names, PostgreSQL SQLSTATEs)."""
    if isinstance(exc, StoreConflictError):
        return "conflict"
    cause = exc.__cause__
    if isinstance(cause, sqlite3.Error):
        if isinstance(cause, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError):
            return "rejected"
        name = str(getattr(cause, "sqlite_errorname", ""))
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return "locked"
        if name == "SQLITE_FULL":
            return "disk_full"
        if name.startswith("SQLITE_IOERR"):
            return "io_error"
        return "other"
    sqlstate = getattr(cause, "sqlstate", None)  # psycopg's errors, without importing psycopg
    if cause is not None and type(cause).__module__.startswith("psycopg"):
        if not sqlstate:
            return "connection"  # no server answer: the connection is gone
        if sqlstate in ("55P03", "57014") or sqlstate.startswith("40"):
            return "locked"  # lock_not_available, query_canceled (a timeout), serialization/deadlock
        if sqlstate == "53100":
            return "disk_full"
        if sqlstate.startswith("58"):
            return "io_error"
        if sqlstate.startswith(("08", "57P")):
            return "connection"
        if sqlstate.startswith(("22", "23", "42")):
            return "rejected"
    return "other"
