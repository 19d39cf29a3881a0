"""The bounded spool: drops only with a signed explanation, and a chain that stays verifiable.

Every test walks what the collector would receive (the spool's envelopes, oldest first)
through ``attestation.chain.check_next`` from an empty head, so "verifiable" means exactly
what the collector and the offline verifier accept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest
from test_spool_signing import W_MS, window

from agent.clock import CLOCK_JUMP_EVENT, ClockWatch
from agent.signing import WINDOWS_NOT_RECORDED_EVENT, ChainSigner, SpoolFullError
from agent.spool import Spool
from attestation.chain import ChainHead, advance, check_next, explained_gap
from attestation.errors import ChainError, SchemaError
from attestation.keys import Ed25519Signer
from attestation.statement import Dropped, UsageWindow, parse_statement, statement_bytes
from attestation.wire import envelope_from_bytes


def delivered(spool: Spool, key_id: str) -> list[tuple[UsageWindow, str]]:
    out = []
    for _, blob in spool.pending(key_id, 0, 100_000):
        env = envelope_from_bytes(blob)
        out.append((parse_statement(env.payload), env.digest()))
    return out


def walk(statements: list[tuple[UsageWindow, str]], key_id: str) -> list[tuple[int, int, str]]:
    """check_next over a chain from its start; returns the explained gaps (first, last, reason)."""
    head: ChainHead | None = None
    gaps = []
    for w, digest in statements:
        check_next(head, w, digest, key_id)  # raises with the reason a collector would refuse with
        gap = explained_gap(head, w)
        if gap is not None:
            assert w.dropped is not None
            gaps.append((gap[0], gap[1], w.dropped.reason))
        head = advance(head, w, digest)
    return gaps


def test_size_bound_keeps_the_oldest_and_the_next_statement_explains_the_rest(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    one = len(statement_bytes(window(0))) + 200
    chain = ChainSigner(signer, spool, spool_max_bytes=5 * one)
    for i in range(40):  # the collector is unreachable: nothing is ever acknowledged
        chain.sign(window(i))
        assert spool.size_bytes(signer.key_id) <= 5 * one + 512, f"spool over its bound after window {i}"
    got = delivered(spool, signer.key_id)
    seqs = [w.chain.seq for w, _ in got]
    assert seqs[0] == 0, "the oldest statement (start of the outage) must be kept"
    assert seqs[-1] == 39, "the newest statement carries the explanation and must be kept"
    gaps = walk(got, signer.key_id)
    assert len(gaps) == 1, f"successive drops must merge into one explained gap, got {gaps}"
    first, last, reason = gaps[0]
    assert reason == "spool_size"
    assert len(seqs) + (last - first + 1) == 40, "every signed statement is either delivered or declared dropped"
    spool.close()


def test_drop_survives_a_restart_and_merges_with_the_earlier_record(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    one = len(statement_bytes(window(0))) + 200
    for start, stop in ((0, 12), (12, 25)):  # the agent restarts in between, same spool
        spool = Spool(tmp_path / "spool.db")
        chain = ChainSigner(signer, spool, spool_max_bytes=4 * one)
        for i in range(start, stop):
            chain.sign(window(i))
        spool.close()
    spool = Spool(tmp_path / "spool.db")
    gaps = walk(delivered(spool, signer.key_id), signer.key_id)
    assert len(gaps) == 1 and gaps[0][1] == 23, f"one explained gap ending right before seq 24 expected: {gaps}"
    spool.close()


def test_age_bound_drops_everything_too_old_to_deliver(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    chain = ChainSigner(signer, spool, spool_max_age_s=10 * W_MS // 1000)
    for i in range(12):
        chain.sign(window(i))
    got = delivered(spool, signer.key_id)
    gaps = walk(got, signer.key_id)
    assert gaps == [(0, 10, "spool_age")], gaps
    assert [w.chain.seq for w, _ in got] == [11]
    spool.close()


def test_acknowledged_statements_are_never_declared_dropped(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    one = len(statement_bytes(window(0))) + 200
    chain = ChainSigner(signer, spool, spool_max_bytes=3 * one)
    for i in range(5):
        chain.sign(window(i))
    spool.ack(signer.key_id, 4)  # the collector stored 0..4
    for i in range(5, 9):
        chain.sign(window(i))
    got = delivered(spool, signer.key_id)
    dropped = [w.dropped for w, _ in got if w.dropped is not None]
    assert dropped and all(d.from_seq >= 5 for d in dropped), f"an acknowledged seq declared dropped: {dropped}"
    head = ChainHead(signer.key_id, 4, "", 0, "b1")
    first, digest = got[0]
    check_next(dataclasses.replace(head, digest=first.chain.prev or ""), first, digest, signer.key_id)
    spool.close()


def test_full_disk_loses_no_signed_statement_and_the_next_one_says_what_was_missed(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    chain = ChainSigner(signer, spool)
    chain.sign(window(0))
    # A real SQLITE_FULL: cap the file at its current size (what a full file system does).
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]  # test seam: the spool's connection
    spool._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(SpoolFullError, match="full"):
        for i in range(1, 40):
            chain.sign(window(i))
    missed = [window(i) for i in range(40, 42)]
    for w in missed:
        with pytest.raises(SpoolFullError):
            chain.sign(w)
    spool._db.execute("PRAGMA max_page_count = 1000000")  # space returns
    spool.ack(signer.key_id, 0)
    seq, env = chain.sign(window(42))
    stmt = parse_statement(env.payload)
    events = [e for e in stmt.events if e.kind == WINDOWS_NOT_RECORDED_EVENT]
    assert events, f"the statement after a full disk must say windows were lost; events: {stmt.events}"
    seqs = [w.chain.seq for w, _ in delivered(spool, signer.key_id)]
    assert seqs == list(range(1, seq + 1)), f"the chain must go on without a hole after a full disk: {seqs}"
    spool.close()


def test_a_gap_the_record_does_not_cover_is_still_refused() -> None:
    signer_key = "sha256:" + "0" * 64
    base = msgspec.structs.replace(window(5), chain=msgspec.structs.replace(window(5).chain, key_id=signer_key, seq=9))
    head = ChainHead(signer_key, 3, "a" * 64, window(4).end_ms, "b1")
    w = msgspec.structs.replace(base, chain=msgspec.structs.replace(base.chain, prev="c" * 64))
    with pytest.raises(ChainError) as exc:
        check_next(head, w, "d" * 64, signer_key)
    assert exc.value.reason == "seq_gap"
    partial = msgspec.structs.replace(w, dropped=Dropped(6, 8, 3, "spool_size", "c" * 64))  # seq 4..5 unexplained
    with pytest.raises(ChainError) as exc:
        check_next(head, partial, "d" * 64, signer_key)
    assert exc.value.reason == "seq_gap"
    covered = msgspec.structs.replace(w, dropped=Dropped(4, 8, 5, "spool_size", "c" * 64))
    check_next(head, covered, "d" * 64, signer_key)
    assert explained_gap(head, covered) == (4, 8)


@pytest.mark.parametrize(
    ("dropped", "why"),
    [
        (Dropped(4, 8, 4, "spool_size", "c" * 64), "count"),
        (Dropped(4, 7, 4, "spool_size", "c" * 64), "end right before"),
        (Dropped(4, 8, 5, "spool_size", "e" * 64), "last_digest"),
        (Dropped(4, 8, 5, "Spool Size!", "c" * 64), "reason"),
    ],
)
def test_an_inconsistent_dropped_record_is_a_schema_error(dropped: Dropped, why: str) -> None:
    w = msgspec.structs.replace(window(5), chain=msgspec.structs.replace(window(5).chain, seq=9, prev="c" * 64))
    with pytest.raises(SchemaError, match="dropped"):
        parse_statement(statement_bytes(msgspec.structs.replace(w, dropped=dropped)))


class _Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_clock_going_back_is_skipped_until_it_passes_and_then_explained() -> None:
    mono = _Mono()
    watch = ClockWatch(tolerance_s=2.0, monotonic=mono)
    used = []
    events = []
    # Wall clock: 1000, 1001, 1002, then stepped back by 5 s, then ticking on.
    walls = [1000.0, 1001.0, 1002.0, 998.0, 999.0, 1000.0, 1001.0, 1002.0, 1003.0]
    for wall in walls:
        ok, ev = watch.admit(wall, None)
        used.append(ok)
        if ev is not None:
            events.append(ev)
        mono.t += 1.0
    assert used == [True, True, True, False, False, False, False, False, True], used
    assert [e.kind for e in events] == [CLOCK_JUMP_EVENT], events
    assert "went back by 5000 ms" in events[0].detail and "5 sample(s)" in events[0].detail, events[0].detail


def test_clock_jumping_forward_is_explained_once() -> None:
    mono = _Mono()
    watch = ClockWatch(tolerance_s=2.0, monotonic=mono)
    out = []
    for wall in (1000.0, 1001.0, 1602.0, 1603.0):
        out.append(watch.admit(wall, None))
        mono.t += 1.0
    assert all(ok for ok, _ in out)
    events = [ev for _, ev in out if ev is not None]
    assert len(events) == 1 and "forward by 600000 ms" in events[0].detail, events


def test_samples_before_the_last_signed_window_are_not_used_after_a_restart() -> None:
    watch = ClockWatch(tolerance_s=2.0, monotonic=_Mono())
    assert watch.admit(999.5, 1_000_000) == (False, None), "a restart inside a signed window is no clock jump"
    assert watch.admit(1000.0, 1_000_000)[0] is True
