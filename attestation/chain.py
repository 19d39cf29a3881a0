"""Chain rules: what makes a statement the valid successor of the previous one.

Per signing key, statements form a hash chain: ``seq`` counts 0, 1, 2, ... without gaps
and ``prev`` is the hex SHA-256 of the previous envelope's PAE. Windows never overlap and
each GPU's total-energy counter never goes back unless the statement records why
(an ``energy_counter_reset`` event on that GPU, e.g. after a driver reload).

The collector applies these rules on ingest and the offline verifier applies them again
to a bundle; both call ``check_next`` so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attestation.errors import ChainError
from attestation.statement import UsageWindow

ENERGY_RESET_EVENT = "energy_counter_reset"
# The event a (re)started agent puts into its first statement: a new boot id is then explained.
AGENT_START_EVENT = "agent_start"


@dataclass(frozen=True)
class ChainHead:
    """What must be remembered of a key's latest accepted statement."""

    key_id: str
    seq: int
    digest: str
    end_ms: int
    boot_id: str
    energy_end_mj: dict[str, int] = field(default_factory=dict)


def check_next(head: ChainHead | None, stmt: UsageWindow, digest: str, key_id: str) -> None:
    """Raise ChainError (with a specific reason) unless ``stmt`` continues ``head``.

    Steps:
    1. the statement names the key that signed it;
    2. seq is head.seq + 1 (0 for a new chain) — lower is a replay, higher a gap, unless
       the statement carries a signed ``dropped`` record that covers every missing seq
       (the agent's spool had to drop them; ``explained_gap`` tells which);
    3. prev is the digest of the head (a mismatch at the right seq is a fork); across an
       explained gap prev is the dropped record's last_digest (checked when parsing);
    4. the window starts at or after the head's window end;
    5. energy counters do not decrease, within the window or across windows, unless the
       GPU records an energy_counter_reset event.
    """
    # 1.
    if stmt.chain.key_id != key_id:
        raise ChainError(f"statement names key {stmt.chain.key_id}, signed by {key_id}", reason="key_mismatch")
    # 2.
    expected = 0 if head is None else head.seq + 1
    if stmt.chain.seq < expected:
        raise ChainError(f"seq {stmt.chain.seq} already used (expected {expected})", reason="seq_replay")
    gap = explained_gap(head, stmt)
    if stmt.chain.seq > expected and gap is None:
        raise ChainError(
            f"seq {stmt.chain.seq} skips {stmt.chain.seq - expected} statement(s) after {expected - 1}",
            reason="seq_gap",
        )
    # 3.
    if head is not None and gap is None and stmt.chain.prev != head.digest:
        raise ChainError(
            f"prev {stmt.chain.prev} does not match the digest {head.digest} of seq {head.seq}",
            reason="prev_mismatch",
        )
    # 4.
    if head is not None and stmt.start_ms < head.end_ms:
        raise ChainError(
            f"window starting {stmt.start_ms} overlaps the previous window ending {head.end_ms}",
            reason="window_overlap",
        )
    # 5.
    for g in stmt.gpus:
        reset = any(e.kind == ENERGY_RESET_EVENT for e in g.events)
        if (
            g.energy_start_mj is not None
            and g.energy_end_mj is not None
            and g.energy_end_mj < g.energy_start_mj
            and not reset
        ):
            raise ChainError(
                f"GPU {g.uuid}: energy counter goes back within the window "
                f"({g.energy_start_mj} -> {g.energy_end_mj} mJ) with no reset recorded",
                reason="energy_decrease",
            )
        if head is None or g.energy_start_mj is None or reset:
            continue
        before = head.energy_end_mj.get(g.uuid)
        if before is not None and g.energy_start_mj < before:
            raise ChainError(
                f"GPU {g.uuid}: energy counter {g.energy_start_mj} mJ is below {before} mJ at the end of "
                "the previous window, with no reset recorded",
                reason="energy_decrease",
            )


def explained_gap(head: ChainHead | None, stmt: UsageWindow) -> tuple[int, int] | None:
    """The seqs (first, last) missing between ``head`` and ``stmt`` that ``stmt``'s signed
    ``dropped`` record explains, or None when nothing is missing or the record does not
    cover all of it (a gap it does not explain stays a ``seq_gap``)."""
    expected = 0 if head is None else head.seq + 1
    d = stmt.dropped
    if stmt.chain.seq <= expected or d is None or d.from_seq > expected or d.to_seq != stmt.chain.seq - 1:
        return None
    return expected, d.to_seq


def advance(head: ChainHead | None, stmt: UsageWindow, digest: str) -> ChainHead:
    energy = dict(head.energy_end_mj) if head is not None else {}
    for g in stmt.gpus:
        if g.energy_end_mj is not None:
            energy[g.uuid] = g.energy_end_mj
    return ChainHead(
        key_id=stmt.chain.key_id,
        seq=stmt.chain.seq,
        digest=digest,
        end_ms=stmt.end_ms,
        boot_id=stmt.boot_id,
        energy_end_mj=energy,
    )
