"""`gpuaudit-agent run` end to end: the live loop with a simulated source, a real collector."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector_harness import collector

from agent.config import load_agent_config
from agent.node import run_agent
from agent.sim.scenarios import demo_site
from agent.spool import Spool
from agent.trace import write_trace
from attestation.keys import load_key_file


def test_live_agent_signs_streams_and_survives_a_restart(tmp_path: Path, run_async: Callable[[Any], Any]) -> None:
    trace = tmp_path / "node.jsonl"
    write_trace(
        trace, demo_site(seed=5, hours=0.2, sample_interval_s=10, training_nodes=1, inference_nodes=0, slurm_nodes=0)
    )
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(
        "\n".join(
            [
                'node_id = "kl1-n0001"',
                f'key = "file:{tmp_path}/agent.key"',
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

    async def scenario() -> None:
        async with collector(tmp_path) as h:
            (token,) = h.tokens(1)
            cfg = dataclasses.replace(load_agent_config(cfg_file, {"GPUAUDIT_JOIN_TOKEN": token}), collector=h.address)
            for _ in range(2):  # the second start must continue the same chain with the same key
                stop = asyncio.Event()
                task = asyncio.create_task(run_agent(cfg, stop=stop))
                await asyncio.sleep(3.5)
                stop.set()
                await asyncio.wait_for(task, timeout=20)
            key = load_key_file(tmp_path / "agent.key")
            stored = h.store.statement_count()
            assert stored >= 4, f"only {stored} statements stored from ~7 s of 1 s windows"
            assert h.store.next_seq(key.key_id) == stored, "one key, one contiguous chain across restarts"
            spool = Spool(tmp_path / "spool.db")
            assert spool.count(key.key_id) == 0, "everything signed was acknowledged and left the spool"
            spool.close()
            records = list(h.store.iter_statements(key.key_id))
            doc = json.loads(records[-1].payload)
            gpus = doc["predicate"]["gpus"]
            assert len(gpus) == 8
            assert {w["tenant"] for g in gpus for w in g["workloads"]} <= {"t-kestrel"}

    run_async(scenario())
