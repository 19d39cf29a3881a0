"""A real agent for integration tests: one simulated training node (kl1-n0001) replaying a
short trace with 1 s windows, run in this process (``start_agent``) or as a
``gpuaudit-agent run`` process (``start_agent_process``). collector_harness.py is the
collector's side."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.node import run_agent
from core.agentconfig import AgentConfig, load_agent_config
from core.sim.scenarios import demo_site
from core.trace import write_trace

NODE_ID = "kl1-n0001"
REPO = Path(__file__).resolve().parents[2]


def node_trace(tmp: Path) -> Path:
    """``tmp/node.jsonl``: one training node, 12 minutes of samples every 10 s (written once)."""
    trace = tmp / "node.jsonl"
    if not trace.exists():
        write_trace(
            trace,
            demo_site(seed=5, hours=0.2, sample_interval_s=10, training_nodes=1, inference_nodes=0, slurm_nodes=0),
        )
    return trace


def write_agent_config(tmp: Path, *lines: str) -> Path:
    """``tmp/agent.toml`` for node kl1-n0001: key ``tmp/agent.key``, spool ``tmp/spool.db``, the
    simulated source replaying ``node_trace(tmp)`` every 0.1 s into 1 s windows, plaintext gRPC;
    then ``lines`` (``collector = ...``, ``metrics_listen = ...``, ...)."""
    cfg = tmp / "agent.toml"
    cfg.write_text(
        "\n".join(
            [
                f'node_id = "{NODE_ID}"',
                f'key = "file:{tmp}/agent.key"',
                f'spool = "{tmp}/spool.db"',
                'source = "sim"',
                f'sim_trace = "{node_trace(tmp)}"',
                "window_s = 1",
                "bucket_s = 1",
                "sample_interval_s = 0.1",
                "insecure = true",
                *lines,
            ]
        )
        + "\n"
    )
    return cfg


def agent_config(cfg_file: Path, token: str | None = None, collector: str | None = None) -> AgentConfig:
    """The config file as the agent loads it, with ``token`` as $GPUAUDIT_JOIN_TOKEN and, if
    given, the ``collector`` address (a harness's, known once it listens)."""
    cfg = load_agent_config(cfg_file, {} if token is None else {"GPUAUDIT_JOIN_TOKEN": token})
    return cfg if collector is None else dataclasses.replace(cfg, collector=collector)


@dataclass
class RunningAgent:
    """``run_agent`` in a task of this event loop, until ``stop``."""

    task: asyncio.Task[None]
    stopping: asyncio.Event

    async def stop(self, timeout_s: float = 20) -> None:
        """Asks the agent to stop (as SIGTERM does) and waits until it has."""
        self.stopping.set()
        await asyncio.wait_for(self.task, timeout=timeout_s)


def start_agent(cfg: AgentConfig, **kwargs: Any) -> RunningAgent:
    """The agent running in this process; ``kwargs`` go to ``run_agent`` (source, metrics)."""
    stopping = asyncio.Event()
    return RunningAgent(asyncio.create_task(run_agent(cfg, stop=stopping, **kwargs)), stopping)


def start_agent_process(cfg_file: Path, token: str) -> subprocess.Popen[bytes]:
    """``gpuaudit-agent run --config cfg_file`` as its own process, stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "GPUAUDIT_JOIN_TOKEN": token, "PYTHONPATH": str(REPO)},
    )


async def wait_until(what: str, ok: Callable[[], bool], timeout_s: float = 30, poll_s: float = 0.2) -> None:
    """Polls ``ok`` until it holds; fails saying ``what`` did not happen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        await asyncio.sleep(poll_s)
