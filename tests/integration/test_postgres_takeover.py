"""Two real collector processes on one PostgreSQL database; the detecting one is killed.

Collector A holds the detection lease and raises the opaque training run from the log while
every node streams to B. A is then killed (SIGKILL: no clean shutdown); B takes the lease,
warms its detector up from the stored look-back and goes on: the run keeps its one finding,
which B keeps updating, as if A had never died.

Skips when no PostgreSQL server is reachable (GPUAUDIT_TEST_POSTGRES_URL overrides
postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from test_postgres_collectors import _start, pg_url
from test_warm_start import sign_chains, site_rounds, stream_rounds

from agent.stream import enroll
from attestation.keys import Ed25519Signer
from collector.detect.config import DetectConfig
from collector.detect.engine import run_offline
from collector.detect.findings import KIND_LARGE_TRAINING
from collector.tenants import TenantDirectory
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_tenants_toml

__all__ = ["pg_url"]  # the fixture, shared with the two-collector test

Runner = Callable[[Any], Any]
KILL_MINUTE = 60


def _wait(what: str, cond: Callable[[], bool], logs: list[Path], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.parent.name}\n{p.read_text()[-3000:]}" for p in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)


def test_the_collector_taking_over_detection_warms_up_and_continues(
    tmp_path: Path, pg_url: str, run_async: Runner
) -> None:
    from collector.store.postgres import PostgresStore

    rounds = site_rounds(1.4)
    tenants_toml = demo_tenants_toml()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(tenants_toml)
    found = run_offline((w for ws in rounds for w in ws), DetectConfig(), TenantDirectory.from_toml(tenants_toml))
    (ref,) = [f for f in found if f.tenant == DEMO_OPAQUE_TENANT]
    nodes = sorted({w.node_id for ws in rounds for w in ws})
    signers = {n: Ed25519Signer.generate() for n in nodes}
    envelopes = sign_chains(rounds, signers)
    store = PostgresStore(pg_url)
    tokens = [store.create_token(600, time.time_ns() // 1_000_000) for _ in nodes]

    def training_findings() -> list[Any]:
        return [r for r in store.findings() if r.kind == KIND_LARGE_TRAINING]

    a, _, log_a = _start(pg_url, tmp_path / "a", tenants, f"collector-a-{secrets.token_hex(2)}")
    procs = [a]
    try:
        _wait("A to take the detection lease", lambda: "this collector runs detection" in log_a.read_text(), [log_a])
        b, port_b, log_b = _start(pg_url, tmp_path / "b", tenants, "collector-b")
        procs.append(b)
        addr_b = f"127.0.0.1:{port_b}"

        async def enroll_all() -> None:
            async with grpc.aio.insecure_channel(addr_b) as ch:
                for node, token in zip(nodes, tokens, strict=True):
                    await enroll(ch, node, signers[node], token)

        run_async(enroll_all())
        assert run_async(stream_rounds(addr_b, rounds[:KILL_MINUTE], envelopes[:KILL_MINUTE], signers)) == []
        _wait("A to raise the run", lambda: len(training_findings()) == 1, [log_a, log_b])
        time.sleep(2.0)  # A follows the log by polling: let it catch up with the last rounds
        (raised,) = training_findings()
        assert (raised.finding_id, raised.detected_ms) == (ref.id, ref.detected_at_ms)

        a.kill()  # no clean shutdown: its database session ends with it
        a.wait(timeout=30)
        _wait("B to warm up and take over", lambda: "this collector runs detection" in log_b.read_text(), [log_b])
        assert "warm start: replayed" in log_b.read_text()
        assert run_async(stream_rounds(addr_b, rounds[KILL_MINUTE:], envelopes[KILL_MINUTE:], signers)) == []

        first = json.loads(raised.json_text)

        def updated() -> bool:
            recs = training_findings()
            return len(recs) > 1 or (
                len(recs) == 1
                and json.loads(recs[0].json_text)["evidence"]["last_window_end"] > first["evidence"]["last_window_end"]
            )

        _wait("B to update the finding", updated, [log_b])
        time.sleep(2.0)  # and to follow the log to its end
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(timeout=30)

    records = training_findings()
    store.close()
    assert [(r.finding_id, r.started_ms, r.detected_ms) for r in records] == [
        (ref.id, ref.started_at_ms, ref.detected_at_ms)
    ], f"one run, one finding across the hand-over:\n{log_b.read_text()[-3000:]}"
    last = json.loads(records[0].json_text)
    assert last["gpu_hours"] > first["gpu_hours"] and last["gpus"] == ref.gpus == 96
    assert "finding f-" not in log_b.read_text(), "B raised nothing as new"
