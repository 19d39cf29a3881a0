"""Fault injection with real processes on loopback: nothing signed is lost or stored twice.

Each test replays a small site through real agent code and asserts zero loss: every
statement the agents signed is stored exactly once (per key, the stored chain is 0..n-1 with
n the number signed), whatever the network or the collector did meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector_harness import collector
from tcp_proxy import TcpProxy

from agent.pipeline import windows_from_records
from agent.replay import ReplayStats, TokenPool, replay
from agent.sim.scenarios import demo_site
from agent.spool import Spool
from agent.stream import insecure_channel
from agent.trace import parse_lines
from collector.store.sqlite import SqliteStore

Runner = Callable[[Any], Any]
NODES = 12
# Faults injected per test (each followed by 1.5 s of healthy network): bounded, so the test
# always ends, and enough that every stream lives through several of each kind.
FAULT_CYCLES = 9


def site_lines(hours: float = 1.5) -> list[str]:
    records = demo_site(seed=9, hours=hours, sample_interval_s=20, training_nodes=8, inference_nodes=2, slurm_nodes=2)
    return [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]


def assert_zero_loss(store: SqliteStore, spool: Spool, stats: ReplayStats) -> None:
    assert stats.rejected == [], stats.rejected
    assert spool.count() == 0, f"{spool.count()} statements never acknowledged"
    keys = store.keys()
    assert len(keys) == NODES
    stored = store.statement_count()
    assert stored == stats.signed, f"signed {stats.signed}, stored {stored}: lost or stored twice"
    for k in keys:
        seqs = [r.seq for r in store.iter_statements(k.key_id)]
        assert seqs == list(range(len(seqs))), f"chain of {k.node_id} is not contiguous: {seqs[:5]}..."


def test_network_resets_stalls_and_refusals_lose_nothing(tmp_path: Path, run_async: Runner) -> None:
    lines = site_lines()

    async def scenario() -> None:
        async with collector(tmp_path) as h:
            proxy = TcpProxy(h.running.port)
            port = await proxy.start()
            enrolled = asyncio.Event()
            done = asyncio.Event()

            def progress(s: ReplayStats) -> None:
                if s.nodes == NODES:
                    enrolled.set()

            async def chaos() -> None:
                await enrolled.wait()
                cycle = 0
                while not done.is_set() and cycle < FAULT_CYCLES:
                    await asyncio.sleep(1.5)  # healthy between faults
                    step = cycle % 3
                    if step == 0:
                        proxy.cut("reset")
                    elif step == 1:
                        proxy.mode = "stall"
                        await asyncio.sleep(0.8)
                        proxy.mode = "pass"
                    else:
                        proxy.mode = "drop"
                        proxy.cut("drop")
                        await asyncio.sleep(0.5)
                        proxy.mode = "pass"
                    cycle += 1

            spool = Spool(":memory:")
            chaos_task = asyncio.create_task(chaos())
            async with insecure_channel(f"127.0.0.1:{port}") as ch:
                stats = await replay(
                    windows_from_records(parse_lines(lines)),
                    ch,
                    TokenPool(h.tokens(NODES)),
                    spool=spool,
                    progress=progress,
                    progress_every_s=0.05,
                    backoff_max_s=2.0,
                )
            done.set()
            await chaos_task
            await proxy.stop()
            assert proxy.stats.resets > 0, "the proxy never cut a connection: the test tested nothing"
            assert_zero_loss(h.store, spool, stats)

    run_async(scenario())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_collector(db: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "-q",
            "serve",
            "--db",
            str(db),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            "",
            "--insecure",
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("collector did not start listening")


def test_collector_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path, run_async: Runner) -> None:
    lines = site_lines(hours=0.75)
    db = tmp_path / "collector.db"
    store = SqliteStore(db)
    tokens = [store.create_token(600, time.time_ns() // 1_000_000) for _ in range(NODES)]
    store.close()
    port = _free_port()
    procs = [_start_collector(db, port)]

    async def scenario() -> ReplayStats:
        acked_enough = asyncio.Event()
        killed = asyncio.Event()

        def progress(s: ReplayStats) -> None:
            if s.nodes == NODES and s.acked > 100:
                acked_enough.set()

        async def killer() -> None:
            await acked_enough.wait()
            procs[0].send_signal(signal.SIGKILL)  # no goodbye: mid-batch, mid-transaction
            procs[0].wait()
            killed.set()
            await asyncio.sleep(1.0)
            procs.append(await asyncio.to_thread(_start_collector, db, port))

        spool = Spool(":memory:")
        task = asyncio.create_task(killer())
        async with insecure_channel(f"127.0.0.1:{port}") as ch:
            stats = await replay(
                windows_from_records(parse_lines(lines)),
                ch,
                TokenPool(tokens),
                spool=spool,
                progress=progress,
                progress_every_s=0.05,
                backoff_max_s=2.0,
            )
        await task
        assert killed.is_set(), "the collector was never killed: the test tested nothing"
        assert spool.count() == 0
        return stats

    try:
        stats = run_async(scenario())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
    store = SqliteStore(db)
    try:
        assert_zero_loss(store, Spool(":memory:"), stats)
    finally:
        store.close()
