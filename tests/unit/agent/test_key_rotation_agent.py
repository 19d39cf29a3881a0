"""The agent's side of key rotation: `rotate-key`, the hand-over at the next window, and an
agent stopped between the hand-over and replacing its key file."""

from __future__ import annotations

from pathlib import Path

from agent.rotation import maybe_rotate, next_key_path, request_rotation, resume_rotation
from agent.signing import ChainSigner
from agent.spool import Spool
from attestation import dsse
from attestation.keys import load_key_file, open_signer
from attestation.statement import Chain, GpuWindow, UsageWindow, parse_statement
from attestation.wire import envelope_from_bytes


def _window(i: int) -> UsageWindow:
    start = 1_700_000_000_000 + i * 60_000
    gpu = GpuWindow(
        index=0, uuid="GPU-a", serial="sn-a", model="NVIDIA H100", mem_total_bytes=1, power_limit_mw=1, samples=1,
        energy_start_mj=i, energy_end_mj=i + 1, power_mean_mw=1, power_max_mw=1, util_mean_permille=1,
        mem_used_max_bytes=1,
        workloads=(),
    )  # fmt: skip
    return UsageWindow("n1", "boot-1", "0.1.0", start, start + 60_000, 1000, Chain("", 0, None), (gpu,))


def test_an_agent_stopped_mid_rotation_finishes_it_on_start(tmp_path: Path) -> None:
    uri = f"file:{tmp_path}/agent.key"
    old = open_signer(uri, create=True)
    spool = Spool(tmp_path / "spool.db")
    spool.set_meta("enrolled_key_id", old.key_id)
    cs = ChainSigner(old, spool)
    cs.sign(_window(0))
    new = request_rotation(uri)
    assert next_key_path(uri) is not None and next_key_path(uri).exists()  # type: ignore[union-attr]
    maybe_rotate(cs, uri)
    assert cs.rotating
    _, handover = cs.sign(_window(1))
    assert cs.signer.key_id == new.key_id
    # The agent stops here: the key file still holds the old key.
    spool.close()

    spool = Spool(tmp_path / "spool.db")
    signer = resume_rotation(uri, open_signer(uri), spool)
    assert signer.key_id == new.key_id, "the start must continue with the new key"
    assert load_key_file(tmp_path / "agent.key").key_id == new.key_id
    assert not (tmp_path / "agent.key.next").exists()
    assert spool.get_meta("enrolled_key_id") == new.key_id, "no join token is needed for the new key"
    cs = ChainSigner(signer, spool)
    _, env = cs.sign(_window(2))
    first = parse_statement(dsse.verify(env, new.public_key())).chain
    assert (first.seq, first.epoch, first.prev_key_id, first.prev_key_digest) == (0, 1, old.key_id, handover.digest())
    last_old = parse_statement(envelope_from_bytes(spool.pending(old.key_id)[-1][1]).payload)
    assert last_old.rotation is not None and last_old.rotation.new_key_id == new.key_id
    spool.close()


def test_no_rotation_without_a_request(tmp_path: Path) -> None:
    uri = f"file:{tmp_path}/agent.key"
    signer = open_signer(uri, create=True)
    spool = Spool(tmp_path / "spool.db")
    cs = ChainSigner(signer, spool)
    maybe_rotate(cs, uri)
    assert not cs.rotating
    assert resume_rotation(uri, signer, spool) is signer
    spool.close()
