"""The transparency log, served: periodic signed checkpoints and the gRPC ``Log`` service.

``Checkpointer`` signs a checkpoint of the whole log every ``period_s`` seconds (the log
itself refuses to sign one inconsistent with the previous: ``collector.log``) and keeps
the latest, which the statement stream hands to agents in Resume and Ack so that they sign
it into their next statement. ``LogService`` answers checkpoint, inclusion-proof and
consistency-proof requests for tree sizes up to the latest signed checkpoint's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from attestation.checkpoint import SignedCheckpoint
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from collector.errors import StoreError
from collector.log import InconsistentLogError, Log, LogError

_logger = logging.getLogger(__name__)

T = TypeVar("T")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def checkpoint_proto(signed: SignedCheckpoint) -> pb.LogCheckpoint:
    cp = signed.checkpoint
    return pb.LogCheckpoint(origin=cp.origin, tree_size=cp.size, root_hash=cp.root, note=signed.note)


class Checkpointer:
    """Signs a checkpoint every ``period_s`` and keeps the latest. Thread-safe reads."""

    def __init__(
        self, log: Log, period_s: float, clock_ms: Callable[[], int] = _now_ms, *, sync_s: float = 1.0
    ) -> None:
        self.log = log
        self.period_s = period_s
        # Between checkpoints the tree follows the store every sync_s: reading a whole
        # period's leaves at once would hold the interpreter long enough to stall ingest
        # (a minute at 1,250 statements/s is 75,000 leaves).
        self.sync_s = sync_s
        self._clock_ms = clock_ms
        self._latest: SignedCheckpoint | None = None
        self._latest_pb: pb.LogCheckpoint | None = None
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failed_reason: str | None = None

    def latest(self) -> SignedCheckpoint | None:
        with self._lock:
            return self._latest

    def latest_proto(self) -> pb.LogCheckpoint | None:
        with self._lock:
            return self._latest_pb

    def sign_now(self) -> SignedCheckpoint | None:
        """Sign (or re-use, when nothing was appended) a checkpoint; None if the log refused."""
        try:
            signed = self.log.checkpoint(self._clock_ms())
        except (LogError, StoreError) as exc:  # the checkpointer keeps running: the next period retries
            if self._failed_reason != str(exc):  # a recurring failure is logged once
                _logger.error("not signing a checkpoint: %s", exc.diagnostics())
                self._failed_reason = str(exc)
            return None
        self._failed_reason = None
        with self._lock:
            self._latest = signed
            self._latest_pb = checkpoint_proto(signed)
        return signed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="log-checkpointer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def sync(self) -> None:
        """Read the leaves committed since the last sync; a failure is logged, and the next
        checkpoint reports it again (or signs nothing)."""
        try:
            self.log.sync()
        except (LogError, StoreError) as exc:
            _logger.warning("transparency log: cannot read new leaves: %s", exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.to_thread(self.sign_now)
            due = loop.time() + self.period_s
            while (left := due - loop.time()) > 0:
                await asyncio.sleep(min(self.sync_s, left))
                if self.sync_s < left:
                    await asyncio.to_thread(self.sync)


class LogService(pb_grpc.LogServicer):
    """gRPC ``gpuaudit.v1.Log``: a thin dispatcher over ``Log`` and the ``Checkpointer``."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self._cp = checkpointer

    async def _signed_size(self, context: grpc.aio.ServicerContext) -> int:
        latest = self._cp.latest()
        if latest is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "the log has not signed a checkpoint yet")
        assert latest is not None
        return latest.checkpoint.size

    @staticmethod
    async def _call(context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: object) -> T:
        """Run a log read off the event loop (it may query the store and read a tile back);
        a log that no longer matches what it signed is DATA_LOSS, a store failure UNAVAILABLE."""
        try:
            return await asyncio.to_thread(fn, *args)
        except InconsistentLogError as exc:
            _logger.error("log service: %s", exc)
            await context.abort(grpc.StatusCode.DATA_LOSS, f"{exc.reason}: {exc}")
        except (LogError, StoreError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the log cannot be read: {exc}")
        raise AssertionError("unreachable: abort() raises")  # pragma: no cover

    async def _size(self, requested: int, context: grpc.aio.ServicerContext) -> int:
        signed = await self._signed_size(context)
        if requested == 0:
            return signed
        if requested > signed:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"tree size {requested} is beyond the latest signed checkpoint's size {signed}",
            )
        return requested

    async def GetCheckpoint(  # noqa: N802 - gRPC method name
        self, request: pb.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogCheckpoint:
        await self._signed_size(context)
        latest = self._cp.latest_proto()
        assert latest is not None
        return latest

    async def GetInclusionProof(  # noqa: N802 - gRPC method name
        self, request: pb.GetInclusionProofRequest, context: grpc.aio.ServicerContext
    ) -> pb.InclusionProof:
        size = await self._size(int(request.tree_size), context)
        log = self._cp.log
        if request.HasField("statement"):
            ref = request.statement
            found = await self._call(context, log.leaf_index, ref.key_id, int(ref.seq))
            if found is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"statement {ref.key_id}/{ref.seq} is not in the log")
            assert found is not None
            index = found
        elif request.HasField("leaf_index"):
            index = int(request.leaf_index)
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give leaf_index or statement")
        if index >= size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"leaf {index} is not in the tree of size {size}")
        hashes = await self._call(context, log.inclusion_proof, index, size)
        leaf = await self._call(context, log.leaf_hash, index)
        return pb.InclusionProof(leaf_index=index, tree_size=size, leaf_hash=leaf, hashes=hashes)

    async def GetConsistencyProof(  # noqa: N802 - gRPC method name
        self, request: pb.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConsistencyProof:
        to_size = await self._size(int(request.to_size), context)
        from_size = int(request.from_size)
        if from_size > to_size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"from_size {from_size} exceeds to_size {to_size}")
        hashes = await self._call(context, self._cp.log.consistency_proof, from_size, to_size)
        return pb.ConsistencyProof(from_size=from_size, to_size=to_size, hashes=hashes)
