"""The running agent signs the latest log checkpoint it received into its next statement:
one carried by an Ack (not only a Resume) counts, and a restart does not forget it.

A hand-written collector on 127.0.0.1:0 decides exactly which checkpoints the agent sees:
here only Acks carry them, and after the restart nothing does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from agent_harness import agent_config, start_agent, write_agent_config

from attestation.keys import key_id_of
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from core.agentconfig import AgentConfig

Runner = Callable[[Any], Any]
ORIGIN = "collector.test/log"


def _checkpoint(size: int) -> pb.LogCheckpoint:
    return pb.LogCheckpoint(origin=ORIGIN, tree_size=size, root_hash=hashlib.sha256(b"%d" % size).digest())


def _ref(size: int) -> dict[str, Any]:
    """``predicate.log_checkpoint`` as a statement carries ``_checkpoint(size)``."""
    return {"origin": ORIGIN, "size": size, "root_sha256": hashlib.sha256(b"%d" % size).hexdigest()}


class FakeCollector(pb_grpc.CollectorServicer):
    """Enrolls any key, stores statements in order, and answers each with an Ack that
    carries a checkpoint of the log's new size when ``acks_carry_checkpoints``."""

    def __init__(self, stored: dict[str, int], *, acks_carry_checkpoints: bool) -> None:
        self.stored = stored  # key id -> next seq (shared across restarts of the agent)
        self.acks_carry_checkpoints = acks_carry_checkpoints
        self.statements: list[dict[str, Any]] = []  # predicates, in the order received
        self.sent: list[int] = []  # sizes of the checkpoints sent in Acks

    async def Enroll(  # noqa: N802 - the service's method name
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnrollResponse:
        return pb.EnrollResponse(key_id=key_id_of(request.public_key_spki), collector_id="fake")

    async def Stream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        hello = (await request_iterator.__anext__()).hello
        next_seq = self.stored.get(hello.key_id, 0)
        await context.write(pb.StreamResponse(resume=pb.Resume(next_seq=next_seq)))  # no checkpoint
        async for req in request_iterator:
            predicate = json.loads(req.envelope.payload)["predicate"]
            seq = int(predicate["chain"]["seq"])
            if seq != self.stored.get(hello.key_id, 0):
                continue  # a resend of something stored
            self.stored[hello.key_id] = seq + 1
            self.statements.append(predicate)
            ack = pb.Ack(seq=seq)
            if self.acks_carry_checkpoints:
                size = sum(self.stored.values())
                ack.checkpoint.CopyFrom(_checkpoint(size))
                self.sent.append(size)
            await context.write(pb.StreamResponse(ack=ack))


def _config(tmp_path: Path) -> AgentConfig:
    return agent_config(write_agent_config(tmp_path, 'metrics_listen = ""', 'join_token = "any"'))


async def _run(cfg: AgentConfig, fake: FakeCollector, statements: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_CollectorServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        agent = start_agent(dataclasses.replace(cfg, collector=f"127.0.0.1:{port}"))
        deadline = time.monotonic() + 30
        while len(fake.statements) < statements:
            assert not agent.task.done(), f"the agent stopped: {agent.task.exception() if agent.task.done() else ''}"
            assert time.monotonic() < deadline, f"only {len(fake.statements)} statements within 30 s"
            await asyncio.sleep(0.1)
        await agent.stop()
    finally:
        await server.stop(0.5)


def test_a_checkpoint_carried_by_an_ack_reaches_the_next_statement(tmp_path: Path, run_async: Runner) -> None:
    cfg = _config(tmp_path)
    fake = FakeCollector({}, acks_carry_checkpoints=True)
    run_async(_run(cfg, fake, statements=4))
    carried = [s.get("log_checkpoint") for s in fake.statements]
    assert carried[0] is None, "the first statement was signed before any checkpoint was received"
    assert any(c is not None for c in carried[1:]), f"no statement carried a checkpoint from an Ack: {carried}"
    for i, c in enumerate(carried):
        if c is not None:
            assert c["origin"] == ORIGIN and c["size"] in fake.sent, f"statement {i} carries {c}, never sent"
            assert c["size"] <= i, f"statement {i} carries a checkpoint acknowledging itself or later: {c}"
            assert c == _ref(c["size"]), f"statement {i}: root hash not the one the Ack carried: {c}"
    sizes = [c["size"] for c in carried if c is not None]
    assert sizes == sorted(sizes), f"checkpoints went back: {sizes}"


def test_the_latest_checkpoint_survives_a_restart(tmp_path: Path, run_async: Runner) -> None:
    cfg = _config(tmp_path)
    stored: dict[str, int] = {}
    first = FakeCollector(stored, acks_carry_checkpoints=True)
    run_async(_run(cfg, first, statements=3))
    # Everything was acknowledged before the agent stopped: the last Ack's is the latest it received.
    latest = max(first.sent)
    # After the restart the collector sends no checkpoint at all (Resume and Acks without one).
    second = FakeCollector(stored, acks_carry_checkpoints=False)
    run_async(_run(cfg, second, statements=2))
    carried = second.statements[0].get("log_checkpoint")
    assert carried == _ref(latest), (
        f"the first statement after a restart must carry the checkpoint received before it ({_ref(latest)}), "
        f"not {carried}"
    )
