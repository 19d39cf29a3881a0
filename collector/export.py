"""Vendor bundles: everything a chip vendor needs to verify usage offline, in one JSON file.

A bundle (media type ``application/vnd.gpuaudit.bundle.v1+json``; docs/formats.md,
"Vendor bundle v1") holds the selected statements' envelopes exactly as signed, the
enrollment records of their keys, the log's public key, a checkpoint signed for the
export, an inclusion proof of every envelope in that checkpoint and, when the vendor
brings a checkpoint from an earlier bundle, a consistency proof from it.

Selection: statements whose window overlaps [since, until) and that name a GPU serial
(``serials``), a tenant (``tenant``), a node (``nodes``), or all of them (``all``). A key
is *involved* when one of its statements is selected. For each involved key the bundle
holds its whole chain over the period, whether or not each statement names the serial or
tenant, so that a verifier can tell coverage from silence (docs/vendor-guide.md,
"Completeness"):

- every statement of the key whose window overlaps the period;
- the *anchor*: the statement just before, when the first one starts after ``since``
  (it proves that nothing between ``since`` and the first window was left out);
- the *successor*: the first statement after the last one, when the log has one at the
  bundle's checkpoint (it proves that nothing after the last window was left out);
  without ``until``, every statement up to the key's head at the checkpoint.

The bundle also carries ``heads``: the head of every key of the log at the bundle's
checkpoint, which the checkpoint commits to (attestation/heads.py).

Memory: ``export_bundle`` streams the bundle to its file, reading the store a page of
statements at a time: once to find each involved key's seq range, once to find the leaf
index of every entry, and once to write the envelopes with their inclusion proofs. The
proofs are computed in between, in leaf order, into a temporary file beside the bundle:
entries go key by key, and a key's statements are spread over the whole log (one per
window among every other node's), so proofs computed in entry order would read a tile of
leaves back from the store for nearly every entry; in leaf order each tile is read once.
In memory are the log's tree (``collector.log``), one page, and 16 to 40 bytes per
entry for the leaf indexes (``_Proofs``). ``build_bundle`` returns the same bundle as a
document, for tests and small selections.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from attestation.errors import CheckpointError, ProofError, SchemaError
from attestation.heads import KeyHead
from attestation.merkle import HASH_SIZE, verify_consistency
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
    nodes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "serials": list(self.serials),
            "tenant": self.tenant,
            "nodes": list(self.nodes),
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
    if sel.nodes:
        return record.node_id in sel.nodes
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


@dataclass(frozen=True)
class _KeyRange:
    """The statements of one key a bundle holds: seq ``lo``..``hi``."""

    lo: int
    hi: int


def _ranges(store: Store, sel: Selection) -> dict[str, _KeyRange]:
    """Pass 1: per involved key, the seq range of its statements in the period (the
    statements themselves are not kept: a page of them at a time is in memory)."""
    period: dict[str, _KeyRange] = {}
    involved: set[str] = set()
    for rec in store.iter_statements(window_from_ms=sel.since_ms, window_to_ms=sel.until_ms):
        r = period.get(rec.key_id)
        period[rec.key_id] = (
            _KeyRange(rec.seq, rec.seq) if r is None else _KeyRange(min(r.lo, rec.seq), max(r.hi, rec.seq))
        )
        if rec.key_id not in involved and _matches(rec, sel):
            involved.add(rec.key_id)
    return {k: period[k] for k in sorted(involved)}


def _statement_at(store: Store, log: Log, key_id: str, seq: int, size: int) -> StatementRecord | None:
    """The first stored statement of ``key_id`` with a seq of at least ``seq`` among the
    log's first ``size`` leaves (a point lookup first; seqs an agent dropped are skipped)."""
    index = log.leaf_index(key_id, seq)
    if index is not None:
        rows = store.log_statements(index, index + 1)
        if rows and rows[0][0] == index:
            return rows[0][1] if index < size else None
    for rec in store.iter_statements(key_id, from_seq=seq):
        index = log.leaf_index(rec.key_id, rec.seq)
        return rec if index is not None and index < size else None
    return None


def _extend(store: Store, log: Log, sel: Selection, ranges: dict[str, _KeyRange], heads: dict[str, KeyHead],
            size: int) -> dict[str, _KeyRange]:  # fmt: skip
    """After signing the checkpoint: each range with its anchor and successor (module docstring)."""
    out: dict[str, _KeyRange] = {}
    for key_id, r in ranges.items():
        lo, hi = r.lo, r.hi
        if sel.since_ms is not None and lo > 0:
            first = _statement_at(store, log, key_id, lo, size)
            if first is not None and first.start_ms > sel.since_ms:
                anchor = _statement_at(store, log, key_id, lo - 1, size)
                if anchor is not None and anchor.seq == lo - 1:
                    lo = anchor.seq
        head = heads.get(key_id)
        while head is not None and hi < head.seq:
            nxt = _statement_at(store, log, key_id, hi + 1, size)
            if nxt is None:
                break
            hi = nxt.seq
            if sel.until_ms is not None and nxt.start_ms >= sel.until_ms:
                break  # the successor
        out[key_id] = _KeyRange(lo, hi)
    # Keys the selection covers whose heads end after ``since`` but that have no statement in
    # the period: their first statement after ``since`` shows that (the verifier would
    # otherwise take the key for one left out: ``missing_key``).
    for key_id, h in heads.items():
        if key_id in out or not _head_selected(h, sel) or (sel.since_ms is not None and h.end_ms <= sel.since_ms):
            continue
        for rec in store.iter_statements(key_id, window_from_ms=sel.since_ms):
            index = log.leaf_index(rec.key_id, rec.seq)
            if index is not None and index < size:
                out[key_id] = _KeyRange(rec.seq, rec.seq)
            break
    return out


def _head_selected(h: KeyHead, sel: Selection) -> bool:
    """Whether the selection covers a key, as far as its committed head tells (a tenant
    selection cannot tell: tenants are not in the heads)."""
    return sel.all or h.node_id in sel.nodes or bool(set(h.serials) & set(sel.serials))


def _selected(store: Store, ranges: dict[str, _KeyRange]) -> Iterator[StatementRecord]:
    """Passes 2 and 3: per involved key, every stored statement from ``lo`` to ``hi``, in
    (key_id, seq) order."""
    for key_id in sorted(ranges):
        r = ranges[key_id]
        for rec in store.iter_statements(key_id, from_seq=r.lo):
            if rec.seq > r.hi:
                break
            yield rec


class _Proofs:
    """The inclusion proofs of a bundle's entries at tree size ``size``, computed in leaf
    order into a temporary file in ``workdir`` (None: the system's) and read back by leaf
    index while the entries are written in (key, seq) order.

    Each proof needs the leaf hashes of its leaf's tile (``collector.log``), read back from
    the store; in leaf order the log's small tile cache serves every proof after a tile's
    first. In memory: 16 bytes per entry (and a sorted list of the indexes, about 40 bytes
    an entry, while the proofs are computed)."""

    def __init__(self, log: Log, size: int, indexes: array[int], workdir: Path | None) -> None:
        self._indexes = array("q", sorted(indexes))  # each statement has its own leaf
        self._offsets = array("q")
        try:
            self._file = tempfile.TemporaryFile(dir=workdir, prefix=".gpuaudit-proofs-")
        except OSError as exc:
            raise ExportError(f"cannot create a temporary file for the inclusion proofs: {exc}") from exc
        at = 0
        try:
            for index in self._indexes:
                blob = b"".join(log.inclusion_proof(index, size))
                self._file.write(blob)
                self._offsets.append(at)
                at += len(blob)
            self._offsets.append(at)
            self._file.flush()
        except OSError as exc:  # e.g. a full disk
            self._file.close()
            raise ExportError(f"cannot write the inclusion proofs to a temporary file: {exc}") from exc
        except BaseException:  # the log could not prove a leaf (collector.log errors), or an interrupt
            self._file.close()
            raise

    def get(self, index: int) -> list[bytes] | None:
        """The proof of leaf ``index``; None if it was not among the indexes given."""
        i = bisect_left(self._indexes, index)
        if i == len(self._indexes) or self._indexes[i] != index:
            return None
        start, end = self._offsets[i], self._offsets[i + 1]
        self._file.seek(start)
        blob = self._file.read(end - start)
        if len(blob) != end - start:
            raise ExportError(f"the temporary file of inclusion proofs was cut short at leaf {index}")
        return [blob[j : j + HASH_SIZE] for j in range(0, len(blob), HASH_SIZE)]

    def close(self) -> None:
        self._file.close()


def _leaf_index(log: Log, rec: StatementRecord, size: int) -> int:
    index = log.leaf_index(rec.key_id, rec.seq)
    if index is None or index >= size:
        raise ExportError(f"statement {rec.key_id}/{rec.seq} is not in the log")
    return index


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


@dataclass(frozen=True)
class ExportSummary:
    """What an exported bundle holds."""

    entries: int
    keys: int
    origin: str
    tree_size: int


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def write_bundle_to(
    out: TextIO,
    store: Store,
    log: Log,
    sel: Selection,
    now_ms: int,
    previous_checkpoint: str | None = None,
    tenants: TenantDirectory | None = None,
    *,
    workdir: Path | None = None,
) -> ExportSummary:
    """Write the bundle for ``sel`` to ``out`` as JSON, one entry at a time: memory holds a
    page of statements, never the bundle. Signs (and stores) a checkpoint of the whole log.
    The inclusion proofs wait in a temporary file in ``workdir`` (None: the system's).

    The text is exactly ``json.dumps(doc, separators=(",", ":"))`` of the bundle document
    (docs/formats.md, "Vendor bundle v1"), its sections in this order: media_type,
    created_ms, selection, log, nodes, heads, entries, consistency, seen_checkpoints,
    tenant_summaries.

    Steps:
    1. select the statements (see the module docstring): pass 1 keeps only each key's seq range;
    2. sign a checkpoint covering all of them, with the per-key heads (``Log.checkpoint``),
       and extend each range by its anchor and successor;
    3. with a previous checkpoint (which must verify with this log's key), prove consistency;
    4. pass 2: the leaf index of every entry; their inclusion proofs, in leaf order
       (``_Proofs``);
    5. write the header and enrollment records, then pass 3: each envelope with its
       inclusion proof, as it is read;
    6. consistency proofs from every log checkpoint the nodes signed into these statements,
       and the KYC summaries of the tenant pseudonyms they name, signed by the log key.
    """
    if not (sel.all or sel.serials or sel.tenant or sel.nodes):
        raise ExportError("select statements with serials, a tenant, nodes, or all")
    # 1.
    ranges = _ranges(store, sel)
    if not ranges:
        raise ExportError(f"no statements match {sel.to_json()}")
    # 2.
    signed = log.checkpoint(now_ms)
    size = signed.checkpoint.size
    heads = log.heads(size)
    ranges = _extend(store, log, sel, ranges, {h.key_id: h for h in heads}, size)
    keys: dict[str, KeyRecord] = {}
    for key_id in sorted(ranges):
        key = store.key(key_id)
        if key is None:
            raise ExportError(f"statement {key_id}/{ranges[key_id].lo} has no enrollment record")
        keys[key_id] = key
    # 3.
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
    # 4.
    indexes = array("q", (_leaf_index(log, rec, size) for rec in _selected(store, ranges)))
    expected = len(indexes)
    proofs = _Proofs(log, size, indexes, workdir)
    del indexes
    # 5.
    public = log.public_key()
    head = {
        "origin": log.origin,
        "public_key": {"algorithm": public.algorithm, "spki": _b64(public.spki_der)},
        "checkpoint": signed.note,
    }
    out.write(
        f'{{"media_type":{_json(BUNDLE_MEDIA_TYPE)},"created_ms":{_json(now_ms)},"selection":{_json(sel.to_json())},'
        f'"log":{_json(head)},"nodes":{_json([_node_json(keys[k]) for k in sorted(keys)])},'
        f'"heads":{_json([h.to_json() for h in heads])},"entries":['
    )
    seen_sizes: set[tuple[int, str]] = set()
    pseudonyms: set[str] = set()
    entries = 0
    try:
        for rec in _selected(store, ranges):
            index = _leaf_index(log, rec, size)
            path = proofs.get(index)
            if path is None:
                raise ExportError(f"statement {rec.key_id}/{rec.seq} appeared during the export; export again")
            entry = {
                "leaf_index": index,
                "inclusion_proof": [_b64(h) for h in path],
                "envelope": rec.envelope().to_json(),
            }
            out.write(("," if entries else "") + _json(entry))
            entries += 1
            _scan(rec, log.origin, size, seen_sizes, pseudonyms)
    finally:
        proofs.close()
    if entries != expected:
        raise ExportError(
            f"{expected - entries} selected statement(s) changed during the export (aged out by retention?); "
            "export again"
        )
    # 6.
    seen = [
        {"size": s, "root_sha256": root, "proof": [_b64(h) for h in log.consistency_proof(s, size)]}
        for s, root in sorted(seen_sizes)
    ]
    summaries = signed_summaries(pseudonyms, tenants or TenantDirectory(), log.signer, now_ms) if pseudonyms else None
    out.write(
        f'],"consistency":{_json(consistency)},"seen_checkpoints":{_json(seen)},"tenant_summaries":{_json(summaries)}}}'
    )
    return ExportSummary(entries=entries, keys=len(keys), origin=log.origin, tree_size=size)


def export_bundle(
    path: Path,
    store: Store,
    log: Log,
    sel: Selection,
    now_ms: int,
    previous_checkpoint: str | None = None,
    tenants: TenantDirectory | None = None,
) -> ExportSummary:
    """Stream the bundle for ``sel`` into ``path``, atomically (a temporary file, fsynced,
    renamed into place; removed if the export fails). Memory stays bounded whatever the size."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            summary = write_bundle_to(fh, store, log, sel, now_ms, previous_checkpoint, tenants, workdir=path.parent)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return summary


def build_bundle(
    store: Store,
    log: Log,
    sel: Selection,
    now_ms: int,
    previous_checkpoint: str | None = None,
    tenants: TenantDirectory | None = None,
) -> dict[str, Any]:
    """The bundle document for ``sel``, in memory (tests, small selections); ``export_bundle``
    writes the same bundle to a file without holding it."""
    buf = io.StringIO()
    write_bundle_to(buf, store, log, sel, now_ms, previous_checkpoint, tenants)
    doc: dict[str, Any] = json.loads(buf.getvalue())
    return doc


def _scan(rec: StatementRecord, origin: str, size: int, seen: set[tuple[int, str]], pseudonyms: set[str]) -> None:
    """Add the (size, root) of this log the statement carries, and the tenant pseudonyms it names."""
    has_cp, has_tp = b'"log_checkpoint"' in rec.payload, b'"tp-' in rec.payload
    if not (has_cp or has_tp):
        return
    try:
        w = parse_statement(rec.payload)
    except (SchemaError, ValueError, RecursionError):
        return
    lc = w.log_checkpoint
    if lc is not None and lc.origin == origin and lc.size <= size:
        seen.add((lc.size, lc.root_sha256))
    pseudonyms.update(wl.tenant for g in w.gpus for wl in g.workloads if is_pseudonym(wl.tenant))


def write_bundle(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
