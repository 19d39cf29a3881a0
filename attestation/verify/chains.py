"""Steps 4 and 5: each key's chain re-walked with the collector's rules
(``attestation.chain.check_next``), and key rotations linking one key's chain to the next.
"""

from __future__ import annotations

from attestation.chain import ChainHead, advance, check_next, explained_gap
from attestation.errors import ChainError
from attestation.keys import key_id_of
from attestation.verify.report import Report
from attestation.verify.signatures import VerifiedStatement


def verify_chain(
    key_id: str, chain: list[VerifiedStatement], report: Report, missing: list[tuple[int, int]] | None = None
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
    seen: dict[int, list[VerifiedStatement]] = {}
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
    walk: list[VerifiedStatement] = []
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


def verify_rotations(by_key: dict[str, list[VerifiedStatement]], report: Report) -> None:
    """5b-1. a rotation statement carries the key it names and is its key's last;
    5b-2. a chain that starts by rotation (seq 0 with prev_key_id) continues the old key's
          last statement (its digest, its rotation naming this key, epoch + 1) when the
          bundle holds the old key's chain."""
    for key_id, chain in by_key.items():
        ordered = sorted(chain, key=lambda s: s.window.chain.seq)
        # 5b-1.
        rotated_at: VerifiedStatement | None = None
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
