"""Agent and collector over real gRPC on loopback, with real keys and real signatures.

Every statement that goes in is either stored exactly once and acknowledged, or refused
with its specific reason; nothing already stored is ever lost.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from collector_harness import collector
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.replay import TokenPool, replay
from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, enroll
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, GpuWindow, UsageWindow, Workload, statement_bytes
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.wire import envelope_to_proto
from collector.tenants import TenantDirectory
from core.pipeline import windows_from_records
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_site, demo_tenants_toml
from core.trace import parse_lines

Runner = Callable[[Any], Any]


def window(node: str, i: int, energy_mj: int = 0) -> UsageWindow:
    start = 1_772_424_000_000 + i * 60_000
    gpu = GpuWindow(
        index=0,
        uuid="GPU-0f1e",
        serial="1650123456789",
        model="NVIDIA H100 80GB HBM3",
        mem_total_bytes=85_520_809_984,
        power_limit_mw=700_000,
        samples=60,
        energy_start_mj=energy_mj + i * 36_000_000,
        energy_end_mj=energy_mj + (i + 1) * 36_000_000,
        power_mean_mw=600_000,
        power_max_mw=650_000,
        util_mean_permille=970,
        mem_used_max_bytes=70_000_000_000,
        workloads=(Workload("t-17", "k8s_pod", "ml/train-0", 1, 70_000_000_000, 1000, 60_000),),
    )
    return UsageWindow(node, "boot-1", "0.1.0", start, start + 60_000, 1000, Chain("", 0, None), (gpu,))


def signed(signer: Ed25519Signer, w: UsageWindow, seq: int, prev: str | None) -> dsse.Envelope:
    w = msgspec.structs.replace(w, chain=Chain(signer.key_id, seq, prev))
    return dsse.sign(statement_bytes(w), signer)


async def raw_stream(address: str, node: str, key_id: str, envelopes: list[dsse.Envelope]) -> list[pb.StreamResponse]:
    """Send envelopes on one stream exactly as given; return every response."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = pb_grpc.CollectorStub(ch).Stream()
        await call.write(pb.StreamRequest(hello=pb.Hello(node_id=node, key_id=key_id)))
        out = [await call.read()]
        for env in envelopes:
            await call.write(pb.StreamRequest(envelope=envelope_to_proto(env)))
            out.append(await call.read())
        await call.done_writing()
        return out


def test_enroll_stream_ack_and_tamper_over_the_wire(tmp_path: Path, run_async: Runner) -> None:
    async def scenario() -> None:
        async with collector(tmp_path) as h:
            signer = Ed25519Signer.generate()
            (token,) = h.tokens(1)
            async with grpc.aio.insecure_channel(h.address) as ch:
                assert await enroll(ch, "n1", signer, token) == signer.key_id
                # A one-time token cannot enroll a second key.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await enroll(ch, "n2", Ed25519Signer.generate(), token)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                health = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="gpuaudit.v1.Collector")
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING

            e0 = signed(signer, window("n1", 0), 0, None)
            e1 = signed(signer, window("n1", 1), 1, e0.digest())
            e2 = signed(signer, window("n1", 2), 2, e1.digest())
            e3 = signed(signer, window("n1", 3), 3, e2.digest())
            flipped = dsse.Envelope(
                e2.payload.replace(b'"util_mean_permille":970', b'"util_mean_permille":170'),
                e2.payload_type,
                e2.signatures,
            )
            stranger = Ed25519Signer.generate()
            foreign = signed(stranger, window("n1", 2), 2, e1.digest())
            resp = await raw_stream(h.address, "n1", signer.key_id, [e0, e1, e1, flipped, e3, foreign, e2, e3])
            assert resp[0].resume.next_seq == 0
            kinds = [(r.WhichOneof("msg"), r.ack.seq if r.HasField("ack") else r.reject.reason) for r in resp[1:]]
            assert kinds == [
                ("ack", 0),
                ("ack", 1),
                ("ack", 1),  # replayed: acknowledged as a duplicate
                ("reject", "bad_signature"),  # one byte of the payload changed
                ("reject", "seq_gap"),  # seq 2 was dropped
                ("reject", "bad_signature"),  # signed by a key that is not this stream's
                ("ack", 2),
                ("ack", 3),
            ], kinds
            assert resp[3].ack.duplicate is True
            assert h.store.statement_count() == 4, "every honest statement stored exactly once"
            assert h.store.next_seq(signer.key_id) == 4
            counts = h.store.refusal_counts()
            assert counts.get("bad_signature") == 2 and counts.get("seq_gap") == 1, counts

            # A stream for a key nobody enrolled is refused before any envelope is read.
            with pytest.raises(grpc.aio.AioRpcError) as err2:
                await raw_stream(h.address, "n9", stranger.key_id, [foreign])
            assert err2.value.code() == grpc.StatusCode.UNAUTHENTICATED

            # Metrics count what happened, by reason.
            assert h.running.metrics_port is not None
            with urllib.request.urlopen(f"http://127.0.0.1:{h.running.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert "gpuaudit_collector_statements_accepted_total 4.0" in text
            assert 'gpuaudit_collector_statements_refused_total{reason="bad_signature"} 2.0' in text
            assert "gpuaudit_collector_statements_duplicate_total 1.0" in text
            assert 'gpuaudit_tenant_gpu_seconds_total{tenant="t-17"} 240.0' in text

    run_async(scenario())


def test_agent_resumes_from_the_collectors_last_stored_seq(tmp_path: Path, run_async: Runner) -> None:
    """The spool holds 6 signed statements; the collector already has 3: the rest go, once."""

    async def scenario() -> None:
        async with collector(tmp_path) as h:
            signer = Ed25519Signer.generate()
            spool = Spool(tmp_path / "spool.db")
            chain = ChainSigner(signer, spool)
            envs = [chain.sign(window("n1", i))[1] for i in range(6)]
            async with grpc.aio.insecure_channel(h.address) as ch:
                await enroll(ch, "n1", signer, h.tokens(1)[0])
                # First connection: only three statements get through before it drops.
                await raw_stream(h.address, "n1", signer.key_id, envs[:3])
                assert h.store.statement_count() == 3
                assert spool.count(signer.key_id) == 6, "nothing leaves the spool without an ack it saw"
                stream = NodeStream(ch, "n1", signer.key_id, spool)
                stream.close_when_drained()
                await stream.run()
            assert stream.stats.sent == 3, f"resent {stream.stats.sent}; the collector said it had 0..2"
            assert stream.stats.duplicates == 0
            assert spool.count(signer.key_id) == 0
            assert h.store.statement_count() == 6
            assert h.store.next_seq(signer.key_id) == 6
            spool.close()

    run_async(scenario())


def test_replayed_site_detects_the_opaque_training_run(tmp_path: Path, run_async: Runner) -> None:
    """A small site through real agents, gRPC, verification, storage and the online detector."""
    records = list(
        demo_site(seed=3, hours=0.6, sample_interval_s=20, training_nodes=12, inference_nodes=4, slurm_nodes=4)
    )
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    tenants = TenantDirectory.from_toml(demo_tenants_toml())

    async def scenario() -> None:
        async with collector(tmp_path, tenants) as h:
            async with grpc.aio.insecure_channel(h.address) as ch:
                stats = await replay(windows_from_records(parse_lines(lines)), ch, TokenPool(h.tokens(20)))
            assert stats.rejected == []
            assert stats.nodes == 20
            assert stats.acked == stats.signed == h.store.statement_count()
            findings = [json.loads(f.json_text) for f in h.store.findings()]
            assert [f["tenant"] for f in findings] == [DEMO_OPAQUE_TENANT], findings
            f = findings[0]
            assert f["kind"] == "large_training"
            assert f["gpus"] == 96 and f["nodes"] == 12, (f["gpus"], f["nodes"])
            assert f["severity"] != "low", "an opaque tenant's run is never merely low"
            assert f["opacity"]["reasons"], "an opaque tenant's finding must say why it is opaque"

    run_async(scenario())


def test_many_node_streams_share_one_connection(tmp_path: Path, run_async: Runner) -> None:
    """`replay` (or a relay) carries one stream per node over one HTTP/2 connection: 100 nodes
    must all enroll and stream, not stall behind a per-connection stream limit."""
    records = list(
        demo_site(seed=4, hours=0.1, sample_interval_s=30, training_nodes=100, inference_nodes=0, slurm_nodes=0)
    )
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]

    async def scenario() -> None:
        async with collector(tmp_path) as h:
            async with grpc.aio.insecure_channel(h.address) as ch:
                stats = await replay(windows_from_records(parse_lines(lines)), ch, TokenPool(h.tokens(100)))
            assert stats.nodes == 100 and stats.rejected == []
            assert h.store.statement_count() == stats.signed

    run_async(scenario())
