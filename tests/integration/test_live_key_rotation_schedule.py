"""Scheduled key rotation in the running agent (``key_rotation_days``), and an agent that
dies right after signing a hand-over: the collector and the verifier accept the result."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_harness import agent_config, start_agent, wait_until, write_agent_config
from collector_harness import Harness, collector

import agent.node
from agent.node import run_agent
from agent.spool import Spool
from attestation.keys import load_key_file
from attestation.verify import verify_bundle
from collector.export import Selection, build_bundle
from core.agentconfig import AgentConfig

Runner = Callable[[Any], Any]
SECONDS_PER_DAY = 86_400


def _config(tmp_path: Path, rotation_s: float) -> Path:
    return write_agent_config(tmp_path, 'metrics_listen = ""', f"key_rotation_days = {rotation_s / SECONDS_PER_DAY!r}")


def _keys_of_node(h: Harness) -> list[str]:
    """The node's keys in the order they were enrolled."""
    return [k.key_id for k in sorted(h.store.keys(), key=lambda k: k.enrolled_ms) if k.node_id == "kl1-n0001"]


def _chain_start(h: Harness, key_id: str) -> dict[str, Any]:
    chain: dict[str, Any] = json.loads(next(h.store.iter_statements(key_id)).payload)["predicate"]["chain"]
    return chain


def _bundle(h: Harness) -> dict[str, Any]:
    assert h.running.checkpointer is not None
    return build_bundle(h.store, h.running.checkpointer.log, Selection(all=True), time.time_ns() // 1_000_000)


def test_the_running_agent_rotates_on_schedule(tmp_path: Path, run_async: Runner) -> None:
    cfg_file = _config(tmp_path, rotation_s=2.0)

    async def scenario() -> dict[str, Any]:
        async with collector(tmp_path) as h:
            (token,) = h.tokens(1)
            running = start_agent(agent_config(cfg_file, token, h.address))
            # Two scheduled rotations: the new key's period runs from its own first window.
            await wait_until(
                "no two scheduled rotations accepted by the collector",
                lambda: len(keys := _keys_of_node(h)) >= 3 and h.store.next_seq(keys[2]) >= 1,
            )
            await running.stop()
            keys = _keys_of_node(h)
            for epoch, (old, new) in enumerate(zip(keys, keys[1:], strict=False), start=1):
                record = h.store.key(old)
                assert record is not None and record.revoked_ms is not None, f"key {old} must retire at its hand-over"
                first = _chain_start(h, new)
                assert (first["seq"], first["epoch"], first["prev_key_id"]) == (0, epoch, old)
            # The newest key replaced the key file (or, handed over by the last window signed at
            # the stop, waits as the next key: the next start finishes the replacement).
            nxt = tmp_path / "agent.key.next"
            current = load_key_file(nxt if nxt.exists() else tmp_path / "agent.key").key_id
            assert current == keys[-1], f"the agent holds {current}, the collector's newest key is {keys[-1]}"
            return _bundle(h)

    doc = run_async(scenario())
    report = verify_bundle(json.dumps(doc).encode())
    assert report.ok, [str(f) for f in report.failures]
    assert report.keys >= 3


class _CrashError(Exception):
    """The agent process dies here."""


def test_an_agent_that_dies_after_the_handover_finishes_the_rotation_on_restart(
    tmp_path: Path, run_async: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_file = _config(tmp_path, rotation_s=2.0)

    def die(*_: Any) -> None:
        raise _CrashError("after the hand-over was spooled, before the key file was replaced")

    async def scenario() -> dict[str, Any]:
        async with collector(tmp_path) as h:
            (token,) = h.tokens(1)
            cfg = agent_config(cfg_file, token, h.address)
            with monkeypatch.context() as m:
                m.setattr(agent.node, "finish_rotation", die)
                with pytest.raises(_CrashError):
                    await run_agent(cfg)
            (old,) = _keys_of_node(h)
            assert load_key_file(tmp_path / "agent.key").key_id == old, "the crash came before the key file changed"
            spool = Spool(cfg.spool)
            handover_seq = spool.chain_state(old).next_seq - 1
            unsent = [seq for seq, _ in spool.pending(old)]
            spool.close()
            assert handover_seq in unsent, f"the hand-over seq {handover_seq} must wait in the spool: {unsent}"
            assert h.store.next_seq(old) <= handover_seq, "the collector must not have the hand-over yet"

            # The restart has no join token: the hand-over enrolls the new key.
            restart: AgentConfig = dataclasses.replace(cfg, join_token=None, join_token_file=None, key_rotation_days=0)
            running = start_agent(restart)
            await wait_until(
                "the restarted agent's new key had no statements accepted",
                lambda: len(keys := _keys_of_node(h)) == 2 and h.store.next_seq(keys[1]) >= 2,
            )
            await running.stop()
            old_id, new_id = _keys_of_node(h)
            assert h.store.next_seq(old_id) == handover_seq + 1, "the old key's spooled statements must be stored"
            first = _chain_start(h, new_id)
            assert (first["seq"], first["epoch"], first["prev_key_id"]) == (0, 1, old_id)
            assert load_key_file(tmp_path / "agent.key").key_id == new_id
            assert not (tmp_path / "agent.key.next").exists()
            return _bundle(h)

    doc = run_async(scenario())
    report = verify_bundle(json.dumps(doc).encode())
    assert report.ok, [str(f) for f in report.failures]
    assert report.keys == 2
