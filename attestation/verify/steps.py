"""The verifier's steps, numbered in the order they run (each ``Failure`` names its step):

0 the bundle parses (``bundle``); 1 the log key and its checkpoint (``log``); 2 the
enrolled keys and 3 each envelope's signature (``signatures``); 4-5 chains and key
rotations (``chains``); 6 inclusion in the checkpoint and 6b the checkpoints nodes saw
(``log``); 6c confidential-computing reports (``confidential``); 7 consistency with an
earlier checkpoint (``log``); 7b tenant summaries (``tenants``); 8 usage (``usage``);
9 completeness and coverage (``completeness``).
"""

from __future__ import annotations

import mmap
from pathlib import Path

from cryptography import x509

from attestation import strictjson
from attestation.bundlereader import BundleSource, ReadError
from attestation.verify.bundle import BundleError, as_count, as_envelope, as_hashes, as_obj, one_line, open_bundle
from attestation.verify.chains import verify_chain, verify_rotations
from attestation.verify.completeness import check_completeness, verify_heads
from attestation.verify.confidential import verify_cc
from attestation.verify.log import (
    PinnedLogKey,
    verify_entry_inclusion,
    verify_log_checkpoint,
    verify_previous_checkpoint,
    verify_seen_checkpoints,
)
from attestation.verify.report import Report
from attestation.verify.signatures import VerifiedStatement, read_enrollment, slim, verify_envelope
from attestation.verify.tenants import verify_tenant_summaries
from attestation.verify.usage import UsageTally, count_usage


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


def _verify(
    src: BundleSource,
    previous_checkpoint: str | bytes | None,
    report: Report,
    cc_root: x509.Certificate | None = None,
    pinned_log_keys: tuple[PinnedLogKey, ...] = (),
) -> None:
    # 0. The bundle parses: JSON, media type, sections.
    doc = open_bundle(src)
    report.selection = doc.get("selection")
    report.entries = len(src)

    # 1. The log key, and the checkpoint's signature by it (c2sp.org/signed-note); 1a. a
    #    pinned log key.
    log_state = verify_log_checkpoint(doc["log"], pinned_log_keys, report)
    origin, log_key, checkpoint = log_state.origin, log_state.key, log_state.checkpoint

    # 2. Enrollment records: well formed, key ids match their keys.
    nodes = read_enrollment(doc["nodes"], report)
    report.keys = len(nodes)

    # 3. Each envelope, as it is read: signed by its enrolled key (DSSE), parses, names its
    #    node, signed before the key was revoked (a statement is signed when its window
    #    ends); 6. its leaf, recomputed from its bytes, is in the checkpoint (RFC 9162
    #    §2.1.3.2); 6c. its confidential-computing reports; 8. its usage. What is kept of it
    #    is the slimmed window (``slim``).
    statements: list[VerifiedStatement] = []
    last_unnamed: list[str] = []  # the key of the last envelope whose signature named none
    usage = UsageTally()
    entries = src.entries()
    i = -1
    while True:
        try:
            raw = next(entries, None)
        except strictjson.NotIJSONError as exc:
            raise BundleError(f"the bundle is not JSON that every parser reads alike: entries[{i + 1}]: {exc}") from exc
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BundleError(f"entries[{i + 1}] is not JSON (truncated or damaged?): {one_line(exc)}") from exc
        i += 1
        if raw is None:
            break
        try:
            e = as_obj(raw, f"entries[{i}]")
            index = as_count(e.get("leaf_index"), f"entries[{i}].leaf_index")
            proof = as_hashes(e.get("inclusion_proof"), f"entries[{i}].inclusion_proof")
            env = as_envelope(e.get("envelope"), f"entries[{i}].envelope")
        except BundleError as exc:
            report.fail("bundle", "malformed_entry", str(exc), entry=i)
            continue
        del raw, e
        if checkpoint is not None:
            verify_entry_inclusion(i, env, index, proof, checkpoint, report)
        stmt = verify_envelope(i, env, nodes, report, last_unnamed, index)
        if stmt is None:
            continue
        verify_cc(stmt, report, cc_root)
        count_usage(stmt, report, usage)
        statements.append(VerifiedStatement(stmt.entry, stmt.key_id, slim(stmt.window), stmt.digest, index))
    # Failures are reported in step order: inclusion (6) after the chains (4-5).
    early = [f for f in report.failures if f.step not in ("inclusion", "cc_attestation")]
    later = [f for f in report.failures if f.step in ("inclusion", "cc_attestation")]
    report.failures[:] = early

    # 4-5. Chains, windows and energy, per key (attestation.chain.check_next).
    by_key: dict[str, list[VerifiedStatement]] = {}
    for s in statements:
        by_key.setdefault(s.key_id, []).append(s)
    missing: dict[str, list[tuple[int, int]]] = {}
    for key_id, chain in by_key.items():
        verify_chain(key_id, chain, report, missing.setdefault(key_id, []))
    # 5b. Key rotations link one key's chain to the next (docs/formats.md, "Key rotation").
    verify_rotations(by_key, report)
    report.failures.extend(f for f in later if f.step == "inclusion")

    # 6b. Checkpoints the nodes saw (predicate.log_checkpoint) against the bundle's.
    if checkpoint is not None:
        verify_seen_checkpoints(doc.get("seen_checkpoints"), origin, checkpoint, by_key, report)
    report.failures.extend(f for f in later if f.step == "cc_attestation")

    # 7. Consistency with the vendor's earlier checkpoint (RFC 9162 §2.1.4.2).
    if previous_checkpoint is not None:
        verify_previous_checkpoint(doc.get("consistency"), previous_checkpoint, origin, log_key, checkpoint, report)

    # 7b. Tenant KYC summaries, signed by the log key (DSSE).
    if doc.get("tenant_summaries") is not None and log_key is not None:
        verify_tenant_summaries(doc["tenant_summaries"], log_key, report)

    # 9. Completeness: the committed heads, the period's coverage per serial and node.
    heads = verify_heads(doc.get("heads"), checkpoint if log_state.verified else None, by_key, nodes, report)
    check_completeness(doc, by_key, missing, heads, report, usage)
