"""Steps 2 and 3: the enrolled node keys, and each envelope's signature by one of them.

What is kept of a statement whose signature verified is a ``VerifiedStatement``: where it
is in the bundle and the log, its digest, and its window, slimmed (``slim``) once its usage
has been counted, so that memory holds what the chain, rotation and completeness checks
need, not the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from attestation import dsse
from attestation.chain import ENERGY_RESET_EVENT
from attestation.dsse import Envelope
from attestation.errors import KeyFileError, SchemaError, VerificationError
from attestation.keys import PublicKey, key_id_of
from attestation.statement import UsageWindow, parse_statement
from attestation.verify.bundle import BundleError, as_b64, as_count, as_obj, as_str, shown
from attestation.verify.report import Report


@dataclass(frozen=True)
class EnrolledKey:
    """A node's key as the bundle enrolls it (``nodes[]``), and when it was revoked, if it was."""

    node_id: str
    key: PublicKey
    revoked_ms: int | None


@dataclass(frozen=True, slots=True)
class VerifiedStatement:
    """A verified statement, as much of it as the chain, rotation and completeness checks
    need (``slim``: no workloads, series or identity; usage was counted when it was read)."""

    entry: int
    key_id: str
    window: UsageWindow
    digest: str
    leaf_index: int


def slim(w: UsageWindow) -> UsageWindow:
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


def read_enrollment(records: list[Any], report: Report) -> dict[str, EnrolledKey]:
    """2. Enrollment records: well formed, key ids match their keys. Returns the enrolled
    keys by key id; a record that fails is reported and left out."""
    nodes: dict[str, EnrolledKey] = {}
    for i, raw in enumerate(records):
        try:
            rec = as_obj(raw, f"nodes[{i}]")
            spki = as_b64(rec.get("spki"), f"nodes[{i}].spki")
            key_id = as_str(rec.get("key_id"), f"nodes[{i}].key_id")
            node = EnrolledKey(
                node_id=as_str(rec.get("node_id"), f"nodes[{i}].node_id"),
                key=PublicKey.from_spki(spki),
                revoked_ms=as_count(rec.get("revoked_ms"), f"nodes[{i}].revoked_ms", nullable=True),
            )
        except (BundleError, KeyFileError) as exc:
            report.fail("enrollment", "malformed_enrollment", str(exc))
            continue
        if key_id != key_id_of(spki):
            report.fail(
                "enrollment", "key_id_mismatch", f"nodes[{i}] names key {shown(key_id)} for key {key_id_of(spki)}"
            )
            continue
        if key_id in nodes:
            report.fail("enrollment", "duplicate_enrollment", f"key {key_id} is enrolled twice", key_id=key_id)
            continue
        nodes[key_id] = node
    return nodes


def verify_envelope(
    i: int,
    env: Envelope,
    nodes: dict[str, EnrolledKey],
    report: Report,
    last: list[str] | None = None,
    leaf_index: int = -1,
) -> VerifiedStatement | None:
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
    return VerifiedStatement(entry=i, key_id=key_id, window=window, digest=env.digest(), leaf_index=leaf_index)
