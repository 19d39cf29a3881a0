"""The spool and the chain signer: durable until acked, and a chain that survives a crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from agent.signing import ChainSigner, WindowOverlapError
from agent.spool import ChainState, Spool
from attestation import dsse
from attestation.chain import ChainHead, advance, check_next
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, GpuWindow, UsageWindow, parse_statement
from attestation.wire import envelope_from_bytes

T0_MS = 1_700_000_040_000
W_MS = 60_000


def window(i: int, *, start_ms: int | None = None) -> UsageWindow:
    """The i-th window of a node, unsigned (empty chain), with a GPU whose energy rises."""
    start = T0_MS + i * W_MS if start_ms is None else start_ms
    gpu = GpuWindow(
        index=0,
        uuid="GPU-0",
        serial=None,
        model="m",
        mem_total_bytes=None,
        power_limit_mw=None,
        samples=60,
        energy_start_mj=1000 * i,
        energy_end_mj=1000 * (i + 1),
        power_mean_mw=1,
        power_max_mw=1,
        util_mean_permille=1,
        mem_used_max_bytes=None,
        workloads=(),
        unavailable={
            "serial": "NVML_ERROR_NOT_SUPPORTED",
            "mem_total_bytes": "NVML_ERROR_NOT_SUPPORTED",
            "power_limit_mw": "NVML_ERROR_NOT_SUPPORTED",
            "mem_used_max_bytes": "NVML_ERROR_NOT_SUPPORTED",
        },
    )
    return UsageWindow(
        node_id="n1",
        boot_id="b1",
        agent_version="0",
        start_ms=start,
        end_ms=start + W_MS,
        sample_interval_ms=1000,
        chain=Chain("", 0, None),
        gpus=(gpu,),
    )


# -- spool -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> Spool:
    s = Spool(":memory:" if request.param == "memory" else tmp_path / "spool.db")
    request.addfinalizer(s.close)
    return s


def test_new_spool_has_an_empty_chain(spool: Spool) -> None:
    assert spool.chain_state("k") == ChainState(0, None, None)
    assert spool.pending("k") == [] and spool.count() == 0


def test_append_advances_the_chain_and_keeps_envelopes_until_acked(spool: Spool) -> None:
    for seq in range(4):
        spool.append("k", seq, f"d{seq}", b"env%d" % seq, end_ms=1000 * (seq + 1))
    spool.append("other", 0, "x0", b"other-env", end_ms=5)
    assert spool.chain_state("k") == ChainState(next_seq=4, last_digest="d3", last_end_ms=4000)
    assert spool.pending("k") == [(0, b"env0"), (1, b"env1"), (2, b"env2"), (3, b"env3")]
    assert spool.pending("k", from_seq=2) == [(2, b"env2"), (3, b"env3")]
    assert spool.pending("k", limit=1) == [(0, b"env0")]
    spool.ack("k", 1)
    assert [s for s, _ in spool.pending("k")] == [2, 3], "ack(1) must drop exactly seq 0 and 1"
    assert spool.count("k") == 2 and spool.count() == 3
    assert spool.pending("other") == [(0, b"other-env")], "acking one key must not touch another"
    assert spool.chain_state("k").next_seq == 4, "acking must not move the chain back"
    spool.ack("k", 3)
    assert spool.pending("k") == []


def test_append_of_a_used_seq_fails_and_leaves_the_chain_alone(spool: Spool) -> None:
    spool.append("k", 0, "d0", b"e0", end_ms=1)
    with pytest.raises(sqlite3.IntegrityError):
        spool.append("k", 0, "evil", b"e0'", end_ms=2)
    assert spool.chain_state("k") == ChainState(1, "d0", 1), "a failed append must roll back the chain update"
    assert spool.pending("k") == [(0, b"e0")]


def test_meta_get_and_set(spool: Spool) -> None:
    assert spool.get_meta("collector_id") is None
    spool.set_meta("collector_id", "c-1")
    spool.set_meta("collector_id", "c-2")
    spool.set_meta("enrolled", "")
    assert spool.get_meta("collector_id") == "c-2"
    assert spool.get_meta("enrolled") == ""


def test_file_spool_keeps_chain_envelopes_and_meta_across_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    s.append("k", 0, "d0", b"e0", end_ms=10)
    s.set_meta("m", "v")
    s.close()
    s = Spool(tmp_path / "spool.db")
    try:
        assert s.chain_state("k") == ChainState(1, "d0", 10)
        assert s.pending("k") == [(0, b"e0")]
        assert s.get_meta("m") == "v"
    finally:
        s.close()


# -- chain signer ----------------------------------------------------------------------


def verify_chain(envelopes: list[bytes], signer: Ed25519Signer) -> list[UsageWindow]:
    """What the collector does: verify, parse, check the chain. Returns the parsed windows."""
    head: ChainHead | None = None
    out = []
    for raw in envelopes:
        env = envelope_from_bytes(raw)
        stmt = parse_statement(dsse.verify(env, signer.public_key()))
        check_next(head, stmt, env.digest(), signer.key_id)
        head = advance(head, stmt, env.digest())
        out.append(stmt)
    return out


def test_signed_windows_verify_parse_and_link(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    cs = ChainSigner(signer, spool)
    envs = [cs.sign(window(i)) for i in range(3)]
    assert [seq for seq, _ in envs] == [0, 1, 2]
    stmts = verify_chain([raw for _, raw in spool.pending(signer.key_id)], signer)
    assert [(s.chain.seq, s.chain.prev) for s in stmts] == [
        (0, None),
        (1, envs[0][1].digest()),
        (2, envs[1][1].digest()),
    ]
    assert all(s.chain.key_id == signer.key_id for s in stmts)
    # The signed statement is the window with its chain, its key's assurance and why there is
    # no confidential-computing evidence filled in (no log checkpoint was received yet).
    assert stmts[1] == msgspec.structs.replace(
        window(1),
        chain=stmts[1].chain,
        key_assurance="software",
        unavailable={**window(1).unavailable, "cc_attestation": "no_cc_source"},
    )
    assert stmts[1].log_checkpoint is None
    assert [e.kind for e in stmts[0].events].count("agent_start") == 1, "the first statement must say the agent started"
    assert not any(e.kind == "agent_start" for e in stmts[1].events)
    assert spool.chain_state(signer.key_id) == ChainState(3, envs[2][1].digest(), window(2).end_ms)
    spool.close()


def test_chain_continues_after_a_crash_without_ack(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    path = tmp_path / "spool.db"
    spool = Spool(path)
    cs = ChainSigner(signer, spool)
    _, last = cs.sign(window(0))
    _, last = cs.sign(window(1))
    spool.close()  # the agent dies here: nothing was acknowledged

    spool = Spool(path)
    cs = ChainSigner(signer, spool)
    assert (cs.next_seq, cs.last_digest, cs.last_end_ms) == (2, last.digest(), window(1).end_ms)
    seq, env = cs.sign(window(2))
    assert seq == 2
    stmt = parse_statement(dsse.verify(env, signer.public_key()))
    assert stmt.chain.prev == last.digest(), "after restart prev must be the digest of the last spooled statement"
    pending = spool.pending(signer.key_id)
    assert [s for s, _ in pending] == [0, 1, 2], "unacked envelopes must still be there to resend"
    verify_chain([raw for _, raw in pending], signer)  # the whole resend is one valid chain
    spool.close()


def test_chain_signer_refuses_an_overlapping_window_and_does_not_advance(spool: Spool) -> None:
    signer = Ed25519Signer.generate()
    cs = ChainSigner(signer, spool)
    cs.sign(window(0))
    for start in (T0_MS, T0_MS + W_MS - 1, T0_MS - W_MS):
        with pytest.raises(WindowOverlapError, match="overlaps"):
            cs.sign(window(0, start_ms=start))
    assert cs.next_seq == 1 and spool.count() == 1, "a refused window must not be signed or spooled"
    seq, _ = cs.sign(window(1))  # starts exactly where window 0 ended
    assert seq == 1


def test_chain_signer_after_overlap_refusal_survives_reopen(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    ChainSigner(signer, spool).sign(window(5))
    spool.close()
    spool = Spool(tmp_path / "spool.db")
    with pytest.raises(WindowOverlapError):
        ChainSigner(signer, spool).sign(window(4))  # the clock went back across a restart
    spool.close()
