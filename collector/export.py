"""Vendor bundles: everything a chip vendor needs to verify usage offline, in one JSON file.

A bundle (media type ``application/vnd.gpuaudit.bundle.v1+json``; docs/formats.md,
"Vendor bundle v1") holds the selected statements' envelopes exactly as signed, the
enrollment records of their keys, the log's public key, a checkpoint signed for the
export, an inclusion proof of every envelope in that checkpoint and, when the vendor
brings a checkpoint from an earlier bundle, a consistency proof from it.

Selection: statements whose window overlaps [since, until) and that name a GPU serial
(``serials``), a tenant (``tenant``), or all of them (``all``). For chain continuity,
every statement of an involved key between its first and last selected statement is
included, whether or not it names the serial or tenant, so that a verifier sees an
unbroken chain.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.errors import CheckpointError, ProofError, SchemaError
from attestation.merkle import verify_consistency
from attestation.statement import parse_statement
from collector.errors import CollectorError
from collector.log import Log
from collector.pseudonyms import is_pseudonym, signed_summaries
from collector.store.base import KeyRecord, StatementRecord, Store
from collector.tenants import TenantDirectory

_logger = logging.getLogger(__name__)

BUNDLE_MEDIA_TYPE = "application/vnd.gpuaudit.bundle.v1+json"


class ExportError(CollectorError):
    """A bundle could not be exported."""

    reason = "export"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\n"
            "Check the selection (serials and tenants are matched exactly) and, with "
            "--previous-checkpoint, that the file is a checkpoint or bundle from this collector."
        )


@dataclass(frozen=True)
class Selection:
    serials: tuple[str, ...] = ()
    tenant: str | None = None
    all: bool = False
    since_ms: int | None = None
    until_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "serials": list(self.serials),
            "tenant": self.tenant,
            "all": self.all,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _needle(text: str) -> bytes:
    """``text`` as it appears inside a JSON string written by json.dumps (a cheap pre-filter)."""
    return json.dumps(text)[1:-1].encode("ascii")


def _matches(record: StatementRecord, sel: Selection) -> bool:
    if sel.all:
        return True
    needles = [_needle(s) for s in sel.serials] if sel.serials else [_needle(sel.tenant or "")]
    if not any(n in record.payload for n in needles):
        return False
    try:
        window = parse_statement(record.payload)
    except (SchemaError, ValueError, RecursionError):  # stored statements were verified; be safe anyway
        _logger.warning("stored statement %s/%d does not parse; left out of the bundle", record.key_id, record.seq)
        return False
    if sel.serials:
        return any(g.serial in sel.serials for g in window.gpus)
    return any(w.tenant == sel.tenant for g in window.gpus for w in g.workloads)


def _selected(store: Store, sel: Selection) -> Iterator[StatementRecord]:
    """The selected statements plus, per involved key, every statement between its first and last."""
    if sel.all:
        yield from store.iter_statements(window_from_ms=sel.since_ms, window_to_ms=sel.until_ms)
        return
    ranges: dict[str, tuple[int, int]] = {}
    for rec in store.iter_statements(window_from_ms=sel.since_ms, window_to_ms=sel.until_ms):
        if _matches(rec, sel):
            lo, hi = ranges.get(rec.key_id, (rec.seq, rec.seq))
            ranges[rec.key_id] = (min(lo, rec.seq), max(hi, rec.seq))
    for key_id in sorted(ranges):
        lo, hi = ranges[key_id]
        for rec in store.iter_statements(key_id, from_seq=lo):
            if rec.seq > hi:
                break
            yield rec


def _node_json(k: KeyRecord) -> dict[str, Any]:
    return {
        "node_id": k.node_id,
        "key_id": k.key_id,
        "algorithm": k.algorithm,
        "spki": _b64(k.spki_der),
        "assurance": k.assurance,
        "enrolled_ms": k.enrolled_ms,
        "revoked_ms": k.revoked_ms,
    }


def read_checkpoint_file(path: Path) -> str:
    """A signed checkpoint note from ``path``: the note itself, or the checkpoint of a bundle."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read the previous checkpoint {path}: {exc}") from exc
    if text.lstrip().startswith("{"):
        try:
            note = json.loads(text)["log"]["checkpoint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{path} is JSON but not a bundle with log.checkpoint") from exc
        if not isinstance(note, str):
            raise ExportError(f"{path}: log.checkpoint is not a string")
        return note
    return text


def build_bundle(
    store: Store,
    log: Log,
    sel: Selection,
    now_ms: int,
    previous_checkpoint: str | None = None,
    tenants: TenantDirectory | None = None,
) -> dict[str, Any]:
    """The bundle document for ``sel``. Signs (and stores) a checkpoint of the whole log.

    Steps:
    1. select the statements (see the module docstring);
    2. sign a checkpoint covering all of them (``Log.checkpoint``);
    3. prove each envelope's inclusion in it;
    4. with a previous checkpoint (which must verify with this log's key), prove consistency.
    """
    if not (sel.all or sel.serials or sel.tenant):
        raise ExportError("select statements with serials, a tenant, or all")
    # 1.
    records = list(_selected(store, sel))
    if not records:
        raise ExportError(f"no statements match {sel.to_json()}")
    # 2.
    signed = log.checkpoint(now_ms)
    size = signed.checkpoint.size
    # 3.
    entries: list[dict[str, Any]] = []
    keys: dict[str, KeyRecord] = {}
    for rec in records:
        index = log.leaf_index(rec.key_id, rec.seq)
        if index is None or index >= size:
            raise ExportError(f"statement {rec.key_id}/{rec.seq} is not in the log")
        if rec.key_id not in keys:
            key = store.key(rec.key_id)
            if key is None:
                raise ExportError(f"statement {rec.key_id}/{rec.seq} has no enrollment record")
            keys[rec.key_id] = key
        entries.append(
            {
                "leaf_index": index,
                "inclusion_proof": [_b64(h) for h in log.inclusion_proof(index, size)],
                "envelope": rec.envelope().to_json(),
            }
        )
    # 3b. consistency proofs from every log checkpoint the nodes signed into these statements,
    #     and the KYC summaries of the tenant pseudonyms they name, signed by the log key.
    seen_sizes, pseudonyms = _scan(records, log.origin, size)
    seen = [
        {"size": s, "root_sha256": root, "proof": [_b64(h) for h in log.consistency_proof(s, size)]}
        for s, root in sorted(seen_sizes)
    ]
    summaries = signed_summaries(pseudonyms, tenants or TenantDirectory(), log.signer, now_ms) if pseudonyms else None
    # 4.
    consistency: dict[str, Any] | None = None
    if previous_checkpoint is not None:
        try:
            prev = log.verify_own(previous_checkpoint)
        except CheckpointError as exc:
            raise ExportError(f"the previous checkpoint was not signed by this log ({log.origin}): {exc}") from exc
        if prev.size > size:
            raise ExportError(f"the previous checkpoint has size {prev.size}, beyond this log's {size}")
        proof = log.consistency_proof(prev.size, size)
        try:
            verify_consistency(prev.size, size, proof, prev.root, signed.checkpoint.root)
        except ProofError as exc:
            raise ExportError(f"this log is not consistent with the previous checkpoint: {exc}") from exc
        consistency = {"from_size": prev.size, "proof": [_b64(h) for h in proof]}
    public = log.public_key()
    return {
        "media_type": BUNDLE_MEDIA_TYPE,
        "created_ms": now_ms,
        "selection": sel.to_json(),
        "log": {
            "origin": log.origin,
            "public_key": {"algorithm": public.algorithm, "spki": _b64(public.spki_der)},
            "checkpoint": signed.note,
        },
        "nodes": [_node_json(keys[k]) for k in sorted(keys)],
        "entries": entries,
        "consistency": consistency,
        "seen_checkpoints": seen,
        "tenant_summaries": summaries,
    }


def _scan(records: list[StatementRecord], origin: str, size: int) -> tuple[set[tuple[int, str]], set[str]]:
    """The distinct (size, root) of this log the statements carry, and the tenant pseudonyms they name."""
    seen: set[tuple[int, str]] = set()
    pseudonyms: set[str] = set()
    for rec in records:
        has_cp, has_tp = b'"log_checkpoint"' in rec.payload, b'"tp-' in rec.payload
        if not (has_cp or has_tp):
            continue
        try:
            w = parse_statement(rec.payload)
        except (SchemaError, ValueError, RecursionError):
            continue
        lc = w.log_checkpoint
        if lc is not None and lc.origin == origin and lc.size <= size:
            seen.add((lc.size, lc.root_sha256))
        pseudonyms.update(wl.tenant for g in w.gpus for wl in g.workloads if is_pseudonym(wl.tenant))
    return seen, pseudonyms


def write_bundle(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
