"""The agent's side of the gRPC protocol: enrollment and the statement stream.

One ``NodeStream`` per node and key. It keeps the stream open, resends everything the
spool holds from the collector's ``Resume.next_seq`` on every (re)connect, keeps at most
``max_in_flight`` envelopes unacknowledged, and deletes an envelope from the spool only
when its Ack arrives. Connection failures are retried with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import grpc

from agent.errors import AgentError
from agent.spool import Spool
from attestation.keys import Signer
from attestation.statement import LogCheckpointRef
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc

_logger = logging.getLogger(__name__)

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


# Channel settings: reconnect quickly after a cut (gRPC's own default backs off to 120 s),
# keep idle streams alive through middleboxes, and notice a dead peer within a minute.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def insecure_channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel with the agent's reconnect and keepalive settings."""
    return grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))


def tls_channel(
    address: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, server_name: str | None = None
) -> grpc.aio.Channel:
    """An mTLS channel: the collector must present a certificate from the operator CA, and
    this node presents its own client certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, creds, options=options)


def _unavailable(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class RejectedError(AgentError):
    """The collector refused a statement; the chain cannot continue past it."""

    def __init__(self, seq: int, reason: str, message: str) -> None:
        super().__init__(f"collector refused seq {seq}: {reason}: {message}")
        self.seq = seq
        self.reason = reason


async def enroll(
    channel: grpc.aio.Channel,
    node_id: str,
    signer: Signer,
    join_token: str,
    timeout_s: float = 10.0,
    *,
    attempts: int = 8,
    backoff_initial_s: float = 0.25,
) -> str:
    """Enroll the node's key with a one-time join token. Retries transport failures: the
    collector treats a retry of the same (node, token, key) as the same enrollment."""
    stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
    request = pb.EnrollRequest(
        node_id=node_id,
        join_token=join_token,
        public_key_spki=signer.public_key().spki_der,
        key_assurance=signer.assurance,
    )
    delay = backoff_initial_s
    for attempt in range(1, attempts + 1):
        try:
            resp = await stub.Enroll(request, timeout=timeout_s)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _RETRYABLE or attempt == attempts:
                raise
            _logger.warning("enrollment of %s failed (%s); retrying", node_id, exc.code().name)
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 10.0)
    if resp.key_id != signer.key_id:
        raise RuntimeError(f"collector registered key {resp.key_id}, expected {signer.key_id}")
    return str(resp.key_id)


@dataclass
class StreamStats:
    sent: int = 0
    acked: int = 0
    duplicates: int = 0
    reconnects: int = 0


class NodeStream:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        key_id: str,
        spool: Spool,
        *,
        max_in_flight: int = 64,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self._stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
        self.node_id = node_id
        self.key_id = key_id
        self.spool = spool
        self.max_in_flight = max_in_flight
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        # A stream with statements in flight and no answer for this long is treated as dead
        # (a black-holed connection can take keepalive a minute or more to notice).
        self.ack_timeout_s = ack_timeout_s
        self.stats = StreamStats()
        self._wake = asyncio.Event()
        self._closing = False
        self.rejected: RejectedError | None = None
        # Highest seq the collector is known to hold (from an Ack, or from Resume on reconnect:
        # a statement stored just before a cut is never acked, the Resume says it is there).
        self.acked_through = -1
        # The latest log checkpoint the collector sent (Resume or Ack): signed into the
        # next statement, so that the nodes' own records contradict a rewritten log. Kept in
        # the spool, so that the first statement after a restart carries it too.
        self.latest_checkpoint: LogCheckpointRef | None = spool.log_checkpoint()

    def _note_checkpoint(self, cp: pb.LogCheckpoint) -> None:
        if not cp.origin or len(cp.root_hash) != 32:
            return
        seen = LogCheckpointRef(origin=cp.origin, size=int(cp.tree_size), root_sha256=bytes(cp.root_hash).hex())
        old = self.latest_checkpoint
        if old is not None and old.origin == seen.origin and old.size > seen.size:
            _logger.warning(
                "collector log %s sent a checkpoint of size %d after one of size %d; keeping the larger",
                seen.origin,
                seen.size,
                old.size,
            )
            return
        if seen != old:
            self.spool.save_log_checkpoint(seen)
        self.latest_checkpoint = seen

    def notify(self) -> None:
        """Call after appending to the spool."""
        self._wake.set()

    def close_when_drained(self) -> None:
        """Finish once everything in the spool is acknowledged (replay, shutdown)."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """Stream until closed and drained; reconnect on retryable failures."""
        delay = self.backoff_initial_s
        while True:
            acked_before = self.stats.acked
            try:
                await self._run_once()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise
                self.stats.reconnects += 1
                if self.stats.acked > acked_before:
                    delay = self.backoff_initial_s  # the link worked: start backing off afresh
                sleep = random.uniform(0, delay)  # full jitter
                _logger.warning(
                    "stream for %s failed (%s: %s); reconnecting in %.1fs",
                    self.node_id,
                    exc.code().name,
                    exc.details(),
                    sleep,
                )
                await asyncio.sleep(sleep)
                delay = min(delay * 2, self.backoff_max_s)

    async def _run_once(self) -> None:
        try:
            await self._stream_once()
        except asyncio.InvalidStateError as exc:  # a write raced the RPC's end (the peer cut it)
            raise _unavailable(f"stream ended under a write: {exc}") from exc

    async def _stream_once(self) -> None:
        call = self._stub.Stream()
        await call.write(pb.StreamRequest(hello=pb.Hello(node_id=self.node_id, key_id=self.key_id)))
        try:
            first = await asyncio.wait_for(call.read(), timeout=self.ack_timeout_s)
        except TimeoutError as exc:
            raise _unavailable(f"no Resume within {self.ack_timeout_s:g} s") from exc
        if first is grpc.aio.EOF or not first.HasField("resume"):
            raise _unavailable("the collector sent no Resume")
        next_seq = int(first.resume.next_seq)
        self.acked_through = max(self.acked_through, next_seq - 1)
        if first.resume.HasField("checkpoint"):
            self._note_checkpoint(first.resume.checkpoint)
        if next_seq > 0:
            self.spool.ack(self.key_id, next_seq - 1)
        in_flight: set[int] = set()

        last_answer = [time.monotonic()]

        async def receive() -> None:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                if resp.HasField("ack"):
                    seq = int(resp.ack.seq)
                    self.spool.ack(self.key_id, seq)
                    self.stats.acked += 1
                    self.acked_through = max(self.acked_through, seq)
                    last_answer[0] = time.monotonic()
                    self.stats.duplicates += int(resp.ack.duplicate)
                    in_flight.discard(seq)
                    if resp.ack.HasField("checkpoint"):
                        self._note_checkpoint(resp.ack.checkpoint)
                    self._wake.set()
                elif resp.HasField("reject"):
                    r = resp.reject
                    self.rejected = RejectedError(int(r.seq), r.reason, r.message)
                    _logger.error("%s", self.rejected)
                    self._wake.set()
                    return

        reader = asyncio.create_task(receive())
        try:
            while self.rejected is None:
                room = self.max_in_flight - len(in_flight)
                batch = self.spool.pending(self.key_id, next_seq, room) if room > 0 else []
                for seq, blob in batch:
                    env = pb.Envelope()
                    env.ParseFromString(blob)
                    await call.write(pb.StreamRequest(envelope=env))
                    in_flight.add(seq)
                    next_seq = seq + 1
                    self.stats.sent += 1
                if self._closing and not in_flight and self.spool.count(self.key_id) == 0:
                    break
                if reader.done():
                    reader.result()  # re-raise a transport error
                    raise _unavailable("stream closed by the collector")
                self._wake.clear()
                if batch and len(in_flight) < self.max_in_flight:
                    continue
                waiter = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waiter, reader}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if in_flight and time.monotonic() - last_answer[0] > self.ack_timeout_s:
                    raise _unavailable(f"no acknowledgement for {self.ack_timeout_s:g} s with statements in flight")
            await call.done_writing()
            await reader
        except asyncio.InvalidStateError:
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                reader.result()  # the transport error that ended the RPC, with its status
            raise
        finally:
            if not reader.done():
                reader.cancel()
            elif not reader.cancelled():
                reader.exception()  # retrieved: reported through the paths above, not by asyncio
            call.cancel()
        if self.rejected is not None:
            raise self.rejected
