"""The collector's gRPC service: a thin dispatcher over ingest, detection and the store.

Streams hand envelopes to one ``IngestBatcher``, which verifies and stores them in batches
(one transaction for many streams' envelopes; a batch is verified while the one before it
commits), then runs the ``after_commit`` hook (metrics, detector) and only then lets each
stream send its Ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from attestation.dsse import Envelope
from attestation.errors import Error
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.wire import envelope_from_proto
from collector.ingest import Ingestor, IngestResult, Refused, VerifiedBatch
from collector.limits import Limits, TokenBucket
from collector.metrics import CollectorMetrics
from collector.store.base import Store

_logger = logging.getLogger(__name__)

# Envelopes a single stream may have waiting for their acks at the collector.
STREAM_QUEUE = 256


@dataclass
class _Item:
    key_id: str
    envelope: Envelope
    future: asyncio.Future[IngestResult]
    node_id: str | None = None  # the stream's enrolled node, for per-node metrics


class IngestBatcher:
    """Collects envelopes from all streams and ingests them in batches in a worker thread."""

    def __init__(
        self,
        ingestor: Ingestor,
        after_commit: Callable[[Sequence[IngestResult]], None],
        metrics: CollectorMetrics,
        *,
        max_batch: int = 512,
        max_queued: int = 0,
    ) -> None:
        self._ingestor = ingestor
        self._after_commit = after_commit
        self._metrics = metrics
        self._max_batch = max_batch
        # Bounded (max_queued > 0): submit_wait() then waits for room, so a flood is held back
        # by flow control instead of growing memory.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max(0, max_queued))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def submit(self, key_id: str, envelope: Envelope, node_id: str | None = None) -> asyncio.Future[IngestResult]:
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(key_id, envelope, fut, node_id))
        return fut

    async def submit_wait(
        self, key_id: str, envelope: Envelope, node_id: str | None = None
    ) -> asyncio.Future[IngestResult]:
        """Like ``submit``, waiting while the queue is full."""
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(key_id, envelope, fut, node_id))
        return fut

    async def _run(self) -> None:
        """Two stages: a batch is verified (signatures, schema: steps 1-4 of collector.ingest)
        while the batch before it commits (chain, store, metrics, detector), each in a worker
        thread. The signature check and the store's I/O release the GIL, so the two overlap
        on a second core. Batches commit one at a time, in arrival order."""
        committing: asyncio.Task[None] | None = None
        try:
            while True:
                items = [await self._queue.get()]
                while len(items) < self._max_batch and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                t0 = time.perf_counter()
                try:
                    verified = await asyncio.to_thread(
                        self._ingestor.verify_batch, [(it.key_id, it.envelope) for it in items]
                    )
                except Exception as exc:  # a store failure looking keys up: nothing of the batch is acked
                    self._fail(items, exc)
                    continue
                if committing is not None:
                    await committing
                committing = asyncio.create_task(self._commit(items, verified, t0))
        finally:
            if committing is not None and not committing.done():
                committing.cancel()

    async def _commit(self, items: list[_Item], verified: VerifiedBatch, t0: float) -> None:
        try:
            results = await asyncio.to_thread(self._work, items, verified)
        except Exception as exc:  # a store failure: nothing of the batch is acked
            self._fail(items, exc)
            return
        self._metrics.observe_batch(time.perf_counter() - t0, len(items))
        for it, res in zip(items, results, strict=True):
            if not it.future.done():
                it.future.set_result(res)

    @staticmethod
    def _fail(items: list[_Item], exc: Exception) -> None:
        _logger.error("storing a batch of %d statements failed: %s", len(items), exc)
        for it in items:
            if not it.future.done():
                it.future.set_exception(exc)

    def _work(self, items: list[_Item], verified: VerifiedBatch) -> list[IngestResult]:
        results = self._ingestor.commit_batch(verified)
        self._metrics.observe_results(results, [it.node_id for it in items])
        try:
            self._after_commit(results)
        except Exception:  # detection must never cost an ack: the data is stored
            _logger.exception("post-commit processing failed; statements are stored and will be acked")
        return results


class CollectorService(pb_grpc.CollectorServicer):
    def __init__(
        self,
        store: Store,
        batcher: IngestBatcher,
        metrics: CollectorMetrics,
        *,
        collector_id: str,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        require_peer_identity: bool = False,
        checkpoints: Callable[[], pb.LogCheckpoint | None] | None = None,
        limits: Limits | None = None,
    ) -> None:
        # Flood limits (collector/limits.py): streams open now, and a token bucket per key.
        self._limits = limits or Limits()
        self._streams = 0
        self._buckets: dict[str, TokenBucket] = {}
        # The latest signed log checkpoint (collector.logservice.Checkpointer.latest_proto),
        # handed to agents in Resume and Ack.
        self._checkpoints = checkpoints
        self._store = store
        self._batcher = batcher
        self._metrics = metrics
        self._collector_id = collector_id
        self._clock_ms = clock_ms
        self._require_peer_identity = require_peer_identity

    async def _check_peer(self, node_id: str, context: grpc.aio.ServicerContext) -> None:
        """Under mTLS, the client certificate's common name must be the node it speaks for."""
        if not self._require_peer_identity:
            return
        names = [v.decode("utf-8", "replace") for v in context.auth_context().get("x509_common_name", [])]
        if node_id not in names:
            self._metrics.refused.labels("peer_mismatch").inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate names {names or 'no node'}, not node {node_id!r}",
            )

    async def Enroll(  # noqa: N802 - gRPC method name
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnrollResponse:
        await self._check_peer(request.node_id, context)
        try:
            key_id = await asyncio.wait_for(
                asyncio.to_thread(
                    self._store.enroll,
                    request.node_id,
                    request.join_token,
                    bytes(request.public_key_spki),
                    request.key_assurance or "software",
                    self._clock_ms(),
                ),
                self._limits.enroll_timeout_s,
            )
        except TimeoutError:
            # The store may still finish it; a retry of the same (node, token, key) is the same enrollment.
            self._metrics.enroll_refused.labels("timeout").inc()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"enrollment took longer than {self._limits.enroll_timeout_s} s; retry it",
            )
        except Error as exc:
            self._metrics.enroll_refused.labels(exc.reason).inc()
            _logger.warning("enrollment of node %r refused: %s", request.node_id, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.diagnostics())
        self._metrics.enrolled.inc()
        _logger.info("enrolled node %s with key %s", request.node_id, key_id)
        return pb.EnrollResponse(key_id=key_id, collector_id=self._collector_id)

    async def Stream(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        if self._streams >= self._limits.max_streams:
            self._metrics.refused.labels("too_many_streams").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too_many_streams: {self._streams} streams open (limit {self._limits.max_streams}); retry later",
            )
        self._streams += 1
        try:
            await self._stream(request_iterator, context)
        except DecodeError as exc:  # gRPC parses each request as the servicer reads it
            self._metrics.refused.labels("malformed_message").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed StreamRequest: {exc}")
        finally:
            self._streams -= 1

    def _take(self, key_id: str) -> float:
        """Spend one of the key's tokens: 0.0 if allowed, else the seconds until the next one."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self._limits.rate_per_key, self._limits.rate_burst)
        return 0.0 if bucket.take() else max(bucket.wait_s(), 0.001)

    async def _stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), self._limits.hello_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            self._metrics.refused.labels("hello_timeout").inc()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {self._limits.hello_timeout_s} s")
        if not first.HasField("hello"):
            self._metrics.refused.labels("no_hello").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on a stream must be Hello")
        hello = first.hello
        await self._check_peer(hello.node_id, context)
        key = await asyncio.to_thread(self._store.key, hello.key_id)
        if key is None or key.node_id != hello.node_id:
            self._metrics.refused.labels("unknown_key").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"key {hello.key_id!r} is not enrolled for node {hello.node_id!r}; enroll with a join token first",
            )
        assert key is not None  # abort() raised otherwise
        if key.revoked_ms is not None:
            self._metrics.refused.labels("revoked_key").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"key {hello.key_id} was revoked")
        next_seq = await asyncio.to_thread(self._store.next_seq, hello.key_id)
        sent_cp = self._checkpoints() if self._checkpoints is not None else None
        await context.write(pb.StreamResponse(resume=pb.Resume(next_seq=next_seq, checkpoint=sent_cp)))

        pending: asyncio.Queue[asyncio.Future[IngestResult] | None] = asyncio.Queue(maxsize=STREAM_QUEUE)

        async def reply() -> None:
            while True:
                fut = await pending.get()
                if fut is None:
                    return
                res = await fut
                if isinstance(res, Refused):
                    await context.write(
                        pb.StreamResponse(
                            reject=pb.Reject(
                                seq=res.seq if res.seq is not None else 0, reason=res.reason, message=res.message
                            )
                        )
                    )
                else:
                    nonlocal sent_cp
                    cp = self._checkpoints() if self._checkpoints is not None else None
                    if cp is not None and (sent_cp is None or cp.tree_size != sent_cp.tree_size):
                        sent_cp = cp
                    else:
                        cp = None
                    ack = pb.Ack(seq=res.seq, duplicate=res.duplicate, checkpoint=cp)
                    await context.write(pb.StreamResponse(ack=ack))

        replier = asyncio.create_task(reply())
        try:
            async for req in request_iterator:
                if not req.HasField("envelope"):
                    self._metrics.refused.labels("unexpected_message").inc()
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only envelopes may follow Hello")
                wait_s = self._take(hello.key_id)
                if wait_s:
                    # Lossless: the agent keeps what is unacknowledged and resumes after backing off.
                    # The replier stops first: a write in flight while aborting ends the RPC as INTERNAL.
                    self._metrics.refused.labels("rate_limited").inc()
                    replier.cancel()
                    await asyncio.wait({replier})
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"rate_limited: key {hello.key_id} exceeds {self._limits.rate_per_key:g} envelopes/s "
                        f"(burst {self._limits.rate_burst}); retry in {wait_s:.2f} s",
                    )
                fut = await self._batcher.submit_wait(hello.key_id, envelope_from_proto(req.envelope), hello.node_id)
                await pending.put(fut)
            await pending.put(None)
            await replier
        finally:
            if not replier.done():
                replier.cancel()
            elif not replier.cancelled():
                replier.exception()  # retrieved: the RPC's own status says what happened
