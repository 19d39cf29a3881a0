"""A store that cannot write for a while: nothing refused that was not refused.

Honest agents stream through a collector whose store stops accepting writes for a few
seconds, twice: a SQLite write lock held from another connection (as a backup or a stuck
maintenance job would), a file-size limit on the collector process (writes fail with EFBIG,
as on a full disk), and a PostgreSQL table lock. Each test asserts that no statement is
refused and no chain break counted (the store's refusals, the refusal and chain-break
metrics), that every statement is stored exactly once in the end, that grpc health said
NOT_SERVING during the fault and SERVING after, and that the fault shows in
``gpuaudit_collector_store_write_failing`` and ``gpuaudit_collector_store_write_failures_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_faults import NODES, report_figures, site_lines

from agent.replay import ReplayStats, TokenPool, replay
from agent.spool import Spool
from agent.stream import insecure_channel
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.metrics import CHAIN_BREAK_REASONS
from collector.server import SERVICE_NAME, RunningCollector, start_collector
from collector.store.base import Store
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core.pipeline import windows_from_records
from core.trace import parse_lines

Runner = Callable[[Any], Any]
REPO = Path(__file__).resolve().parents[2]
FAULTS = 2  # episodes per test
FAULT_S = 3.0  # how long each lasts
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HealthWatch:
    """Polls the collector's grpc health every 50 ms; remembers what it saw, and when."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[tuple[float, int]] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not self._stop.is_set():
                try:
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
                    self.seen.append((time.monotonic(), resp.status))
                except grpc.aio.AioRpcError:
                    pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)

    def stop(self) -> None:
        self._stop.set()

    def statuses_between(self, t0: float, t1: float) -> set[int]:
        return {s for t, s in self.seen if t0 <= t <= t1}


async def _stream_site(
    address: str,
    tokens: list[str],
    fault: Callable[[], Awaitable[None]],
    hours: float = 0.75,
) -> tuple[ReplayStats, Spool, float]:
    """Replay the test site through ``address``; ``fault`` runs once every node streams."""
    lines = site_lines(hours=hours)
    enrolled = asyncio.Event()

    def progress(s: ReplayStats) -> None:
        if s.nodes == NODES and s.acked > 50:
            enrolled.set()

    async def injector() -> None:
        await enrolled.wait()
        await fault()

    spool = Spool(":memory:")
    task = asyncio.create_task(injector())
    t0 = time.monotonic()
    async with insecure_channel(address) as ch:
        stats = await replay(
            windows_from_records(parse_lines(lines)),
            ch,
            TokenPool(tokens),
            spool=spool,
            progress=progress,
            progress_every_s=0.05,
            backoff_max_s=1.0,
        )
    elapsed = time.monotonic() - t0
    await task
    return stats, spool, elapsed


def _assert_nothing_refused_and_all_stored(store: Store, spool: Spool, stats: ReplayStats) -> None:
    refusals = store.refusals(1000)
    assert refusals == [], (
        f"{len(refusals)} statement(s) of honest agents refused while the store could not write, e.g. "
        f"{[(r.reason, r.node_id, r.seq) for r in refusals[:5]]}"
    )
    assert stats.rejected == [], f"agents were told their statements were refused: {stats.rejected[:3]}"
    assert spool.count() == 0, f"{spool.count()} statements never acknowledged"
    keys = store.keys()
    assert len(keys) == NODES
    stored = store.statement_count()
    assert stored == stats.signed, f"signed {stats.signed}, stored {stored}: lost or stored twice"
    for k in keys:
        seqs = [r.seq for r in store.iter_statements(k.key_id)]
        assert seqs == list(range(len(seqs))), f"chain of {k.node_id} is not contiguous: {seqs[:5]}..."


def _assert_health(watch: _HealthWatch, episodes: list[tuple[float, float]]) -> None:
    for t0, t1 in episodes:
        seen = watch.statuses_between(t0, t1 + 1.0)
        assert NOT_SERVING in seen, f"health never said NOT_SERVING while the store could not write (saw {seen})"
    assert watch.seen and watch.seen[-1][1] == SERVING, "health did not return to SERVING after the store recovered"


def _metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels or "{" in line.split(" ")[0] else " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.asynccontextmanager
async def _collector(tmp: Path, store: Store) -> AsyncIterator[RunningCollector]:
    cfg = CollectorConfig(listen="127.0.0.1:0", metrics_listen="", insecure=True, db=tmp / "collector.db")
    running = await start_collector(cfg, store, DetectorEngine(DetectConfig(), TenantDirectory()))
    try:
        yield running
    finally:
        await running.stop(0.5)


def _in_process_figures(running: RunningCollector, store: Store) -> dict[str, Any]:
    m = running.metrics
    refused = sum(s.value for metric in m.refused.collect() for s in metric.samples if s.name.endswith("_total"))
    breaks = sum(
        s.value
        for metric in m.chain_breaks.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels["reason"] in CHAIN_BREAK_REASONS
    )
    return {"refused_metric": refused, "chain_breaks_metric": breaks, "refusal_records": len(store.refusals(1000))}


# -- SQLite: a write lock held from another connection --------------------------------------


def _lock_scenario(
    run_async: Runner,
    tmp_path: Path,
    store: Store,
    hold_lock: Callable[[], None],
    episodes: list[tuple[float, float]],
    figures_name: str,
) -> None:
    """Stream a site through a collector on ``store`` while ``hold_lock`` holds a write lock from
    outside ``FAULTS`` times; nothing may be refused and everything must be stored once."""

    async def scenario() -> None:
        async with _collector(tmp_path, store) as running:
            address = f"127.0.0.1:{running.port}"
            watch = _HealthWatch(address)
            watcher = asyncio.create_task(watch.run())

            async def fault() -> None:
                for _ in range(FAULTS):
                    await asyncio.to_thread(hold_lock)
                    await asyncio.sleep(1.5)

            now = time.time_ns() // 1_000_000
            tokens = [store.create_token(600, now) for _ in range(NODES)]
            started = time.monotonic()
            stats, spool, elapsed = await _stream_site(address, tokens, fault)
            streamed_until = started + elapsed
            await asyncio.sleep(0.3)
            watch.stop()
            await watcher
            figures = _in_process_figures(running, store)
            failed = running.metrics.store_write_failures.labels("locked")._value.get()
            report_figures(
                figures_name,
                {
                    **figures,
                    "failed_commits": failed,
                    "signed": stats.signed,
                    "stored": store.statement_count(),
                    "seconds": round(elapsed, 1),
                },
            )
            assert failed > 0, "no commit failed: the test tested nothing"
            assert figures["refused_metric"] == 0 and figures["chain_breaks_metric"] == 0, figures
            _assert_nothing_refused_and_all_stored(store, spool, stats)
            # A lock taken after the last statement was stored fails no commit (on a fast
            # machine the site is streamed before the last episode), and one taken just before
            # may see no commit either (on a loaded machine the last batch can be stored in the
            # moment before it): health is asked to say NOT_SERVING for the episodes held wholly
            # while statements were arriving. The first always is: nothing is stored while it
            # holds, so the site cannot finish streaming before it ends.
            during = [e for e in episodes if e[1] <= streamed_until]
            assert during, f"no lock was held wholly while the site streamed: {episodes}, {streamed_until}"
            _assert_health(watch, during)

    try:
        run_async(scenario())
    finally:
        store.close()


def test_sqlite_write_lock_held_from_outside_refuses_nothing(tmp_path: Path, run_async: Runner) -> None:
    db = tmp_path / "collector.db"
    # The collector waits 300 ms for a lock (10 s by default), so a 3 s lock fails commits.
    store = SqliteStore(db, busy_timeout_ms=300)
    episodes: list[tuple[float, float]] = []

    def hold_lock() -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            t0 = time.monotonic()
            time.sleep(FAULT_S)
            conn.execute("ROLLBACK")
            episodes.append((t0, time.monotonic()))
        finally:
            conn.close()

    _lock_scenario(run_async, tmp_path, store, hold_lock, episodes, "store_sqlite_lock")


# -- SQLite: a file-size limit on the collector process (writes fail with EFBIG) ------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ignore_sigxfsz() -> None:
    # In the child before exec: a write past RLIMIT_FSIZE then fails with EFBIG instead of
    # killing the process (an ignored signal stays ignored across exec).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@contextlib.contextmanager
def _collector_process(db: Path, port: int, metrics_port: int) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "serve",
            "--db",
            str(db),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--insecure",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # a pipe, not a file: the file-size limit must not reach the log
        preexec_fn=_ignore_sigxfsz,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    log: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: log.extend(line.decode(errors="replace") for line in proc.stderr))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, f"collector did not start: {''.join(log)}"
            time.sleep(0.05)
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        reader.join(timeout=5)


def test_file_size_limit_on_the_collector_refuses_nothing(tmp_path: Path, run_async: Runner) -> None:
    db = tmp_path / "collector.db"
    store = SqliteStore(db)
    now = time.time_ns() // 1_000_000
    tokens = [store.create_token(600, now) for _ in range(NODES)]
    store.close()
    port, metrics_port = _free_port(), _free_port()
    episodes: list[tuple[float, float]] = []

    with _collector_process(db, port, metrics_port) as (proc, log):
        _soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)

        async def fault() -> None:
            for _ in range(FAULTS):
                # Every write past the first 4 KiB of a file fails (EFBIG), as on a full disk.
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, hard))
                t0 = time.monotonic()
                await asyncio.sleep(FAULT_S)
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
                episodes.append((t0, time.monotonic()))
                await asyncio.sleep(1.5)

        async def scenario() -> tuple[ReplayStats, Spool, float, _HealthWatch]:
            watch = _HealthWatch(f"127.0.0.1:{port}")
            watcher = asyncio.create_task(watch.run())
            stats, spool, elapsed = await _stream_site(f"127.0.0.1:{port}", tokens, fault)
            await asyncio.sleep(0.3)
            watch.stop()
            await watcher
            return stats, spool, elapsed, watch

        stats, spool, elapsed, watch = run_async(scenario())
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        proc.terminate()
        proc.wait(timeout=20)
    output = "".join(log)
    figures = {
        "refused_metric": _metric(text, "gpuaudit_collector_statements_refused_total"),
        "chain_breaks_metric": _metric(text, "gpuaudit_collector_chain_breaks_total"),
        "failed_commits": _metric(text, "gpuaudit_collector_store_write_failures_total"),
        "write_failing_after": _metric(text, "gpuaudit_collector_store_write_failing"),
        "fault_warnings": output.count("the store cannot write"),
        "tracebacks": output.count("Traceback"),
        "signed": stats.signed,
        "seconds": round(elapsed, 1),
    }
    store = SqliteStore(db)
    try:
        figures["refusal_records"] = len(store.refusals(1000))
        figures["stored"] = store.statement_count()
        report_figures("store_file_size_limit", figures)
        assert figures["failed_commits"] > 0, f"no commit failed: the test tested nothing\n{output[-3000:]}"
        assert figures["refused_metric"] == 0 and figures["chain_breaks_metric"] == 0, figures
        assert figures["write_failing_after"] == 0, "gpuaudit_collector_store_write_failing stayed 1 after recovery"
        assert figures["tracebacks"] == 0, f"tracebacks in the collector's log:\n{output[-4000:]}"
        assert 1 <= figures["fault_warnings"] <= FAULTS, (
            f"expected one warning per fault episode, got {figures['fault_warnings']}:\n{output[-3000:]}"
        )
        _assert_nothing_refused_and_all_stored(store, spool, stats)
        _assert_health(watch, episodes)
    finally:
        store.close()


# -- PostgreSQL: a table lock held from another connection -----------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'gpuaudit[postgres]')")
    server = os.environ.get("GPUAUDIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(server, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL server reachable at {server} (set GPUAUDIT_TEST_POSTGRES_URL): {exc}")
    schema = f"gpuaudit_sf_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield server + ("&" if "?" in server else "?") + f"options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_postgres_table_lock_held_from_outside_refuses_nothing(tmp_path: Path, pg_url: str, run_async: Runner) -> None:
    import psycopg

    from collector.store.postgres import PostgresStore

    # The collector waits 300 ms for a lock (10 s by default), so a 3 s lock fails commits.
    store = PostgresStore(pg_url, write_lock_timeout_ms=300)
    episodes: list[tuple[float, float]] = []

    def hold_lock() -> None:
        with psycopg.connect(pg_url) as conn:
            conn.execute("LOCK TABLE statements IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            time.sleep(FAULT_S)
            conn.rollback()
            episodes.append((t0, time.monotonic()))

    _lock_scenario(run_async, tmp_path, store, hold_lock, episodes, "store_postgres_lock")
