"""Scheduled key rotation (``key_rotation_days``) and the crash safety of every rotation:
the period survives restarts, the next key appears whole, the hand-over and its link are
spooled together, and a restarted agent sends the old key's statements first."""

from __future__ import annotations

import logging
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.rotation import (
    MS_PER_DAY,
    RotationSchedule,
    create_next_key,
    next_key_path,
    predecessors_pending,
    request_rotation,
    resume_rotation,
)
from agent.signing import ChainSigner
from agent.spool import Spool
from attestation import dsse
from attestation.errors import KeyFileError
from attestation.keys import load_key_file, open_signer
from attestation.statement import Chain, GpuWindow, UsageWindow, parse_statement
from core.agentconfig import load_agent_config
from core.errors import ConfigError

T0_MS = 1_700_000_040_000


def _window(i: int) -> UsageWindow:
    start = T0_MS + i * 60_000
    gpu = GpuWindow(
        index=0, uuid="GPU-a", serial="sn-a", model="NVIDIA H100", mem_total_bytes=1, power_limit_mw=1, samples=1,
        energy_start_mj=i, energy_end_mj=i + 1, power_mean_mw=1, power_max_mw=1, util_mean_permille=1,
        mem_used_max_bytes=1,
        workloads=(),
    )  # fmt: skip
    return UsageWindow("n1", "boot-1", "0.1.0", start, start + 60_000, 1000, Chain("", 0, None), (gpu,))


def _agent(tmp_path: Path) -> tuple[str, Spool, ChainSigner]:
    uri = f"file:{tmp_path}/agent.key"
    spool = Spool(tmp_path / "spool.db")
    return uri, spool, ChainSigner(open_signer(uri, create=True), spool)


def test_the_schedule_hands_over_once_the_key_has_signed_for_the_period(tmp_path: Path) -> None:
    uri, spool, chain = _agent(tmp_path)
    old = chain.signer
    schedule = RotationSchedule(uri, 1)
    chain.sign(_window(0))
    assert chain.key_since_ms == T0_MS
    schedule.check(chain, T0_MS + MS_PER_DAY - 1)
    assert not chain.rotating and not (tmp_path / "agent.key.next").exists(), "rotated before the period ended"
    schedule.check(chain, T0_MS + MS_PER_DAY)
    assert chain.rotating, "the period has passed: the next window must hand over"
    new = load_key_file(tmp_path / "agent.key.next")
    _, handover = chain.sign(_window(1))
    assert parse_statement(dsse.verify(handover, old.public_key())).rotation is not None
    assert chain.signer.key_id == new.key_id
    _, first = chain.sign(_window(2))
    c = parse_statement(dsse.verify(first, new.public_key())).chain
    assert (c.seq, c.epoch, c.prev_key_id, c.prev_key_digest) == (0, 1, old.key_id, handover.digest())
    # The new key's period starts at its own first window.
    assert chain.key_since_ms == _window(2).start_ms
    schedule.check(chain, _window(2).start_ms + MS_PER_DAY - 1)
    assert not chain.rotating
    spool.close()


def test_the_period_survives_a_restart(tmp_path: Path) -> None:
    uri, spool, chain = _agent(tmp_path)
    chain.sign(_window(0))
    spool.close()
    spool = Spool(tmp_path / "spool.db")
    chain = ChainSigner(open_signer(uri), spool)
    assert chain.key_since_ms == T0_MS, "a restart must not restart the key's period"
    chain.sign(_window(1))
    assert chain.key_since_ms == T0_MS
    RotationSchedule(uri, 2).check(chain, T0_MS + 2 * MS_PER_DAY)
    assert chain.rotating
    spool.close()


def test_zero_days_never_rotates(tmp_path: Path) -> None:
    uri, spool, chain = _agent(tmp_path)
    chain.sign(_window(0))
    RotationSchedule(uri, 0).check(chain, T0_MS + 10_000 * MS_PER_DAY)
    assert not chain.rotating and not (tmp_path / "agent.key.next").exists()
    spool.close()


def test_a_requested_next_key_is_used_not_replaced(tmp_path: Path) -> None:
    uri, spool, chain = _agent(tmp_path)
    chain.sign(_window(0))
    requested = request_rotation(uri)  # `gpuaudit-agent rotate-key`
    RotationSchedule(uri, 1).check(chain, T0_MS + MS_PER_DAY)
    chain.sign(_window(1))
    assert chain.signer.key_id == requested.key_id
    spool.close()


def test_the_next_key_is_created_whole_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "agent.key.next"
    key = create_next_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).key_id == key.key_id
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_next_key(path)
    assert load_key_file(path).key_id == key.key_id, "a refused request must leave the next key as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key.next"], "no temporary file may be left"


def test_an_unusable_next_key_is_reported_once_and_signing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, spool, chain = _agent(tmp_path)
    nxt = next_key_path(uri)
    assert nxt is not None
    nxt.write_bytes(b"not a key")
    nxt.chmod(0o600)
    schedule = RotationSchedule(uri, 1)
    with caplog.at_level(logging.ERROR, logger="agent.rotation"):
        for i in range(3):
            schedule.check(chain, T0_MS + i)
            chain.sign(_window(i))
    assert not chain.rotating
    assert len([r for r in caplog.records if "not rotating" in r.getMessage()]) == 1, caplog.text
    assert spool.chain_state(chain.signer.key_id).next_seq == 3
    spool.close()


def test_spool_meta_is_written_with_its_statement_or_not_at_all(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool._db.execute(  # test seam: the spool's connection; the statement's insert fails
        "CREATE TEMP TRIGGER fail BEFORE INSERT ON spool BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        spool.append("k1", 0, "d0", b"env", 1, meta={"rotated_from/k2": "k1 d0"})
    assert spool.get_meta("rotated_from/k2") is None, "meta outlived the statement it belongs to"
    spool._db.execute("DROP TRIGGER fail")
    spool.append("k1", 0, "d0", b"env", 1, meta={"rotated_from/k2": "k1 d0"})
    assert spool.get_meta("rotated_from/k2") == "k1 d0"
    spool.close()


class _CrashError(Exception):
    """The agent process dies here."""


def test_an_agent_dying_right_after_the_handover_is_spooled_restarts_linked(tmp_path: Path) -> None:
    uri, spool, chain = _agent(tmp_path)
    old = chain.signer
    chain.sign(_window(0))
    new = request_rotation(uri)
    RotationSchedule(uri, 0).check(chain, T0_MS)

    def crash(name: str, value: str) -> None:
        raise _CrashError(name)

    spool.set_meta = crash  # type: ignore[method-assign]  # any write after the hand-over's transaction
    try:
        chain.sign(_window(1))
    except _CrashError:
        pass
    spool.close()

    spool = Spool(tmp_path / "spool.db")
    spooled = [seq for seq, _ in spool.pending(old.key_id)]
    assert spooled == [0, 1], f"the hand-over must be spooled: {spooled}"
    signer = resume_rotation(uri, open_signer(uri), spool)
    assert signer.key_id == new.key_id, "the restart must continue with the new key"
    assert spool.get_meta("enrolled_key_id") == new.key_id, "the new key needs no join token"
    cs = ChainSigner(signer, spool)
    _, first = cs.sign(_window(2))
    c = parse_statement(dsse.verify(first, new.public_key())).chain
    handover_digest = spool.chain_state(old.key_id).last_digest
    assert (c.seq, c.epoch, c.prev_key_id, c.prev_key_digest) == (0, 1, old.key_id, handover_digest)
    spool.close()


def test_a_restart_after_the_handover_sends_the_old_keys_statements_first(tmp_path: Path) -> None:
    uri, spool, chain = _agent(tmp_path)
    old = chain.signer
    chain.sign(_window(0))
    request_rotation(uri)
    RotationSchedule(uri, 0).check(chain, T0_MS)
    chain.sign(_window(1))  # the hand-over, spooled, not acknowledged; the agent stops
    spool.close()
    spool = Spool(tmp_path / "spool.db")
    signer = resume_rotation(uri, open_signer(uri), spool)
    assert signer.key_id != old.key_id
    assert predecessors_pending(spool, signer.key_id) == [old.key_id]
    spool.ack(old.key_id, 1)  # the collector acknowledged them
    assert predecessors_pending(spool, signer.key_id) == []
    spool.close()


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, 90.0),
        ("key_rotation_days = 30", {}, 30.0),
        ("key_rotation_days = 0", {}, 0.0),
        ("", {"GPUAUDIT_KEY_ROTATION_DAYS": "7.5"}, 7.5),
    ],
)
def test_key_rotation_days_config(tmp_path: Path, text: str, env: dict[str, str], expected: float) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    assert load_agent_config(f, env).key_rotation_days == expected


@pytest.mark.parametrize("value", ["-1", "nan", "inf", '"soon"'])
def test_key_rotation_days_refuses_bad_values(tmp_path: Path, value: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(f"key_rotation_days = {value}")
    with pytest.raises(ConfigError, match="key_rotation_days"):
        load_agent_config(f, {})
