"""Offline verification of a vendor bundle (docs/formats.md, "Vendor bundle v1").

A chip vendor runs this without trusting the data center: every envelope is checked
against its node's enrolled key, every chain is re-walked with the same rules the
collector applies (``attestation.chain.check_next``), every envelope's leaf is
recomputed from its bytes and proven to be in the log's signed checkpoint, and the
checkpoint is proven consistent with one the vendor kept from an earlier bundle.

Like keylime's verifier, ``verify_bundle`` does not stop at the first problem: it
collects every ``Failure`` with the step it belongs to and a stable reason, and returns
a ``Report`` (``Report.raise_for_failures`` raises for callers that prefer that). Only a
bundle that cannot be read at all (not JSON, truncated, wrong media type, missing
sections) ends verification early, with one "malformed_bundle" failure.

Needs nothing outside the ``attestation`` package (protobuf, cryptography).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from attestation import dsse, strictjson
from attestation.cc import CC_EVENT, parse_cc_detail, verify_cc_report
from attestation.chain import ChainHead, advance, check_next, explained_gap
from attestation.checkpoint import Checkpoint, parse_checkpoint_body, parse_note, verify_checkpoint
from attestation.dsse import Envelope
from attestation.errors import (
    ChainError,
    CheckpointError,
    Error,
    KeyFileError,
    ProofError,
    SchemaError,
    VerificationError,
)
from attestation.keys import PublicKey, key_id_of
from attestation.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from attestation.statement import UNATTRIBUTED, UsageWindow, parse_statement

_logger = logging.getLogger(__name__)

BUNDLE_MEDIA_TYPE = "application/vnd.gpuaudit.bundle.v1+json"
MS_PER_HOUR = 3_600_000
MJ_PER_KWH = 3_600_000_000

# Steps, in the order they run; each failure names one.
STEPS = (
    "bundle",
    "checkpoint",
    "enrollment",
    "signature",
    "chain",
    "inclusion",
    "seen_checkpoints",
    "consistency",
    "cc_attestation",
    "tenants",
)
TENANT_SUMMARIES_PAYLOAD_TYPE = "application/vnd.gpuaudit.tenant-summaries.v1+json"


class BundleError(VerificationError):
    """The bundle cannot be read: not JSON, truncated, the wrong media type or missing sections."""

    reason = "malformed_bundle"


@dataclass(frozen=True)
class Failure:
    """One verification problem: the step, a stable reason, and what a person needs to know."""

    step: str
    reason: str
    message: str
    entry: int | None = None  # index into the bundle's entries
    key_id: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "reason": self.reason,
            "message": self.message,
            "entry": self.entry,
            "key_id": self.key_id,
            "seq": self.seq,
        }

    def __str__(self) -> str:
        where = []
        if self.entry is not None:
            where.append(f"entry {self.entry}")
        if self.key_id is not None:
            where.append(f"key {self.key_id[:19]}…")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        return f"[{self.step}] {self.reason}: " + (f"{', '.join(where)}: " if where else "") + self.message


@dataclass
class TenantUsage:
    gpu_ms: int = 0
    energy_mj: int = 0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_ms / MS_PER_HOUR

    @property
    def energy_kwh(self) -> float:
        return self.energy_mj / MJ_PER_KWH


@dataclass
class GpuUsage:
    """Usage of one GPU (by serial, or ``uuid:<UUID>`` when the serial could not be read)."""

    serial: str
    node_ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    tenants: dict[str, TenantUsage] = field(default_factory=dict)
    windows: list[tuple[int, int]] = field(default_factory=list)
    windows_without_energy: int = 0

    def gaps(self) -> list[tuple[int, int]]:
        """Intervals between the first and last window that no statement covers."""
        out: list[tuple[int, int]] = []
        end: int | None = None
        for s, e in sorted(self.windows):
            if end is not None and s > end:
                out.append((end, s))
            end = e if end is None else max(end, e)
        return out

    def to_json(self) -> dict[str, Any]:
        ws = sorted(self.windows)
        return {
            "serial": self.serial,
            "nodes": sorted(self.node_ids),
            "models": sorted(self.models),
            "first_ms": ws[0][0] if ws else None,
            "last_ms": ws[-1][1] if ws else None,
            "windows": len(ws),
            "windows_without_energy": self.windows_without_energy,
            "tenants": {
                t: {
                    "gpu_ms": u.gpu_ms,
                    "gpu_hours": round(u.gpu_hours, 6),
                    "energy_mj": u.energy_mj,
                    "energy_kwh": round(u.energy_kwh, 6),
                }
                for t, u in sorted(self.tenants.items())
            },
            "gaps": [{"start_ms": s, "end_ms": e} for s, e in self.gaps()],
        }


@dataclass
class Report:
    failures: list[Failure] = field(default_factory=list)
    gpus: dict[str, GpuUsage] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    previous: Checkpoint | None = None
    entries: int = 0
    keys: int = 0
    selection: Any = None
    # Pseudonym -> KYC summary, signed by the log key (empty when the bundle carries none).
    tenant_summaries: dict[str, Any] = field(default_factory=dict)
    # Gaps in a chain that a signed ``dropped`` record explains (the agent's spool dropped
    # them unsent): not failures, but usage in them is unknown.
    explained_gaps: list[dict[str, Any]] = field(default_factory=list)
    # Where the log key came from, when the vendor pinned it (``PinnedLogKey.source``);
    # empty: the bundle's own key was trusted on first use.
    log_key_pinned_by: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, step: str, reason: str, message: str, **where: Any) -> None:
        self.failures.append(Failure(step, reason, message, **where))

    def reasons(self) -> set[str]:
        return {f.reason for f in self.failures}

    def raise_for_failures(self) -> None:
        if self.failures:
            first = self.failures[0]
            raise VerificationError(
                f"{len(self.failures)} verification failure(s); first: {first}", reason=first.reason
            )

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "ok": self.ok,
            "entries": self.entries,
            "keys": self.keys,
            "selection": self.selection,
            "checkpoint": None
            if cp is None
            else {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode("ascii")},
            "previous_checkpoint": None if self.previous is None else {"size": self.previous.size},
            "failures": [f.to_json() for f in self.failures],
            "explained_gaps": list(self.explained_gaps),
            "log_key_pinned_by": list(self.log_key_pinned_by),
            "gpus": [self.gpus[s].to_json() for s in sorted(self.gpus)],
            "tenant_summaries": self.tenant_summaries,
        }


# ---------------------------------------------------------------------------
# Reading the bundle


@dataclass(frozen=True)
class _Node:
    node_id: str
    key: PublicKey
    revoked_ms: int | None


@dataclass(frozen=True)
class _Statement:
    entry: int
    key_id: str
    window: UsageWindow
    digest: str


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what}: not base64") from exc


def _int(value: Any, what: str, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if type(value) is not int or value < 0:
        raise BundleError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{what}: expected an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a string")
    return value


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise BundleError(f"{what}: expected a list of base64 hashes")
    out = [_b64(h, f"{what}[{i}]") for i, h in enumerate(value)]
    for i, h in enumerate(out):
        if len(h) != HASH_SIZE:
            raise BundleError(f"{what}[{i}]: {len(h)} bytes, expected {HASH_SIZE}")
    return out


def _load(data: bytes) -> dict[str, Any]:
    try:
        # Held, envelopes and all, to JSON that every parser reads alike (a duplicate
        # "payload" or "spki" must not show one verifier one thing and another another).
        doc = strictjson.loads(data)
    except strictjson.NotIJSONError as exc:
        raise BundleError(f"the bundle is not JSON that every parser reads alike: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"the bundle is not JSON (truncated or damaged?): {exc}") from exc
    doc = _obj(doc, "bundle")
    media = doc.get("media_type")
    if media != BUNDLE_MEDIA_TYPE:
        raise BundleError(f"media_type {media!r}; this verifier reads {BUNDLE_MEDIA_TYPE}")
    for name, kind in (("log", dict), ("nodes", list), ("entries", list)):
        if not isinstance(doc.get(name), kind):
            raise BundleError(f"the bundle's {name!r} is missing or not a{'n object' if kind is dict else ' list'}")
    if doc.get("consistency") is not None:
        _obj(doc["consistency"], "consistency")
    return doc


# ---------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class PinnedLogKey:
    """The collector's log key as the vendor got it outside the bundle, and from where
    (for messages: ``--log-key FILE``, an earlier bundle)."""

    key: PublicKey
    source: str


def verify_bundle(
    data: bytes,
    previous_checkpoint: str | bytes | None = None,
    *,
    cc_root: x509.Certificate | None = None,
    pinned_log_keys: tuple[PinnedLogKey, ...] = (),
) -> Report:
    """Verify a bundle (its bytes) and, optionally, its consistency with an earlier checkpoint.
    ``cc_root`` replaces the pinned NVIDIA root for confidential-computing reports (attestation.cc).
    ``pinned_log_keys``: the bundle's log key must be each of these, and only a pinned key is
    trusted to sign the checkpoint (without any, the bundle's key is trusted on first use)."""
    report = Report()
    try:
        _verify(data, previous_checkpoint, report, cc_root, pinned_log_keys)
    except BundleError as exc:
        report.fail("bundle", exc.reason, str(exc))
    return report


def _verify(
    data: bytes,
    previous_checkpoint: str | bytes | None,
    report: Report,
    cc_root: x509.Certificate | None = None,
    pinned_log_keys: tuple[PinnedLogKey, ...] = (),
) -> None:
    # 0. The bundle parses: JSON, media type, sections.
    doc = _load(data)
    report.selection = doc.get("selection")
    entries: list[Any] = doc["entries"]
    report.entries = len(entries)

    # 1. The log key, and the checkpoint's signature by it (c2sp.org/signed-note).
    log = doc["log"]
    origin = _str(log.get("origin"), "log.origin")
    note = _str(log.get("checkpoint"), "log.checkpoint")
    log_key: PublicKey | None = None
    try:
        pk = _obj(log.get("public_key"), "log.public_key")
        log_key = PublicKey.from_spki(_b64(pk.get("spki"), "log.public_key.spki"))
    except (BundleError, KeyFileError) as exc:
        report.fail("checkpoint", "bad_log_key", f"the log's public key is unusable: {exc}")
    # 1a. A pinned log key: the bundle's must be the same, and only the pinned key is trusted.
    for pin in pinned_log_keys:
        report.log_key_pinned_by.append(pin.source)
        if log_key is None or log_key.spki_der != pin.key.spki_der:
            report.fail(
                "checkpoint",
                "log_key_mismatch",
                f"the bundle's log key {log_key.key_id if log_key else '(unusable)'} is not the log key "
                f"{pin.key.key_id} pinned by {pin.source}: the bundle is not from that collector, or its log key "
                "changed (confirm a new key with the data center before trusting it)",
            )
    if pinned_log_keys:
        log_key = pinned_log_keys[0].key
    checkpoint: Checkpoint | None = None
    if log_key is not None:
        try:
            checkpoint = verify_checkpoint(note, origin, log_key, origin=origin)
        except CheckpointError as exc:
            report.fail("checkpoint", exc.reason, str(exc))
    if checkpoint is None:
        # Keep going with the unverified checkpoint so every other problem is still reported.
        try:
            checkpoint = parse_checkpoint_body(parse_note(note)[0])
        except CheckpointError as exc:
            report.fail("checkpoint", exc.reason, str(exc))
    report.checkpoint = checkpoint

    # 2. Enrollment records: well formed, key ids match their keys.
    nodes: dict[str, _Node] = {}
    for i, raw in enumerate(doc["nodes"]):
        try:
            rec = _obj(raw, f"nodes[{i}]")
            spki = _b64(rec.get("spki"), f"nodes[{i}].spki")
            key_id = _str(rec.get("key_id"), f"nodes[{i}].key_id")
            node = _Node(
                node_id=_str(rec.get("node_id"), f"nodes[{i}].node_id"),
                key=PublicKey.from_spki(spki),
                revoked_ms=_int(rec.get("revoked_ms"), f"nodes[{i}].revoked_ms", nullable=True),
            )
        except (BundleError, KeyFileError) as exc:
            report.fail("enrollment", "malformed_enrollment", str(exc))
            continue
        if key_id != key_id_of(spki):
            report.fail("enrollment", "key_id_mismatch", f"nodes[{i}] names key {key_id} for key {key_id_of(spki)}")
            continue
        if key_id in nodes:
            report.fail("enrollment", "duplicate_enrollment", f"key {key_id} is enrolled twice", key_id=key_id)
            continue
        nodes[key_id] = node
    report.keys = len(nodes)

    # 3. Each envelope: signed by its enrolled key (DSSE), parses, names its node, signed
    #    before the key was revoked (a statement is signed when its window ends).
    #    Each entry's JSON is dropped once read, and of its envelope only the log leaf is
    #    kept (for step 6): what stays in memory per statement is its parsed window.
    statements: list[_Statement] = []
    parsed: list[tuple[bytes, int, list[bytes]] | None] = []
    last_unnamed: list[str] = []  # the key of the last envelope whose signature named none
    for i, raw in enumerate(entries):
        entries[i] = None
        try:
            e = _obj(raw, f"entries[{i}]")
            index = _int(e.get("leaf_index"), f"entries[{i}].leaf_index")
            proof = _hashes(e.get("inclusion_proof"), f"entries[{i}].inclusion_proof")
            env = Envelope.from_json(e.get("envelope"))
        except (BundleError, Error) as exc:
            report.fail("bundle", "malformed_entry", str(exc), entry=i)
            parsed.append(None)
            continue
        del raw, e
        parsed.append((leaf_hash(env.pae()), index, proof))
        stmt = _verify_envelope(i, env, nodes, report, last_unnamed)
        if stmt is not None:
            statements.append(stmt)

    # 4-5. Chains, windows and energy, per key (attestation.chain.check_next).
    by_key: dict[str, list[_Statement]] = {}
    for s in statements:
        by_key.setdefault(s.key_id, []).append(s)
    for key_id, chain in by_key.items():
        _verify_chain(key_id, chain, report)
    # 5b. Key rotations link one key's chain to the next (docs/formats.md, "Key rotation").
    _verify_rotations(by_key, report)

    # 6. Inclusion of every envelope in the checkpoint (RFC 9162 §2.1.3.2), from the
    #    leaf recomputed from the envelope's own bytes.
    if checkpoint is not None:
        for i, item in enumerate(parsed):
            if item is None:
                continue
            leaf, index, proof = item
            try:
                verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root)
            except ProofError as exc:
                report.fail("inclusion", exc.reason, str(exc), entry=i)

    # 6b. Checkpoints the nodes saw (predicate.log_checkpoint) against the bundle's.
    if checkpoint is not None:
        _verify_seen_checkpoints(doc.get("seen_checkpoints"), origin, checkpoint, by_key, report)

    # 6c. Confidential-computing reports, where statements carry them (attestation.cc).
    for s in statements:
        _verify_cc(s, report, cc_root)

    # 7. Consistency with the vendor's earlier checkpoint (RFC 9162 §2.1.4.2).
    if previous_checkpoint is not None:
        _verify_consistency(doc.get("consistency"), previous_checkpoint, origin, log_key, checkpoint, report)

    # 7b. Tenant KYC summaries, signed by the log key (DSSE).
    if doc.get("tenant_summaries") is not None and log_key is not None:
        _verify_tenant_summaries(doc["tenant_summaries"], log_key, report)

    # 8. Usage per GPU serial and tenant, from the statements whose signature verified.
    _usage(statements, report)


def _verify_envelope(
    i: int, env: Envelope, nodes: dict[str, _Node], report: Report, last: list[str] | None = None
) -> _Statement | None:
    """3. ``keyid`` is an optional, unauthenticated hint that MUST NOT decide anything (DSSE
    protocol.md): the enrolled keys the signatures name are tried first; if none of them
    verifies (no keyid, an empty, unknown or wrong one), every other enrolled key, starting
    with the one that verified the previous such envelope (``last``: a bundle lists each
    key's statements together, so this is one verification per envelope)."""
    named = list(dict.fromkeys(s.keyid for s in env.signatures if s.keyid in nodes))
    payload: bytes | None = None
    key_id = named[0] if named else None
    problem: VerificationError | None = None
    for k in named:
        try:
            payload = dsse.verify(env, nodes[k].key)
        except VerificationError as exc:
            problem = problem or exc
            continue
        key_id = k
        break
    if payload is None:
        hint = last[0] if last and last[0] in nodes else None
        for k in ([hint] if hint else []) + [k for k in nodes if k != hint and k not in named]:
            try:
                payload = dsse.verify(env, nodes[k].key)
            except VerificationError:
                continue
            key_id = k
            if last is not None:
                last[:] = [k]
            break
    if payload is None or key_id is None:
        if problem is not None:
            report.fail("signature", problem.reason, str(problem), entry=i, key_id=key_id)
        else:
            names = [s.keyid for s in env.signatures]
            report.fail("signature", "unknown_key", f"signed by {names}, none of them enrolled in the bundle", entry=i)
        return None
    node = nodes[key_id]
    try:
        window = parse_statement(payload)
    except SchemaError as exc:
        report.fail("signature", exc.reason, str(exc), entry=i, key_id=key_id)
        return None
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond int_max_str_digits
        report.fail("signature", "bad_schema", f"payload is not acceptable JSON: {exc}", entry=i, key_id=key_id)
        return None
    seq = window.chain.seq
    if window.node_id != node.node_id:
        report.fail(
            "signature",
            "node_mismatch",
            f"statement names node {window.node_id!r}, key enrolled for {node.node_id!r}",
            entry=i,
            key_id=key_id,
            seq=seq,
        )
    if node.revoked_ms is not None and window.end_ms > node.revoked_ms:
        report.fail(
            "signature",
            "revoked_key",
            f"window ending {window.end_ms} ms was signed after the key was revoked at {node.revoked_ms} ms",
            entry=i,
            key_id=key_id,
            seq=seq,
        )
    return _Statement(entry=i, key_id=key_id, window=window, digest=env.digest())


def _verify_chain(key_id: str, chain: list[_Statement], report: Report) -> None:
    """Re-walk one key's chain. The bundle lists each key's statements in seq order.

    4a. order: a statement listed after a higher seq is "out_of_order";
    4b. one seq twice: the same statement is "seq_replay", two different ones a "fork";
    4c. the first statement anchors the walk (a bundle may start mid-chain: its prev is
        taken on trust, the log's inclusion proof binds it); every later one must pass
        check_next: seq without gaps, prev = digest of the previous, windows that do not
        overlap, energy counters that do not go back. After a failure the walk continues
        from the failing statement, so one problem is reported once.
    """
    # 4a.
    highest = -1
    seen: dict[int, list[_Statement]] = {}
    for s in chain:
        seq = s.window.chain.seq
        if seq < highest and seq not in seen:
            report.fail(
                "chain",
                "out_of_order",
                f"seq {seq} is listed after seq {highest}",
                entry=s.entry,
                key_id=key_id,
                seq=seq,
            )
        highest = max(highest, seq)
        seen.setdefault(seq, []).append(s)
    # 4b.
    walk: list[_Statement] = []
    for seq in sorted(seen):
        first, *others = seen[seq]
        for o in others:
            if o.digest == first.digest:
                report.fail(
                    "chain",
                    "seq_replay",
                    f"seq {seq} appears again (entries {first.entry} and {o.entry})",
                    entry=o.entry,
                    key_id=key_id,
                    seq=seq,
                )
            else:
                report.fail(
                    "chain",
                    "fork",
                    f"two different statements with seq {seq}: {first.digest} (entry {first.entry}) and "
                    f"{o.digest} (entry {o.entry}); the key signed a fork",
                    entry=o.entry,
                    key_id=key_id,
                    seq=seq,
                )
        walk.append(first)
    # 4c.
    head: ChainHead | None = None
    for s in walk:
        w = s.window
        if head is None and w.chain.seq > 0:
            anchor = ChainHead(key_id=key_id, seq=w.chain.seq - 1, digest=w.chain.prev or "", end_ms=w.start_ms,
                               boot_id=w.boot_id)  # fmt: skip
            current: ChainHead | None = anchor
        else:
            current = head
        try:
            check_next(current, w, s.digest, key_id)
        except ChainError as exc:
            report.fail("chain", exc.reason, str(exc), entry=s.entry, key_id=key_id, seq=w.chain.seq)
        else:
            gap = explained_gap(current, w)
            if gap is not None and w.dropped is not None:
                report.explained_gaps.append(
                    {"key_id": key_id, "node_id": w.node_id, "from_seq": gap[0], "to_seq": gap[1],
                     "reason": w.dropped.reason, "explained_by_seq": w.chain.seq,
                     "start_ms": current.end_ms if current is not None else None, "end_ms": w.start_ms}
                )  # fmt: skip
        head = advance(head, w, s.digest)


def _verify_tenant_summaries(raw: Any, log_key: PublicKey, report: Report) -> None:
    """7b. The summaries envelope is signed by the log key; its payload is {tenants: {pseudonym: summary}}."""
    try:
        env = Envelope.from_json(raw)
        payload = dsse.verify(env, log_key, TENANT_SUMMARIES_PAYLOAD_TYPE)
        doc = strictjson.loads(payload)
        tenants = _obj(_obj(doc, "tenant_summaries payload").get("tenants"), "tenant_summaries.tenants")
    except (Error, BundleError, ValueError, RecursionError) as exc:
        report.fail("tenants", "bad_tenant_summaries", f"the tenant summaries do not verify with the log key: {exc}")
        return
    report.tenant_summaries = dict(tenants)


def _verify_rotations(by_key: dict[str, list[_Statement]], report: Report) -> None:
    """5b-1. a rotation statement carries the key it names and is its key's last;
    5b-2. a chain that starts by rotation (seq 0 with prev_key_id) continues the old key's
          last statement (its digest, its rotation naming this key, epoch + 1) when the
          bundle holds the old key's chain."""
    for key_id, chain in by_key.items():
        ordered = sorted(chain, key=lambda s: s.window.chain.seq)
        # 5b-1.
        rotated_at: _Statement | None = None
        for s in ordered:
            if rotated_at is not None and s.window.chain.seq > rotated_at.window.chain.seq:
                report.fail(
                    "chain",
                    "after_rotation",
                    f"the key signed seq {s.window.chain.seq} after handing over to "
                    f"{rotated_at.window.rotation.new_key_id if rotated_at.window.rotation else '?'} "
                    f"at seq {rotated_at.window.chain.seq}",
                    entry=s.entry,
                    key_id=key_id,
                    seq=s.window.chain.seq,
                )
                break
            r = s.window.rotation
            if r is not None:
                rotated_at = s
                if key_id_of(r.new_key_spki) != r.new_key_id:
                    report.fail(
                        "chain",
                        "bad_rotation",
                        f"rotation names key {r.new_key_id} but carries key {key_id_of(r.new_key_spki)}",
                        entry=s.entry,
                        key_id=key_id,
                        seq=s.window.chain.seq,
                    )
        # 5b-2.
        first = ordered[0]
        c = first.window.chain
        if c.seq != 0 or c.prev_key_id is None or c.prev_key_id not in by_key:
            continue
        old = max(by_key[c.prev_key_id], key=lambda s: s.window.chain.seq)
        problem = None
        if old.window.rotation is None or old.window.rotation.new_key_id != key_id:
            problem = f"the last statement of key {c.prev_key_id} (seq {old.window.chain.seq}) does not hand over to it"
        elif old.digest != c.prev_key_digest:
            problem = f"prev_key_digest {c.prev_key_digest} is not the digest {old.digest} of the hand-over statement"
        elif c.epoch != old.window.chain.epoch + 1:
            problem = f"epoch {c.epoch} does not follow the old key's epoch {old.window.chain.epoch}"
        elif old.window.node_id != first.window.node_id:
            problem = f"the old key belongs to node {old.window.node_id!r}"
        if problem is not None:
            report.fail("chain", "broken_rotation", problem, entry=first.entry, key_id=key_id, seq=0)


def _verify_seen_checkpoints(
    raw: Any, origin: str, checkpoint: Checkpoint, by_key: dict[str, list[_Statement]], report: Report
) -> None:
    """Every log checkpoint a node signed into a statement must be a prefix of the bundle's.

    6b-1. along each key's chain, the tree size a node saw never decreases;
    6b-2. no node saw a tree larger than the bundle's checkpoint;
    6b-3. each (size, root) a node saw is proven consistent with the bundle's checkpoint by
          the bundle's ``seen_checkpoints`` proofs (RFC 9162 §2.1.4.2): a log rewritten after
          nodes recorded its head contradicts their signed statements.
    Checkpoints of other origins (another collector's log) are not checked here.
    """
    proofs: dict[tuple[int, str], list[bytes]] = {}
    if raw is not None:
        if not isinstance(raw, list):
            report.fail("seen_checkpoints", "malformed_bundle", "seen_checkpoints is not a list")
            raw = []
        for i, item in enumerate(raw):
            try:
                o = _obj(item, f"seen_checkpoints[{i}]")
                size = _int(o.get("size"), f"seen_checkpoints[{i}].size")
                root = _str(o.get("root_sha256"), f"seen_checkpoints[{i}].root_sha256")
                proofs[(size, root)] = _hashes(o.get("proof"), f"seen_checkpoints[{i}].proof")
            except BundleError as exc:
                report.fail("seen_checkpoints", "malformed_bundle", str(exc))
    checked: set[tuple[int, str]] = set()
    for key_id, chain in by_key.items():
        highest: tuple[int, int] | None = None  # (size, seq)
        for s in sorted(chain, key=lambda s: s.window.chain.seq):
            lc = s.window.log_checkpoint
            if lc is None or lc.origin != origin:
                continue
            seq = s.window.chain.seq
            # 6b-1.
            if highest is not None and lc.size < highest[0]:
                report.fail(
                    "seen_checkpoints",
                    "checkpoint_rollback",
                    f"the node saw a log of size {lc.size} after one of size {highest[0]} (seq {highest[1]}): "
                    "the log it was shown went back",
                    entry=s.entry,
                    key_id=key_id,
                    seq=seq,
                )
            if highest is None or lc.size >= highest[0]:
                highest = (lc.size, seq)
            seen = (lc.size, lc.root_sha256)
            if seen in checked:
                continue
            checked.add(seen)
            # 6b-2.
            if lc.size > checkpoint.size:
                report.fail(
                    "seen_checkpoints",
                    "seen_checkpoint_beyond_bundle",
                    f"the node saw a log of size {lc.size}, larger than the bundle's checkpoint ({checkpoint.size}): "
                    "the bundle's checkpoint hides leaves the log had",
                    entry=s.entry,
                    key_id=key_id,
                    seq=seq,
                )
                continue
            # 6b-3.
            proof = proofs.get(seen)
            if proof is None:
                report.fail(
                    "seen_checkpoints",
                    "unproven_seen_checkpoint",
                    f"the bundle carries no consistency proof from the checkpoint of size {lc.size} the node saw",
                    entry=s.entry,
                    key_id=key_id,
                    seq=seq,
                )
                continue
            try:
                verify_consistency(lc.size, checkpoint.size, proof, bytes.fromhex(lc.root_sha256), checkpoint.root)
            except ProofError as exc:
                report.fail(
                    "seen_checkpoints",
                    "seen_checkpoint_inconsistent",
                    f"the log checkpoint of size {lc.size} the node signed into its statement is not a prefix of "
                    f"the bundle's checkpoint of size {checkpoint.size}: the log was rewritten ({exc})",
                    entry=s.entry,
                    key_id=key_id,
                    seq=seq,
                )


def _verify_cc(s: _Statement, report: Report, cc_root: x509.Certificate | None) -> None:
    """6c. Each cc_attestation report is bound to its statement's chain position, parses, and
    is signed by a GPU attestation key certified up to the root (attestation.cc.verify_cc_report;
    certificates checked at the window's end, when the report was made)."""
    w = s.window
    at = dt.datetime.fromtimestamp(w.end_ms / 1000, tz=dt.UTC)
    for g in w.gpus:
        for e in g.events:
            if e.kind != CC_EVENT:
                continue
            try:
                evidence = parse_cc_detail(e.detail)
            except SchemaError as exc:
                problems = [("cc_report_malformed", str(exc))]
            else:
                found = verify_cc_report(evidence, w.chain.key_id, w.chain.seq, w.chain.prev, at=at, root=cc_root)
                problems = [(p.reason, p.message) for p in found]
            for reason, message in problems:
                report.fail(
                    "cc_attestation",
                    reason,
                    f"GPU {g.uuid}: {message}",
                    entry=s.entry,
                    key_id=s.key_id,
                    seq=w.chain.seq,
                )


def _verify_consistency(
    raw: Any,
    previous: str | bytes,
    origin: str,
    log_key: PublicKey | None,
    checkpoint: Checkpoint | None,
    report: Report,
) -> None:
    """7a. the earlier checkpoint is signed by this log's key; 7b. the bundle proves the
    current checkpoint extends it."""
    if log_key is None or checkpoint is None:
        report.fail("consistency", "not_checked", "no usable log key or checkpoint to check consistency against")
        return
    # 7a.
    try:
        prev = verify_checkpoint(previous, origin, log_key, origin=origin)
    except CheckpointError as exc:
        report.fail(
            "consistency",
            "untrusted_previous_checkpoint",
            f"the earlier checkpoint does not verify with this bundle's log key ({exc.reason}: {exc}); "
            "the log key or origin changed, or the file is not a checkpoint of this log",
        )
        return
    report.previous = prev
    # 7b.
    if prev.size > checkpoint.size:
        report.fail(
            "consistency",
            "inconsistent_checkpoint",
            f"the log shrank: the earlier checkpoint has {prev.size} leaves, this one {checkpoint.size}",
        )
        return
    proof: list[bytes] = []
    if prev.size not in (0, checkpoint.size):
        try:
            c = _obj(raw, "consistency")
            if _int(c.get("from_size"), "consistency.from_size") != prev.size:
                report.fail(
                    "consistency",
                    "missing_consistency_proof",
                    f"the bundle proves consistency from size {c.get('from_size')}, not from {prev.size}",
                )
                return
            proof = _hashes(c.get("proof"), "consistency.proof")
        except BundleError as exc:
            report.fail("consistency", "missing_consistency_proof", f"no usable consistency proof: {exc}")
            return
    try:
        verify_consistency(prev.size, checkpoint.size, proof, prev.root, checkpoint.root)
    except ProofError as exc:
        report.fail(
            "consistency",
            "inconsistent_checkpoint",
            f"the checkpoint of size {checkpoint.size} does not extend the earlier one of size {prev.size}: {exc}",
        )


def _usage(statements: list[_Statement], report: Report) -> None:
    done: set[str] = set()
    for s in statements:
        if s.digest in done:
            continue
        done.add(s.digest)
        w = s.window
        for g in w.gpus:
            name = g.serial if g.serial else f"uuid:{g.uuid}"
            gpu = report.gpus.setdefault(name, GpuUsage(serial=name))
            gpu.node_ids.add(w.node_id)
            gpu.models.add(g.model)
            gpu.windows.append((w.start_ms, w.end_ms))
            energy = None
            if g.energy_start_mj is not None and g.energy_end_mj is not None and g.energy_end_mj >= g.energy_start_mj:
                energy = g.energy_end_mj - g.energy_start_mj
            else:
                gpu.windows_without_energy += 1
            shared = 0
            for wl in g.workloads:
                u = gpu.tenants.setdefault(wl.tenant, TenantUsage())
                u.gpu_ms += wl.gpu_ms
                if energy is not None:
                    part = energy * wl.share_permille // 1000
                    u.energy_mj += part
                    shared += part
            if energy is not None and energy > shared:
                gpu.tenants.setdefault(UNATTRIBUTED, TenantUsage()).energy_mj += energy - shared
