"""The log's side of verification: the log key and its signed checkpoint (step 1), each
entry's inclusion in it (6), the checkpoints the nodes saw (6b) and consistency with the
vendor's earlier checkpoint (7); RFC 9162 proofs, C2SP signed notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attestation.checkpoint import Checkpoint, parse_checkpoint_body, parse_note, verify_checkpoint
from attestation.dsse import Envelope
from attestation.errors import CheckpointError, KeyFileError, ProofError
from attestation.keys import PublicKey
from attestation.merkle import leaf_hash, verify_consistency, verify_inclusion
from attestation.verify.bundle import BundleError, as_b64, as_count, as_hashes, as_obj, as_str
from attestation.verify.report import Report
from attestation.verify.signatures import VerifiedStatement


@dataclass(frozen=True)
class PinnedLogKey:
    """The collector's log key as the vendor got it outside the bundle, and from where
    (for messages: ``--log-key FILE``, an earlier bundle)."""

    key: PublicKey
    source: str


@dataclass(frozen=True)
class LogState:
    """What step 1 established: the log's origin, the key checkpoints are checked with (None:
    unusable), the bundle's checkpoint (None: unreadable) and whether its signature verified."""

    origin: str
    key: PublicKey | None
    checkpoint: Checkpoint | None
    verified: bool


def verify_log_checkpoint(log: dict[str, Any], pinned_log_keys: tuple[PinnedLogKey, ...], report: Report) -> LogState:
    """1. The log key, and the checkpoint's signature by it (c2sp.org/signed-note); 1a. a
    pinned log key. An unverified checkpoint is still returned when it parses, so that
    every other problem is still reported."""
    origin = as_str(log.get("origin"), "log.origin")
    note = as_str(log.get("checkpoint"), "log.checkpoint")
    log_key: PublicKey | None = None
    try:
        pk = as_obj(log.get("public_key"), "log.public_key")
        log_key = PublicKey.from_spki(as_b64(pk.get("spki"), "log.public_key.spki"))
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
    return LogState(origin, log_key, checkpoint, checkpoint_verified)


def verify_entry_inclusion(
    entry: int, env: Envelope, leaf_index: int, proof: list[bytes], checkpoint: Checkpoint, report: Report
) -> None:
    """6. The entry's leaf, recomputed from its bytes, is in the checkpoint (RFC 9162 §2.1.3.2)."""
    try:
        verify_inclusion(leaf_hash(env.pae()), leaf_index, checkpoint.size, proof, checkpoint.root)
    except ProofError as exc:
        report.fail("inclusion", exc.reason, str(exc), entry=entry)


def verify_seen_checkpoints(
    raw: Any, origin: str, checkpoint: Checkpoint, by_key: dict[str, list[VerifiedStatement]], report: Report
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
                o = as_obj(item, f"seen_checkpoints[{i}]")
                size = as_count(o.get("size"), f"seen_checkpoints[{i}].size")
                root = as_str(o.get("root_sha256"), f"seen_checkpoints[{i}].root_sha256")
                proofs[(size, root)] = as_hashes(o.get("proof"), f"seen_checkpoints[{i}].proof")
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


def verify_previous_checkpoint(
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
            c = as_obj(raw, "consistency")
            if as_count(c.get("from_size"), "consistency.from_size") != prev.size:
                report.fail(
                    "consistency",
                    "missing_consistency_proof",
                    f"the bundle proves consistency from size {c.get('from_size')}, not from {prev.size}",
                )
                return
            proof = as_hashes(c.get("proof"), "consistency.proof")
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
