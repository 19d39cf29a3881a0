"""The transparency log, served: periodic checkpoints, checkpoints handed to agents and
signed into their statements, proofs over gRPC, and a bundle that carries them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from test_grpc_pipeline import window

from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, enroll
from attestation.checkpoint import verify_checkpoint
from attestation.keys import Ed25519Signer
from attestation.merkle import verify_consistency, verify_inclusion
from attestation.statement import parse_statement
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.verify import verify_bundle
from attestation.wire import envelope_from_bytes
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.export import Selection, build_bundle
from collector.server import start_collector
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory

Runner = Callable[[Any], Any]


async def _stream_all(ch: grpc.aio.Channel, signer: Ed25519Signer, spool: Spool) -> NodeStream:
    stream = NodeStream(ch, "n1", signer.key_id, spool)
    stream.close_when_drained()
    await stream.run()
    return stream


def test_checkpoints_reach_agents_statements_and_proofs_verify(tmp_path: Path, run_async: Runner) -> None:
    db = tmp_path / "collector.db"
    store = SqliteStore(db)
    cfg = CollectorConfig(listen="127.0.0.1:0", metrics_listen="", insecure=True, db=db, checkpoint_period_s=1)

    async def scenario() -> dict[str, Any]:
        running = await start_collector(cfg, store, DetectorEngine(DetectConfig(), TenantDirectory()))
        assert running.checkpointer is not None
        try:
            signer = Ed25519Signer.generate()
            spool = Spool(tmp_path / "spool.db")
            chain = ChainSigner(signer, spool)
            for i in range(3):
                chain.sign(window("n1", i))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                await enroll(ch, "n1", signer, store.create_token(600, time.time_ns() // 1_000_000))
                stream = await _stream_all(ch, signer, spool)
                assert stream.latest_checkpoint is not None, "Resume carried no checkpoint"
                assert stream.latest_checkpoint.size == 0, "the first checkpoint is of the empty log"
                # The periodic task signs a checkpoint covering the three statements within ~1 s.
                deadline = time.monotonic() + 10
                while (cp := running.checkpointer.latest()) is None or cp.checkpoint.size < 3:
                    assert time.monotonic() < deadline, "no checkpoint of size 3 was signed within 10 s"
                    await asyncio.sleep(0.1)
                # The next stream's Resume hands it to the agent, which signs it into its next statement.
                stream = await _stream_all(ch, signer, spool)
                seen = stream.latest_checkpoint
                assert seen is not None and seen.size == 3, f"agent saw {seen}"
                chain.log_checkpoint = seen
                chain.sign(window("n1", 3))
                raw = spool.pending(signer.key_id)[0][1]
                stmt = parse_statement(envelope_from_bytes(raw).payload)
                assert stmt.log_checkpoint == seen, "the statement must carry the checkpoint the agent received"
                await _stream_all(ch, signer, spool)
                running.checkpointer.sign_now()

                log = pb_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                cp_pb = await log.GetCheckpoint(pb.GetCheckpointRequest())
                public = running.checkpointer.log.public_key()
                cp = verify_checkpoint(cp_pb.note, cp_pb.origin, public, origin=cfg.log_origin)
                assert cp.size == 4 and cp_pb.tree_size == 4 and bytes(cp_pb.root_hash) == cp.root
                inc = await log.GetInclusionProof(
                    pb.GetInclusionProofRequest(statement=pb.StatementRef(key_id=signer.key_id, seq=2))
                )
                assert inc.leaf_index == 2 and inc.tree_size == 4
                verify_inclusion(bytes(inc.leaf_hash), 2, 4, list(inc.hashes), cp.root)
                con = await log.GetConsistencyProof(pb.GetConsistencyProofRequest(from_size=3))
                verify_consistency(3, 4, list(con.hashes), bytes.fromhex(seen.root_sha256), cp.root)
                try:
                    await log.GetConsistencyProof(pb.GetConsistencyProofRequest(from_size=2, to_size=9))
                    raise AssertionError("a proof beyond the signed tree size must be refused")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.OUT_OF_RANGE, exc
            spool.close()
            return build_bundle(store, running.checkpointer.log, Selection(all=True), time.time_ns() // 1_000_000)
        finally:
            await running.stop(0.5)

    try:
        doc = run_async(scenario())
    finally:
        store.close()
    assert [s["size"] for s in doc["seen_checkpoints"]] == [3], doc["seen_checkpoints"]
    data = json.dumps(doc).encode()
    report = verify_bundle(data)
    assert report.ok, [str(f) for f in report.failures]

    # A log rewritten after the node recorded its head: the bundle's proof for the seen
    # checkpoint no longer leads to the root the node signed.
    doc["seen_checkpoints"][0]["proof"] = ["A" * 43 + "="] * len(doc["seen_checkpoints"][0]["proof"])
    report = verify_bundle(json.dumps(doc).encode())
    assert "seen_checkpoint_inconsistent" in report.reasons(), [str(f) for f in report.failures]
    del doc["seen_checkpoints"]
    report = verify_bundle(json.dumps(doc).encode())
    assert "unproven_seen_checkpoint" in report.reasons(), [str(f) for f in report.failures]
