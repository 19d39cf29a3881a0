"""`gpuaudit-agent rotate-key` on a running agent: the old key hands over, the collector
enrolls the new key without a join token, and the node's record continues unbroken."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_harness import agent_config, start_agent, wait_until, write_agent_config
from collector_harness import collector

from agent.cli import main as agent_main
from attestation.keys import load_key_file
from attestation.verify import verify_bundle
from collector.export import Selection, build_bundle


def test_a_running_agent_rotates_its_key(tmp_path: Path, run_async: Callable[[Any], Any], capsys: Any) -> None:
    cfg_file = write_agent_config(tmp_path)
    key_file = tmp_path / "agent.key"

    async def scenario() -> dict[str, Any]:
        async with collector(tmp_path) as h:
            (token,) = h.tokens(1)
            agent = start_agent(agent_config(cfg_file, token, h.address))
            await asyncio.sleep(2.5)
            old = load_key_file(key_file)
            assert agent_main(["rotate-key", "--key", f"file:{key_file}"]) == 0
            new_id = capsys.readouterr().out.split()[0]
            await wait_until("no statements from the new key", lambda: h.store.next_seq(new_id) >= 2, timeout_s=20)
            await agent.stop()
            assert load_key_file(key_file).key_id == new_id, "the new key must replace the old key file"
            old_rec, new_rec = h.store.key(old.key_id), h.store.key(new_id)
            assert old_rec is not None and old_rec.revoked_ms is not None, "the old key must retire"
            assert new_rec is not None and new_rec.node_id == "kl1-n0001"
            assert [t.used_by_node for t in h.store.tokens()].count("kl1-n0001") >= 1
            first = json.loads(next(h.store.iter_statements(new_id)).payload)["predicate"]["chain"]
            assert (first["seq"], first["epoch"], first["prev_key_id"]) == (0, 1, old.key_id)
            assert h.running.checkpointer is not None
            log = h.running.checkpointer.log
            return build_bundle(h.store, log, Selection(all=True), time.time_ns() // 1_000_000)

    doc = run_async(scenario())
    report = verify_bundle(json.dumps(doc).encode())
    assert report.ok, [str(f) for f in report.failures]
    assert report.keys == 2
