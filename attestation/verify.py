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

Completeness (step 9): the checkpoint commits every key's latest statement
(``attestation.heads``); a bundle whose chains stop short of them inside the period
(``tail_missing``) or that leaves out a key its selection covers (``missing_key``) fails,
and the coverage of the exported period is reported per serial and per node, every gap
with its length and cause (``attestation.coverage``). A bundle whose checkpoint commits no
heads (an older collector) verifies with a note that completeness is not proven.

Memory: ``verify_bundle_file`` maps the file and reads it a piece at a time
(``attestation.bundlereader``); of each statement only a slimmed window is kept.

Needs nothing outside the ``attestation`` package (protobuf, cryptography, msgspec).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509

from attestation import dsse, strictjson
from attestation.bundlereader import BundleSource, ReadError
from attestation.cc import CC_EVENT, parse_cc_detail, verify_cc_report
from attestation.chain import ENERGY_RESET_EVENT, ChainHead, advance, check_next, explained_gap
from attestation.checkpoint import Checkpoint, parse_checkpoint_body, parse_note, verify_checkpoint
from attestation.coverage import Coverage, coverage
from attestation.dsse import Envelope, Signature
from attestation.errors import (
    ChainError,
    CheckpointError,
    Error,
    KeyFileError,
    ProofError,
    SchemaError,
    VerificationError,
)
from attestation.heads import HeadsCommitment, KeyHead, heads_root, parse_heads_extension
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
    "completeness",
)
TRUST_PINNED = "pinned"
TRUST_ON_FIRST_USE = "trust_on_first_use"
NO_HEADS_NOTE = (
    "completeness not proven: no committed heads (the bundle's checkpoint predates them): statements after "
    "the last one of each node, and nodes left out entirely, would not show"
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
    key_ids: set[str] = field(default_factory=set)
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

    @property
    def gpu_ms(self) -> int:
        return sum(u.gpu_ms for u in self.tenants.values())

    @property
    def energy_mj(self) -> int:
        return sum(u.energy_mj for u in self.tenants.values())


@dataclass
class SerialSummary:
    """One GPU serial over the bundle's period: usage, coverage, integrity problems."""

    serial: str
    nodes: list[str]
    gpu_ms: int
    energy_mj: int
    coverage: Coverage | None
    problems: int

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "nodes": self.nodes,
            "gpu_hours": round(self.gpu_ms / MS_PER_HOUR, 6),
            "energy_kwh": round(self.energy_mj / MJ_PER_KWH, 6),
            "coverage": None if self.coverage is None else self.coverage.to_json(),
            "problems": self.problems,
        }


@dataclass
class NodeSummary:
    node_id: str
    keys: list[str]
    coverage: Coverage | None
    problems: int
    in_bundle: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "keys": self.keys,
            "in_bundle": self.in_bundle,
            "coverage": None if self.coverage is None else self.coverage.to_json(),
            "problems": self.problems,
        }


@dataclass
class TenantSummary:
    """One tenant (pseudonym) across the bundle: GPU-hours, energy, the coverage of the
    serials it used, and the integrity problems of the nodes that ran it."""

    tenant: str
    gpu_ms: int = 0
    energy_mj: int = 0
    serials: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    covered_ms: int = 0
    period_ms: int = 0
    problems: int = 0

    @property
    def coverage_text(self) -> str:
        tenths = self.covered_ms * 1000 // self.period_ms if self.period_ms else 1000
        return f"{tenths // 10}.{tenths % 10}%"

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "gpu_hours": round(self.gpu_ms / MS_PER_HOUR, 6),
            "energy_kwh": round(self.energy_mj / MJ_PER_KWH, 6),
            "serials": len(self.serials),
            "nodes": len(self.nodes),
            "coverage_of_its_serials": round(self.covered_ms / self.period_ms, 6) if self.period_ms else None,
            "problems": self.problems,
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
    # The log key the checkpoint was checked with ("sha256:" + hex SHA-256 of its DER SPKI).
    log_key_fingerprint: str | None = None
    # The checkpoint's per-key heads (attestation/heads.py); None: it commits to none.
    heads: HeadsCommitment | None = None
    # What was checked for completeness, and what could not be (for a person).
    completeness_notes: list[str] = field(default_factory=list)
    period: tuple[int, int] | None = None
    serials: dict[str, SerialSummary] = field(default_factory=dict)
    nodes: dict[str, NodeSummary] = field(default_factory=dict)
    tenants: dict[str, TenantSummary] = field(default_factory=dict)
    missing_serials: list[str] = field(default_factory=list)  # requested, no statement names them

    @property
    def log_key_trust(self) -> str:
        return TRUST_PINNED if self.log_key_pinned_by else TRUST_ON_FIRST_USE

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
            "log_key": {
                "fingerprint": self.log_key_fingerprint,
                "trust": self.log_key_trust,
                "pinned_by": list(self.log_key_pinned_by),
            },
            "period": None if self.period is None else {"start_ms": self.period[0], "end_ms": self.period[1]},
            "completeness": {
                "heads": None if self.heads is None else {"count": self.heads.count, "signed_ms": self.heads.signed_ms},
                "notes": list(self.completeness_notes),
                "missing_serials": list(self.missing_serials),
            },
            "tenants": [self.tenants[t].to_json() for t in sorted(self.tenants)],
            "serials": [self.serials[s].to_json() for s in sorted(self.serials)],
            "nodes": [self.nodes[n].to_json() for n in sorted(self.nodes)],
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


@dataclass(frozen=True, slots=True)
class _Statement:
    """A verified statement, as much of it as the chain, rotation and completeness checks
    need (``_slim``: no workloads, series or identity; usage was counted when it was read)."""

    entry: int
    key_id: str
    window: UsageWindow
    digest: str
    leaf_index: int


def _slim(w: UsageWindow) -> UsageWindow:
    gpus = tuple(
        msgspec.structs.replace(
            g,
            workloads=(),
            events=tuple(e for e in g.events if e.kind == ENERGY_RESET_EVENT),
            series=None,
            identity={},
            health={},
            unavailable={},
            mig=None,
        )
        for g in w.gpus
    )
    return msgspec.structs.replace(w, gpus=gpus, node_io=None, unavailable={}, events=())


def _shown(value: Any) -> str:
    """A value for a one-line message: short, never a long number or a whole object."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
        return text
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return ascii(value) if len(value) <= 40 else ascii(value[:40])[:-1] + "…'"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)  # = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what}: not base64") from exc


def _int(value: Any, what: str, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if type(value) is not int or value < 0:
        raise BundleError(f"{what}: expected a non-negative integer, got {_shown(value)}")
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


def _envelope(value: Any, what: str) -> Envelope:
    """A DSSE envelope from its JSON form, with a one-line reason when it is malformed."""
    o = _obj(value, what)
    payload = _b64(o.get("payload"), f"{what}.payload")
    ptype = _str(o.get("payloadType"), f"{what}.payloadType")
    raw = o.get("signatures")
    if not isinstance(raw, list):
        raise BundleError(f"{what}.signatures: expected a list")
    sigs = []
    for j, sig in enumerate(raw):
        so = _obj(sig, f"{what}.signatures[{j}]")
        keyid = so.get("keyid", "")
        if not isinstance(keyid, str):
            raise BundleError(f"{what}.signatures[{j}].keyid: expected a string")
        sigs.append(Signature(keyid=keyid, sig=_b64(so.get("sig"), f"{what}.signatures[{j}].sig")))
    return Envelope(payload=payload, payload_type=ptype, signatures=tuple(sigs))


def _open(src: BundleSource) -> dict[str, Any]:
    """0. Every top-level member but the entries, parsed and checked for shape (the entries
    are read one at a time later)."""
    try:
        media = src.member("media_type")
        if media != BUNDLE_MEDIA_TYPE:
            raise BundleError(f"media_type {_shown(media)}; this verifier reads {BUNDLE_MEDIA_TYPE}")
        src.check_members(skip=("media_type",))
        doc = {name: src.member(name) for name in src.members if name != "entries"}
    except strictjson.NotIJSONError as exc:
        raise BundleError(f"the bundle is not JSON that every parser reads alike: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"the bundle is not JSON (truncated or damaged?): {_reason(exc)}") from exc
    for name, kind in (("log", dict), ("nodes", list)):
        if not isinstance(doc.get(name), kind):
            raise BundleError(f"the bundle's {name!r} is missing or not a{'n object' if kind is dict else ' list'}")
    if not src.entries_is_list:
        raise BundleError("the bundle's 'entries' is missing or not a list")
    if doc.get("consistency") is not None:
        _obj(doc["consistency"], "consistency")
    return doc


def _reason(exc: BaseException) -> str:
    """An exception's message for a person: one line, no long numbers echoed back."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "int_max_str_digits" in text or "Exceeds the limit" in text:
        return "a number with too many digits"
    return text if len(text) <= 200 else text[:200] + "…"


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
    return _run(data, previous_checkpoint, cc_root, pinned_log_keys)


def verify_bundle_file(
    path: Path,
    previous_checkpoint: str | bytes | None = None,
    *,
    cc_root: x509.Certificate | None = None,
    pinned_log_keys: tuple[PinnedLogKey, ...] = (),
) -> Report:
    """``verify_bundle`` on a file, mapped into memory and read a piece at a time: memory
    holds what is kept of each statement, not the file. Raises OSError if it cannot be read."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return _run(b"", previous_checkpoint, cc_root, pinned_log_keys)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _run(mm, previous_checkpoint, cc_root, pinned_log_keys)


def _run(
    data: bytes | mmap.mmap,
    previous_checkpoint: str | bytes | None,
    cc_root: x509.Certificate | None,
    pinned_log_keys: tuple[PinnedLogKey, ...],
) -> Report:
    report = Report()
    try:
        try:
            src = BundleSource(data)
        except ReadError as exc:
            raise BundleError(f"the bundle is not JSON (truncated or damaged?): {exc}") from exc
        _verify(src, previous_checkpoint, report, cc_root, pinned_log_keys)
    except BundleError as exc:
        # Nothing else counts when the bundle cannot be read as a whole.
        report = Report(log_key_pinned_by=[p.source for p in pinned_log_keys])
        report.fail("bundle", exc.reason, str(exc))
    return report


@dataclass
class _Usage:
    """What is counted from each statement as it is read (before it is slimmed)."""

    done: set[str] = field(default_factory=set)
    key_tenants: dict[str, set[str]] = field(default_factory=dict)


def _verify(
    src: BundleSource,
    previous_checkpoint: str | bytes | None,
    report: Report,
    cc_root: x509.Certificate | None = None,
    pinned_log_keys: tuple[PinnedLogKey, ...] = (),
) -> None:
    # 0. The bundle parses: JSON, media type, sections.
    doc = _open(src)
    report.selection = doc.get("selection")
    report.entries = len(src)

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
    report.log_key_fingerprint = log_key.key_id if log_key is not None else None
    checkpoint: Checkpoint | None = None
    checkpoint_verified = False
    if log_key is not None:
        try:
            checkpoint = verify_checkpoint(note, origin, log_key, origin=origin)
            checkpoint_verified = True
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
            report.fail(
                "enrollment", "key_id_mismatch", f"nodes[{i}] names key {_shown(key_id)} for key {key_id_of(spki)}"
            )
            continue
        if key_id in nodes:
            report.fail("enrollment", "duplicate_enrollment", f"key {key_id} is enrolled twice", key_id=key_id)
            continue
        nodes[key_id] = node
    report.keys = len(nodes)

    # 3. Each envelope, as it is read: signed by its enrolled key (DSSE), parses, names its
    #    node, signed before the key was revoked (a statement is signed when its window
    #    ends); 6. its leaf, recomputed from its bytes, is in the checkpoint (RFC 9162
    #    §2.1.3.2); 6c. its confidential-computing reports; 8. its usage. What is kept of it
    #    is the slimmed window (``_slim``).
    statements: list[_Statement] = []
    last_unnamed: list[str] = []  # the key of the last envelope whose signature named none
    usage = _Usage()
    entries = src.entries()
    i = -1
    while True:
        try:
            raw = next(entries, None)
        except strictjson.NotIJSONError as exc:
            raise BundleError(f"the bundle is not JSON that every parser reads alike: entries[{i + 1}]: {exc}") from exc
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BundleError(f"entries[{i + 1}] is not JSON (truncated or damaged?): {_reason(exc)}") from exc
        i += 1
        if raw is None:
            break
        try:
            e = _obj(raw, f"entries[{i}]")
            index = _int(e.get("leaf_index"), f"entries[{i}].leaf_index")
            proof = _hashes(e.get("inclusion_proof"), f"entries[{i}].inclusion_proof")
            env = _envelope(e.get("envelope"), f"entries[{i}].envelope")
        except BundleError as exc:
            report.fail("bundle", "malformed_entry", str(exc), entry=i)
            continue
        del raw, e
        if checkpoint is not None:
            try:
                verify_inclusion(leaf_hash(env.pae()), index, checkpoint.size, proof, checkpoint.root)
            except ProofError as exc:
                report.fail("inclusion", exc.reason, str(exc), entry=i)
        stmt = _verify_envelope(i, env, nodes, report, last_unnamed, index)
        if stmt is None:
            continue
        _verify_cc(stmt, report, cc_root)
        _count_usage(stmt, report, usage)
        statements.append(_Statement(stmt.entry, stmt.key_id, _slim(stmt.window), stmt.digest, index))
    # Failures are reported in step order: inclusion (6) after the chains (4-5).
    early = [f for f in report.failures if f.step not in ("inclusion", "cc_attestation")]
    later = [f for f in report.failures if f.step in ("inclusion", "cc_attestation")]
    report.failures[:] = early

    # 4-5. Chains, windows and energy, per key (attestation.chain.check_next).
    by_key: dict[str, list[_Statement]] = {}
    for s in statements:
        by_key.setdefault(s.key_id, []).append(s)
    missing: dict[str, list[tuple[int, int]]] = {}
    for key_id, chain in by_key.items():
        _verify_chain(key_id, chain, report, missing.setdefault(key_id, []))
    # 5b. Key rotations link one key's chain to the next (docs/formats.md, "Key rotation").
    _verify_rotations(by_key, report)
    report.failures.extend(f for f in later if f.step == "inclusion")

    # 6b. Checkpoints the nodes saw (predicate.log_checkpoint) against the bundle's.
    if checkpoint is not None:
        _verify_seen_checkpoints(doc.get("seen_checkpoints"), origin, checkpoint, by_key, report)
    report.failures.extend(f for f in later if f.step == "cc_attestation")

    # 7. Consistency with the vendor's earlier checkpoint (RFC 9162 §2.1.4.2).
    if previous_checkpoint is not None:
        _verify_consistency(doc.get("consistency"), previous_checkpoint, origin, log_key, checkpoint, report)

    # 7b. Tenant KYC summaries, signed by the log key (DSSE).
    if doc.get("tenant_summaries") is not None and log_key is not None:
        _verify_tenant_summaries(doc["tenant_summaries"], log_key, report)

    # 9. Completeness: the committed heads, the period's coverage per serial and node.
    heads = _verify_heads(doc.get("heads"), checkpoint if checkpoint_verified else None, by_key, nodes, report)
    _completeness(doc, by_key, missing, heads, report, usage)


def _count_usage(s: _Statement, report: Report, usage: _Usage) -> None:
    """8. Usage per GPU serial and tenant, from a statement whose signature verified (each
    distinct statement once)."""
    if s.digest in usage.done:
        return
    usage.done.add(s.digest)
    w = s.window
    tenants = usage.key_tenants.setdefault(s.key_id, set())
    for g in w.gpus:
        name = g.serial if g.serial else f"uuid:{g.uuid}"
        gpu = report.gpus.setdefault(name, GpuUsage(serial=name))
        gpu.node_ids.add(w.node_id)
        gpu.key_ids.add(s.key_id)
        gpu.models.add(g.model)
        gpu.windows.append((w.start_ms, w.end_ms))
        energy = None
        if g.energy_start_mj is not None and g.energy_end_mj is not None and g.energy_end_mj >= g.energy_start_mj:
            energy = g.energy_end_mj - g.energy_start_mj
        else:
            gpu.windows_without_energy += 1
        shared = 0
        for wl in g.workloads:
            tenants.add(wl.tenant)
            u = gpu.tenants.setdefault(wl.tenant, TenantUsage())
            u.gpu_ms += wl.gpu_ms
            if energy is not None:
                part = energy * wl.share_permille // 1000
                u.energy_mj += part
                shared += part
        if energy is not None and energy > shared:
            gpu.tenants.setdefault(UNATTRIBUTED, TenantUsage()).energy_mj += energy - shared


def _verify_heads(
    raw: Any,
    checkpoint: Checkpoint | None,
    by_key: dict[str, list[_Statement]],
    nodes: dict[str, _Node],
    report: Report,
) -> dict[str, KeyHead] | None:
    """9a. The checkpoint's heads line (attestation/heads.py) and the bundle's ``heads``
    list, which must hash to it. Returns the heads by key id; None when the checkpoint
    commits to none (an older collector) or could not be verified."""
    if checkpoint is None:
        report.completeness_notes.append("completeness not checked: the checkpoint did not verify")
        return None
    try:
        commitment = parse_heads_extension(checkpoint.extensions)
    except CheckpointError as exc:
        report.fail("completeness", "bad_heads", str(exc))
        return None
    if commitment is None:
        report.completeness_notes.append(NO_HEADS_NOTE)
        return None
    report.heads = commitment
    if raw is None:
        report.fail(
            "completeness",
            "missing_heads",
            f"the checkpoint commits to the heads of {commitment.count} keys, but the bundle does not carry them: "
            "what it leaves out cannot be checked",
        )
        return None
    out: dict[str, KeyHead] = {}
    try:
        if not isinstance(raw, list):
            raise BundleError("heads: expected a list")
        for j, item in enumerate(raw):
            o = _obj(item, f"heads[{j}]")
            serials = o.get("serials")
            if not isinstance(serials, list) or not all(isinstance(x, str) for x in serials):
                raise BundleError(f"heads[{j}].serials: expected a list of strings")
            h = KeyHead(
                key_id=_str(o.get("key_id"), f"heads[{j}].key_id"),
                node_id=_str(o.get("node_id"), f"heads[{j}].node_id"),
                seq=_int(o.get("seq"), f"heads[{j}].seq"),
                leaf_index=_int(o.get("leaf_index"), f"heads[{j}].leaf_index"),
                digest=_str(o.get("digest"), f"heads[{j}].digest"),
                end_ms=_int(o.get("end_ms"), f"heads[{j}].end_ms"),
                serials=tuple(serials),
            )
            if h.key_id in out:
                raise BundleError(f"heads[{j}]: key {_shown(h.key_id)} has two heads")
            out[h.key_id] = h
    except BundleError as exc:
        report.fail("completeness", "bad_heads", f"the bundle's heads are malformed: {exc}")
        return None
    if len(out) != commitment.count or heads_root(out.values()) != commitment.root:
        report.fail(
            "completeness",
            "bad_heads",
            f"the bundle's {len(out)} heads are not the {commitment.count} the checkpoint commits to: "
            "they were altered, or some were left out",
        )
        return None
    for h in out.values():
        if h.leaf_index >= checkpoint.size:
            report.fail(
                "completeness",
                "bad_heads",
                f"the committed head of key {h.key_id} is leaf {h.leaf_index}, beyond the checkpoint's "
                f"{checkpoint.size} leaves",
                key_id=h.key_id,
            )
    for key_id, chain in by_key.items():
        found = out.get(key_id)
        last = max(chain, key=lambda s: s.window.chain.seq)
        if found is None:
            report.fail(
                "completeness",
                "bad_heads",
                "the checkpoint commits no head for this key, though its statements are in the log",
                key_id=key_id,
            )
            continue
        h = found
        node = nodes.get(key_id)
        if node is not None and h.node_id != node.node_id:
            report.fail(
                "completeness",
                "bad_heads",
                f"the committed head names node {_shown(h.node_id)}; the key is enrolled for {node.node_id!r}",
                key_id=key_id,
            )
        if last.window.chain.seq > h.seq:
            report.fail(
                "completeness",
                "bad_heads",
                f"the checkpoint commits seq {h.seq} as the key's latest, but seq {last.window.chain.seq} is in the "
                "log at that checkpoint: the collector signed false heads",
                entry=last.entry,
                key_id=key_id,
                seq=last.window.chain.seq,
            )
            continue
        same = next((s for s in chain if s.window.chain.seq == h.seq), None)
        if same is not None:
            w = same.window
            serials = tuple(sorted({g.serial for g in w.gpus if g.serial}))
            if (same.digest, same.leaf_index, w.end_ms, serials) != (h.digest, h.leaf_index, h.end_ms, h.serials):
                report.fail(
                    "completeness",
                    "bad_heads",
                    f"the committed head (seq {h.seq}) does not describe the statement the bundle holds for it "
                    "(digest, leaf index, window end or serials differ)",
                    entry=same.entry,
                    key_id=key_id,
                    seq=h.seq,
                )
    return out


@dataclass
class _KeyCover:
    node_id: str
    windows: list[tuple[int, int]]
    dropped: list[tuple[int, int]]
    missing: list[tuple[int, int]]
    start_proven: bool
    end_proven: bool


def _period(doc: dict[str, Any], by_key: dict[str, list[_Statement]], heads: HeadsCommitment | None,
            report: Report) -> tuple[int, int] | None:  # fmt: skip
    """The period the bundle was exported for (``selection.since_ms``/``until_ms``; without
    them, from the first window, or to the last window: whether anything came after it is
    the end's ``proven``)."""
    sel = report.selection if isinstance(report.selection, dict) else {}
    since, until = sel.get("since_ms"), sel.get("until_ms")
    since = since if type(since) is int and since >= 0 else None
    until = until if type(until) is int and until >= 0 else None
    starts = [s.window.start_ms for c in by_key.values() for s in c]
    ends = [s.window.end_ms for c in by_key.values() for s in c]
    p0 = since if since is not None else (min(starts) if starts else None)
    p1 = until if until is not None else (max(ends) if ends else None)
    if heads is not None and until is not None and until > heads.signed_ms:
        p1 = heads.signed_ms
        report.completeness_notes.append(
            f"the period ends after the checkpoint was signed ({_time_text(heads.signed_ms)}): "
            "coverage is counted up to the checkpoint"
        )
    if until is None and p1 is not None:
        report.completeness_notes.append(
            f"no end of period stated: coverage is counted up to the last window ({_time_text(p1)})"
        )
    if p0 is None or p1 is None or p1 <= p0:
        return None
    return p0, p1


def _time_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _completeness(
    doc: dict[str, Any],
    by_key: dict[str, list[_Statement]],
    missing: dict[str, list[tuple[int, int]]],
    heads: dict[str, KeyHead] | None,
    report: Report,
    usage: _Usage,
) -> None:
    """9b. Per key: does the bundle prove its start and its end in the period (module
    attestation.coverage)? A key's tail left out is ``tail_missing``; a key the heads show
    active in the period and relevant to the selection, absent from the bundle, is
    ``missing_key``. 9c. Coverage per serial and per node; summaries per tenant."""
    period = _period(doc, by_key, report.heads, report)
    report.period = period
    sel = report.selection if isinstance(report.selection, dict) else {}
    requested = [x for x in sel.get("serials") or [] if isinstance(x, str)]
    sel_nodes = {x for x in sel.get("nodes") or [] if isinstance(x, str)}
    sel_all = sel.get("all") is True
    until = sel.get("until_ms") if type(sel.get("until_ms")) is int else None
    report.missing_serials = sorted(set(requested) - set(report.gpus))
    covers: dict[str, _KeyCover] = {}
    explained: dict[str, list[tuple[int, int]]] = {}
    for g in report.explained_gaps:
        if isinstance(g.get("start_ms"), int) and isinstance(g.get("end_ms"), int):
            explained.setdefault(g["key_id"], []).append((g["start_ms"], g["end_ms"]))
    for key_id, chain in by_key.items():
        ordered = sorted(chain, key=lambda s: s.window.chain.seq)
        first, last = ordered[0], ordered[-1]
        fc = first.window.chain
        start_proven = fc.seq == 0 or (period is not None and first.window.start_ms <= period[0])
        end_proven = False
        h = heads.get(key_id) if heads is not None else None
        if h is not None:
            lc = last.window.chain
            if lc.seq == h.seq and last.digest == h.digest:
                end_proven = True
            elif lc.seq < h.seq:
                if until is not None and last.window.start_ms >= until:
                    end_proven = True  # the first statement after the period: nothing in it was left out
                else:
                    report.fail(
                        "completeness",
                        "tail_missing",
                        f"the bundle stops at seq {lc.seq} (window ending {_time_text(last.window.end_ms)}), but the "
                        f"checkpoint commits seq {h.seq} (ending {_time_text(h.end_ms)}) as the key's latest: "
                        f"statements {lc.seq + 1}..{h.seq} of node {h.node_id!r} were left out",
                        key_id=key_id,
                        seq=lc.seq,
                    )
        covers[key_id] = _KeyCover(
            node_id=first.window.node_id,
            windows=[(s.window.start_ms, s.window.end_ms) for s in ordered],
            dropped=explained.get(key_id, []),
            missing=missing.get(key_id, []),
            start_proven=start_proven,
            end_proven=end_proven,
        )
    absent_nodes: dict[str, list[KeyHead]] = {}
    if heads is not None:
        for h in heads.values():
            if h.key_id in by_key:
                continue
            relevant = sel_all or h.node_id in sel_nodes or bool(set(h.serials) & set(requested))
            if not relevant:
                continue
            if period is not None and h.end_ms > period[0]:
                report.fail(
                    "completeness",
                    "missing_key",
                    f"node {h.node_id!r} signed statements up to {_time_text(h.end_ms)} (seq {h.seq}, committed at "
                    "the checkpoint), but the bundle holds none of them though the selection includes it",
                    key_id=h.key_id,
                )
            else:
                absent_nodes.setdefault(h.node_id, []).append(h)

    # Problems per key: every failure that names a key or an entry of one.
    entry_key = {s.entry: s.key_id for chain in by_key.values() for s in chain}
    problems: dict[str, int] = {}
    for f in report.failures:
        k = f.key_id if f.key_id is not None else entry_key.get(f.entry) if f.entry is not None else None
        if k is not None:
            problems[k] = problems.get(k, 0) + 1

    def merged_cover(keys: list[str], windows: list[tuple[int, int]], absent: bool) -> Coverage | None:
        if period is None:
            return None
        kc = [covers[k] for k in keys if k in covers]
        causes = {
            "dropped": [iv for c in kc for iv in c.dropped],
            "missing": [iv for c in kc for iv in c.missing],
            "absent": [iv for c in kc for iv in c.windows] if absent else [],
        }
        return coverage(
            windows,
            period,
            causes,
            start_proven=bool(kc) and all(c.start_proven for c in kc),
            end_proven=bool(kc) and all(c.end_proven for c in kc),
        )

    for serial, gpu in report.gpus.items():
        keys = sorted(gpu.key_ids)
        report.serials[serial] = SerialSummary(
            serial=serial,
            nodes=sorted(gpu.node_ids),
            gpu_ms=gpu.gpu_ms,
            energy_mj=gpu.energy_mj,
            coverage=merged_cover(keys, gpu.windows, absent=True),
            problems=sum(problems.get(k, 0) for k in keys),
        )
    for serial in report.missing_serials:
        cov = None
        if period is not None:
            cov = coverage([], period, {}, start_proven=heads is not None, end_proven=heads is not None)
        report.serials[serial] = SerialSummary(serial, [], 0, 0, cov, 0)
    node_keys: dict[str, list[str]] = {}
    for key_id, c in covers.items():
        node_keys.setdefault(c.node_id, []).append(key_id)
    for node_id, keys in node_keys.items():
        windows = [iv for k in keys for iv in covers[k].windows]
        report.nodes[node_id] = NodeSummary(
            node_id, sorted(keys), merged_cover(keys, windows, absent=False), sum(problems.get(k, 0) for k in keys)
        )
    for node_id, hs in absent_nodes.items():
        if node_id in report.nodes:
            continue
        cov = None
        if period is not None:  # the heads prove it was silent: its last statement ended before the period
            cov = coverage([], period, {}, start_proven=True, end_proven=True)
        report.nodes[node_id] = NodeSummary(node_id, sorted(h.key_id for h in hs), cov, 0, in_bundle=False)

    # Tenants: usage from the GPUs, coverage of the serials they used, problems of their nodes' keys.
    for serial, gpu in report.gpus.items():
        summary = report.serials[serial]
        for tenant, u in gpu.tenants.items():
            t = report.tenants.setdefault(tenant, TenantSummary(tenant))
            t.gpu_ms += u.gpu_ms
            t.energy_mj += u.energy_mj
            if tenant == UNATTRIBUTED or u.gpu_ms == 0:
                continue
            t.serials.add(serial)
            t.nodes.update(gpu.node_ids)
            if summary.coverage is not None:
                t.covered_ms += summary.coverage.covered_ms
                t.period_ms += summary.coverage.period_ms
    for key_id, tenants in usage.key_tenants.items():
        for tenant in tenants:
            if tenant in report.tenants:
                report.tenants[tenant].problems += problems.get(key_id, 0)
    if heads is not None:
        report.completeness_notes.append(
            f"the checkpoint commits the latest statement of each of {len(heads)} keys at "
            f"{_time_text(report.heads.signed_ms if report.heads else 0)}: a node's statements after the last one "
            "shown, or a selected node left out, would fail"
        )
    if sel.get("tenant") and not (sel_all or sel_nodes or requested):
        report.completeness_notes.append(
            "a tenant selection cannot prove that no other node ran the tenant: ask for --all, --node or --serial "
            "bundles to check that"
        )


def _verify_envelope(
    i: int, env: Envelope, nodes: dict[str, _Node], report: Report, last: list[str] | None = None, leaf_index: int = -1
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
    return _Statement(entry=i, key_id=key_id, window=window, digest=env.digest(), leaf_index=leaf_index)


def _verify_chain(
    key_id: str, chain: list[_Statement], report: Report, missing: list[tuple[int, int]] | None = None
) -> None:
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
            if exc.reason == "seq_gap" and current is not None and missing is not None:
                missing.append((current.end_ms, w.start_ms))  # statements left out: time unaccounted for
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
        env = _envelope(raw, "tenant_summaries")
        payload = dsse.verify(env, log_key, TENANT_SUMMARIES_PAYLOAD_TYPE)
        doc = strictjson.loads(payload)
        tenants = _obj(_obj(doc, "tenant_summaries payload").get("tenants"), "tenant_summaries.tenants")
    except (Error, BundleError, ValueError, RecursionError) as exc:
        report.fail(
            "tenants", "bad_tenant_summaries", f"the tenant summaries do not verify with the log key: {_reason(exc)}"
        )
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
