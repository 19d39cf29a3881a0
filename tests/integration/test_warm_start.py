"""A collector restarted in the middle of a training run picks it up where it was.

A real collector (gRPC on loopback, SQLite, inline detection) takes the first hour of a small
site over real streams and raises the opaque tenant's run; it is stopped and a new collector
starts on the same store, warms its detector up from it, and takes the rest over new streams.
The run keeps its one finding (id, start, detection time), which goes on being updated, as
with a collector that never stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from collector_harness import collector

from agent.stream import enroll
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, UsageWindow, statement_bytes
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.wire import envelope_to_proto
from collector.detect.config import DetectConfig
from collector.detect.engine import run_offline
from collector.detect.findings import KIND_LARGE_TRAINING
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core.pipeline import windows_from_records
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_site, demo_tenants_toml
from core.trace import parse_lines

Runner = Callable[[Any], Any]
RESTART_MINUTE = 60


def site_rounds(hours: float) -> list[list[UsageWindow]]:
    """The demo site in miniature (the opaque run from minute 10), window by window."""
    records = demo_site(seed=3, hours=hours, sample_interval_s=20, training_nodes=12, inference_nodes=4, slurm_nodes=4)
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    by_start: dict[int, list[UsageWindow]] = {}
    for w in windows_from_records(parse_lines(lines)):
        by_start.setdefault(w.start_ms, []).append(w)
    return [sorted(by_start[s], key=lambda w: w.node_id) for s in sorted(by_start)]


def sign_chains(rounds: list[list[UsageWindow]], signers: dict[str, Ed25519Signer]) -> list[list[dsse.Envelope]]:
    """Each node's windows signed into its chain, round by round."""
    prev: dict[str, str | None] = dict.fromkeys(signers)
    seq = dict.fromkeys(signers, 0)
    out = []
    for ws in rounds:
        envs = []
        for w in ws:
            s = signers[w.node_id]
            chained = msgspec.structs.replace(w, chain=Chain(s.key_id, seq[w.node_id], prev[w.node_id]))
            env = dsse.sign(statement_bytes(chained), s)
            seq[w.node_id] += 1
            prev[w.node_id] = env.digest()
            envs.append(env)
        out.append(envs)
    return out


async def stream_rounds(
    address: str,
    rounds: list[list[UsageWindow]],
    envelopes: list[list[dsse.Envelope]],
    signers: dict[str, Ed25519Signer],
) -> list[str]:
    """One stream per node; window k of every node before window k + 1, as in real time.
    Returns every reply that is not an ack."""
    bad: list[str] = []
    async with grpc.aio.insecure_channel(address) as ch:
        calls = {}
        for node, s in signers.items():
            call = pb_grpc.CollectorStub(ch).Stream()
            await call.write(pb.StreamRequest(hello=pb.Hello(node_id=node, key_id=s.key_id)))
            await call.read()  # Resume
            calls[node] = call

        async def send(node: str, env: dsse.Envelope) -> None:
            await calls[node].write(pb.StreamRequest(envelope=envelope_to_proto(env)))
            r = await calls[node].read()
            if not r.HasField("ack"):
                bad.append(f"{node}: {r}")

        for ws, envs in zip(rounds, envelopes, strict=True):
            await asyncio.gather(*(send(w.node_id, e) for w, e in zip(ws, envs, strict=True)))
        for call in calls.values():
            await call.done_writing()
    return bad


def test_a_restarted_collector_continues_the_open_finding(
    tmp_path: Path, run_async: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    rounds = site_rounds(1.4)
    tenants = TenantDirectory.from_toml(demo_tenants_toml())
    (ref,) = [
        f
        for f in run_offline((w for ws in rounds for w in ws), DetectConfig(), tenants)
        if f.tenant == DEMO_OPAQUE_TENANT
    ]
    nodes = sorted({w.node_id for ws in rounds for w in ws})
    signers = {n: Ed25519Signer.generate() for n in nodes}
    envelopes = sign_chains(rounds, signers)
    before, after = slice(0, RESTART_MINUTE), slice(RESTART_MINUTE, None)

    async def first_life() -> None:
        async with collector(tmp_path, tenants) as h:
            async with grpc.aio.insecure_channel(h.address) as ch:
                for node, token in zip(nodes, h.tokens(len(nodes)), strict=True):
                    await enroll(ch, node, signers[node], token)
            assert await stream_rounds(h.address, rounds[before], envelopes[before], signers) == []

    async def second_life() -> None:
        async with collector(tmp_path, tenants) as h:
            assert await stream_rounds(h.address, rounds[after], envelopes[after], signers) == []

    run_async(first_life())
    with SqliteStore(tmp_path / "collector.db") as store:
        (raised,) = [r for r in store.findings() if r.kind == KIND_LARGE_TRAINING]
    assert (raised.finding_id, raised.detected_ms) == (ref.id, ref.detected_at_ms)

    with caplog.at_level(logging.INFO, logger="collector.warmup"):
        run_async(second_life())
    replayed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm start: replayed")]
    assert replayed, "the restarted collector warms its detector up"

    with SqliteStore(tmp_path / "collector.db") as store:
        records = [r for r in store.findings() if r.kind == KIND_LARGE_TRAINING]
    assert [(r.finding_id, r.started_ms, r.detected_ms) for r in records] == [
        (ref.id, ref.started_at_ms, ref.detected_at_ms)
    ], "one run, one finding, across the restart"
    first, last = json.loads(raised.json_text), json.loads(records[0].json_text)
    assert last["evidence"]["last_window_end"] > first["evidence"]["last_window_end"], "updated after the restart"
    assert last["gpu_hours"] > first["gpu_hours"] and last["gpus"] == ref.gpus == 96
