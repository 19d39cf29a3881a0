"""`gpuaudit-agent run` end to end: the live loop with a simulated source, a real collector."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_harness import agent_config, start_agent, write_agent_config
from collector_harness import collector

from agent.spool import Spool
from attestation.keys import load_key_file


def test_live_agent_signs_streams_and_survives_a_restart(tmp_path: Path, run_async: Callable[[Any], Any]) -> None:
    cfg_file = write_agent_config(tmp_path)

    async def scenario() -> None:
        async with collector(tmp_path) as h:
            (token,) = h.tokens(1)
            cfg = agent_config(cfg_file, token, h.address)
            for _ in range(2):  # the second start must continue the same chain with the same key
                agent = start_agent(cfg)
                await asyncio.sleep(3.5)
                await agent.stop()
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
