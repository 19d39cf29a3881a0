"""The collector's gRPC service: a thin dispatcher over ingest, detection and the store.

Streams hand envelopes to one ``IngestBatcher``, which verifies and stores them in batches
(one transaction for many streams' envelopes; a batch is verified while the one before it
commits), then runs the ``after_commit`` hook (metrics, detector) and only then lets each
stream send its Ack.

When a commit fails because the store cannot write (a lock held elsewhere, a full disk), the
batcher holds that batch and retries it until it commits; meanwhile every envelope is answered
at once with ``Unstored``, which ends its stream with UNAVAILABLE (agents keep what is not
acknowledged, back off and resend from ``Resume.next_seq``). The envelopes a stream sent
after one that was not stored are never chain-checked: against a chain head that lacks the
failed statements they would look like a gap (``seq_gap``) although nothing is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from attestation.dsse import Envelope
from attestation.errors import Error
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.wire import envelope_from_proto
from collector.enroll_k8s import K8sEnrollment
from collector.errors import StoreError
from collector.ingest import (
    CANNOT_WRITE_REASONS,
    Ingestor,
    IngestResult,
    Refused,
    VerifiedBatch,
    store_fault_reason,
)
from collector.limits import Limits, TokenBucket
from collector.metrics import CollectorMetrics
from collector.store.base import Store

_logger = logging.getLogger(__name__)

# Envelopes a single stream may have waiting for their acks at the collector.
STREAM_QUEUE = 256
# How often a held batch is retried while the store cannot write (doubling up to the max).
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class Unstored:
    """Neither stored nor refused: the store could not write (``reason``, as
    collector.ingest.STORE_FAULT_REASONS), or an earlier envelope of the same stream was not
    stored. The stream ends with UNAVAILABLE; the agent resends."""

    reason: str
    message: str


Outcome = IngestResult | Unstored


class StreamTicket:
    """One per stream: set ``ended`` once one of its envelopes was not stored, after which
    none of its later envelopes is chain-checked (they follow a statement the store lacks)."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False


@dataclass
class _Item:
    key_id: str
    envelope: Envelope
    future: asyncio.Future[Outcome]
    node_id: str | None = None  # the stream's enrolled node, for per-node metrics
    ticket: StreamTicket | None = None


@dataclass
class _Held:
    """A batch whose commit failed because the store cannot write, retried until it commits."""

    items: list[_Item]
    verified: VerifiedBatch
    reason: str
    since: float
    failures: int = 1


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
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self._ingestor = ingestor
        self._after_commit = after_commit
        self._metrics = metrics
        self._max_batch = max_batch
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # Bounded (max_queued > 0): submit_wait() then waits for room, so a flood is held back
        # by flow control instead of growing memory.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max(0, max_queued))
        self._task: asyncio.Task[None] | None = None
        self._held: _Held | None = None
        self._retry: asyncio.Task[None] | None = None
        self._on_writable: Callable[[bool], Awaitable[None]] | None = None
        self._notifying: set[asyncio.Task[None]] = set()

    @property
    def writable(self) -> bool:
        """False from a commit that failed because the store cannot write until one succeeds."""
        return self._held is None

    def on_writable(self, callback: Callable[[bool], Awaitable[None]]) -> None:
        """``callback(False)`` when the store stops writing, ``callback(True)`` when it writes
        again (collector.server: grpc health)."""
        self._on_writable = callback

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-batcher")

    async def stop(self) -> None:
        for task in (self._task, self._retry):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    def submit(
        self, key_id: str, envelope: Envelope, node_id: str | None = None, ticket: StreamTicket | None = None
    ) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(key_id, envelope, fut, node_id, ticket))
        return fut

    async def submit_wait(
        self, key_id: str, envelope: Envelope, node_id: str | None = None, ticket: StreamTicket | None = None
    ) -> asyncio.Future[Outcome]:
        """Like ``submit``, waiting while the queue is full."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(key_id, envelope, fut, node_id, ticket))
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
                if self._held is not None:  # the store cannot write: answer at once
                    self._unstored(items, self._held.reason, "the store cannot write")
                    continue
                t0 = time.perf_counter()
                try:
                    verified = await asyncio.to_thread(
                        self._ingestor.verify_batch, [(it.key_id, it.envelope) for it in items]
                    )
                except Exception as exc:  # a store failure looking keys up: nothing of the batch is acked
                    reason = store_fault_reason(exc) if isinstance(exc, StoreError) else "other"
                    _logger.warning("could not read the store to verify %d statements: %s", len(items), exc)
                    self._unstored(items, reason, f"the store could not be read: {exc}")
                    continue
                if committing is not None:
                    await committing
                committing = asyncio.create_task(self._commit(items, verified, t0))
        finally:
            if committing is not None and not committing.done():
                committing.cancel()

    async def _commit(self, items: list[_Item], verified: VerifiedBatch, t0: float) -> None:
        if self._held is not None:  # the commit before this one failed: the store cannot write
            self._unstored(items, self._held.reason, "the store cannot write")
            return
        # Envelopes of streams that a failed commit ended follow a statement the store lacks.
        keep = [i for i, it in enumerate(items) if it.ticket is None or not it.ticket.ended]
        if len(keep) < len(items):
            kept = set(keep)
            self._unstored([it for i, it in enumerate(items) if i not in kept], "stream_ended", "")
            items, verified = [items[i] for i in keep], verified.subset(keep)
            if not items:
                return
        try:
            results = await asyncio.to_thread(self._work, items, verified)
        except Exception as exc:  # nothing of the batch is acked
            self._commit_failed(items, verified, exc)
            return
        self._metrics.observe_batch(time.perf_counter() - t0, len(items))
        for it, res in zip(items, results, strict=True):
            if not it.future.done():
                it.future.set_result(res)

    def _commit_failed(self, items: list[_Item], verified: VerifiedBatch, exc: Exception) -> None:
        if not isinstance(exc, StoreError):  # a bug, not the store: logged, and the agents resend
            _logger.error("committing a batch of %d statements failed", len(items), exc_info=exc)
            self._unstored(items, "other", f"internal error: {exc!r}")
            return
        reason = store_fault_reason(exc)
        self._metrics.store_write_failures.labels(reason).inc()
        self._unstored(items, reason, str(exc))
        if reason not in CANNOT_WRITE_REASONS:
            # The store answered, it refused this batch (another writer first, or its data):
            # the agents resend and the next commit is checked afresh.
            _logger.warning("the store refused a batch of %d statements (%s): %s", len(items), reason, exc)
            return
        # The store cannot write: hold this batch, retry it until it commits, and answer
        # everything meanwhile with Unstored (collector/service.py module docstring).
        self._held = _Held(items, verified, reason, time.monotonic())
        self._metrics.store_write_failing.set(1)
        _logger.warning(
            "the store cannot write (%s: %s); agents are answered UNAVAILABLE and keep their statements "
            "until it can, and the failed batch is retried every %g-%g s. Free disk space or end what holds "
            "the database's lock; health says NOT_SERVING until a commit succeeds.",
            reason,
            exc,
            self._retry_initial_s,
            self._retry_max_s,
        )
        self._notify(False)
        self._retry = asyncio.create_task(self._retry_held(), name="ingest-retry")

    async def _retry_held(self) -> None:
        held = self._held
        assert held is not None
        delay = self._retry_initial_s
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self._work, held.items, held.verified)
            except StoreError as exc:
                reason = store_fault_reason(exc)
                self._metrics.store_write_failures.labels(reason).inc()
                if reason in CANNOT_WRITE_REASONS:
                    held.failures += 1
                    delay = min(delay * 2, self._retry_max_s)
                    continue
                # The store answers again, refusing this batch: its agents resend it.
                _logger.warning("the store refused the held batch (%s): %s", reason, exc)
            except Exception:
                _logger.exception("retrying the held batch failed; its agents resend it")
            break
        self._held = None
        self._metrics.store_write_failing.set(0)
        _logger.warning(
            "the store writes again after %.1f s (%d failed commits); agents resend what was not stored",
            time.monotonic() - held.since,
            held.failures,
        )
        self._notify(True)

    def _notify(self, writable: bool) -> None:
        if self._on_writable is None:
            return

        async def call(cb: Callable[[bool], Awaitable[None]]) -> None:
            try:
                await cb(writable)
            except Exception:
                _logger.exception("reporting that the store %s failed", "writes" if writable else "cannot write")

        task = asyncio.get_running_loop().create_task(call(self._on_writable))
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    @staticmethod
    def _unstored(items: list[_Item], reason: str, message: str) -> None:
        """Answer ``items`` with Unstored and end their streams' later envelopes."""
        for it in items:
            if it.ticket is not None:
                it.ticket.ended = True
            if not it.future.done():
                it.future.set_result(Unstored(reason, message))

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
        k8s: K8sEnrollment | None = None,
    ) -> None:
        # Kubernetes enrollment (collector/enroll_k8s.py): a pod's projected token instead of a join token.
        self._k8s = k8s
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
        if request.k8s_token and self._k8s is not None:
            return await self._k8s.enroll(request, context)
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
        try:
            key = await asyncio.to_thread(self._store.key, hello.key_id)
            next_seq = await asyncio.to_thread(self._store.next_seq, hello.key_id)
        except StoreError as exc:
            _logger.warning("could not read the store for the Hello of node %r: %s", hello.node_id, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store_unavailable: the store cannot be read ({exc})")
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
        sent_cp = self._checkpoints() if self._checkpoints is not None else None
        await context.write(pb.StreamResponse(resume=pb.Resume(next_seq=next_seq, checkpoint=sent_cp)))

        pending: asyncio.Queue[asyncio.Future[Outcome] | None] = asyncio.Queue(maxsize=STREAM_QUEUE)
        ticket = StreamTicket()

        async def reply() -> Unstored | None:
            """Answers in order; stops at the first envelope that was not stored."""
            while True:
                fut = await pending.get()
                if fut is None:
                    return None
                res = await fut
                if isinstance(res, Unstored):
                    return res
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

        async def receive() -> None:
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
                fut = await self._batcher.submit_wait(
                    hello.key_id, envelope_from_proto(req.envelope), hello.node_id, ticket
                )
                await pending.put(fut)
            await pending.put(None)

        replier = asyncio.create_task(reply())
        receiver = asyncio.create_task(receive())
        try:
            await asyncio.wait({replier, receiver}, return_when=asyncio.FIRST_COMPLETED)
            unstored = None
            if replier.done() and not replier.cancelled() and replier.exception() is None:
                unstored = replier.result()
            if unstored is None:
                # The client finished sending (the replier then drains), or the RPC ended with
                # an abort or a malformed message, which the receiver raises with its status.
                await receiver
                await asyncio.wait({replier})
                return
            # Retryable: the agent keeps every unacknowledged statement and resends it from
            # Resume.next_seq after backing off. Nothing the stream sent after it was checked.
            receiver.cancel()
            await asyncio.wait({receiver})
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"store_unavailable ({unstored.reason}): the collector could not store this stream's "
                "statements; nothing was refused. Resend them after backing off.",
            )
        finally:
            for task in (receiver, replier):
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: the RPC's own status says what happened
