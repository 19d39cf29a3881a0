"""`gpuaudit-agent rotate-key` on a running agent: the old key hands over, the collector
enrolls the new key without a join token, and the node's record continues unbroken."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector_harness import collector

from agent.cli import main as agent_main
from agent.config import load_agent_config
from agent.node import run_agent
from agent.sim.scenarios import demo_site
from agent.trace import write_trace
from attestation.keys import load_key_file
from attestation.verify import verify_bundle
from collector.export import Selection, build_bundle


def test_a_running_agent_rotates_its_key(tmp_path: Path, run_async: Callable[[Any], Any], capsys: Any) -> None:
    trace = tmp_path / "node.jsonl"
    write_trace(
        trace, demo_site(seed=5, hours=0.2, sample_interval_s=10, training_nodes=1, inference_nodes=0, slurm_nodes=0)
    )
    key_file = tmp_path / "agent.key"
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(
        "\n".join(
            [
                'node_id = "kl1-n0001"',
                f'key = "file:{key_file}"',
                f'spool = "{tmp_path}/spool.db"',
                'source = "sim"',
                f'sim_trace = "{trace}"',
                "window_s = 1",
                "bucket_s = 1",
                "sample_interval_s = 0.1",
                "insecure = true",
            ]
        )
    )

    async def scenario() -> dict[str, Any]:
        async with collector(tmp_path) as h:
            (token,) = h.tokens(1)
            cfg = dataclasses.replace(load_agent_config(cfg_file, {"GPUAUDIT_JOIN_TOKEN": token}), collector=h.address)
            stop = asyncio.Event()
            task = asyncio.create_task(run_agent(cfg, stop=stop))
            await asyncio.sleep(2.5)
            old = load_key_file(key_file)
            assert agent_main(["rotate-key", "--key", f"file:{key_file}"]) == 0
            new_id = capsys.readouterr().out.split()[0]
            deadline = time.monotonic() + 20
            while h.store.next_seq(new_id) < 2:
                assert time.monotonic() < deadline, "no statements from the new key within 20 s"
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.wait_for(task, timeout=20)
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
