"""``gpuaudit-agent replay``: stream a trace through the real agent code to a collector.

Each node in the trace gets its own key (enrolled with one of the given join tokens), its
own chain and its own gRPC stream, exactly as a fleet of live agents would; windows are
signed as the trace's event time closes them and sent as fast as the collector takes them.

The connection is plaintext or mTLS (``Channels``): under mTLS the collector accepts a node
only from a client certificate naming it, so either one certificate speaks for a one-node
trace, or each node has its own. The keys and the spool live in memory: a replay that is
stopped reports what it left unacknowledged (``ReplayStats.unsent``), which no later replay
can resend under the same keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.errors import AgentError
from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, enroll, insecure_channel
from attestation.keys import Ed25519Signer
from attestation.statement import UsageWindow
from core.pipeline import windows_from_trace

_logger = logging.getLogger(__name__)

# Unacknowledged statements one replayed node may hold before the replay waits.
NODE_BACKLOG = 32
# How far (event time) the newest signed window may run ahead of the oldest unacknowledged
# one. Live agents send in real time, so the collector sees nodes within a window or two of
# each other; a replay must not skew that, or the detector's watermark would see lateness
# no real fleet produces.
EVENT_SKEW_MS = 120_000


@dataclass
class ReplayStats:
    nodes: int = 0
    signed: int = 0
    acked: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)
    event_start_ms: int | None = None
    event_end_ms: int | None = None
    seconds: float = 0.0
    # Per node, the first and last seq signed but not known to be held by the collector, once
    # the replay has ended (finished, failed or stopped).
    unsent: dict[str, tuple[int, int]] = field(default_factory=dict)

    def unsent_count(self) -> int:
        return sum(last - first + 1 for first, last in self.unsent.values())

    def unsent_text(self, limit: int = 5) -> str:
        """``kl1-n0001 seq 40..52, kl1-n0002 seq 41..52`` (the first ``limit`` nodes)."""
        parts = [f"{n} seq {a}..{b}" if a != b else f"{n} seq {a}" for n, (a, b) in sorted(self.unsent.items())]
        more = len(parts) - limit
        return ", ".join(parts[:limit]) + (f" and {more} more nodes" if more > 0 else "")


class CollectorUnreachableError(AgentError):
    """The collector did not answer at its address (nothing listens, or TLS failed)."""

    def __init__(self, address: str, details: str) -> None:
        super().__init__(f"cannot reach the collector at {address}: {details}")
        self.address = address
        self.details = details


class EnrollmentRefusedError(AgentError):
    """The collector refused to enroll a node of the trace (its token, or its certificate)."""

    def __init__(self, node_id: str, code: str, details: str) -> None:
        super().__init__(f"the collector refused to enroll node {node_id} ({code}): {details}")
        self.node_id = node_id
        self.code = code


class TokensExhaustedError(AgentError, RuntimeError):
    """The trace has more nodes than join tokens were given."""


class Channels:
    """Channels to the collector: one that every node shares (plaintext, or mTLS with one
    client certificate), or one per node (mTLS, a client certificate per node). Each is
    checked once, with a health check, before a node enrolls over it: an address where
    nothing listens, or a TLS handshake that fails, is a CollectorUnreachableError at once
    instead of a node's enrollment retried for half a minute."""

    def __init__(
        self, address: str, open_for: Callable[[str], grpc.aio.Channel], *, per_node: bool, check_timeout_s: float = 10
    ) -> None:
        self.address = address
        self._open_for = open_for
        self._per_node = per_node
        self._timeout_s = check_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def for_node(self, node_id: str) -> grpc.aio.Channel:
        key = node_id if self._per_node else ""
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = self._open_for(node_id)
            await check_reachable(ch, self.address, self._timeout_s)
        return ch

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


async def check_reachable(channel: grpc.aio.Channel, address: str, timeout_s: float = 10.0) -> None:
    """Raise CollectorUnreachableError unless the collector answers a health check."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CollectorUnreachableError(address, exc.details() or exc.code().name) from exc
        # Anything else (no health service, say) is an answer: the collector is there.


@dataclass
class _Node:
    chain: ChainSigner
    stream: NodeStream
    task: asyncio.Task[None]
    ends_ms: list[int] = field(default_factory=list)  # end of each signed window, by seq

    def unacked(self) -> int:
        return self.chain.next_seq - 1 - self.stream.acked_through

    def oldest_unacked_end_ms(self) -> int | None:
        first = self.stream.acked_through + 1
        return self.ends_ms[first] if first < len(self.ends_ms) else None


class TokenPool:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = list(tokens)

    def take(self, node: str) -> str:
        if not self._tokens:
            raise TokensExhaustedError(
                f"no join token left for node {node}: the trace has more nodes than tokens were given "
                "(create them with `gpuaudit-collector token create --count N`)"
            )
        return self._tokens.pop(0)


async def replay(
    windows: Iterator[UsageWindow],
    channel: grpc.aio.Channel | Channels,
    tokens: TokenPool,
    *,
    spool: Spool | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    progress_every_s: float = 2.0,
    backoff_max_s: float = 30.0,
    ack_timeout_s: float = 30.0,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Replay ``windows``. ``stats`` (pass one to read it after a cancellation) ends with
    what was left unacknowledged, however the replay ends; the nodes' streams end with it."""
    spool = spool or Spool(":memory:")
    stats = stats if stats is not None else ReplayStats()
    nodes: dict[str, _Node] = {}
    t0 = time.monotonic()
    last_progress = t0
    channel_for: Callable[[str], Awaitable[grpc.aio.Channel]]
    if isinstance(channel, Channels):
        channel_for = channel.for_node
    else:
        shared = channel

        async def channel_for(node_id: str) -> grpc.aio.Channel:
            return shared

    async def node_for(node_id: str) -> _Node:
        n = nodes.get(node_id)
        if n is None:
            signer = Ed25519Signer.generate()
            ch = await channel_for(node_id)
            token = tokens.take(node_id)
            try:
                await enroll(ch, node_id, signer, token)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    addr = channel.address if isinstance(channel, Channels) else "its address"
                    raise CollectorUnreachableError(addr, exc.details() or exc.code().name) from exc
                raise EnrollmentRefusedError(node_id, exc.code().name, exc.details() or "") from exc
            stream = NodeStream(
                ch, node_id, signer.key_id, spool, backoff_max_s=backoff_max_s, ack_timeout_s=ack_timeout_s
            )
            n = nodes[node_id] = _Node(ChainSigner(signer, spool), stream, asyncio.create_task(stream.run()))
            stats.nodes += 1
        return n

    def refresh() -> None:
        stats.acked = sum(n.stream.stats.acked for n in nodes.values())
        stats.duplicates = sum(n.stream.stats.duplicates for n in nodes.values())
        stats.seconds = time.monotonic() - t0

    try:
        current_start: int | None = None
        for i, w in enumerate(windows):
            if w.start_ms != current_start:
                current_start = w.start_ms
                await _wait_for_skew(nodes, w.end_ms)
            n = await node_for(w.node_id)
            n.chain.sign(w)
            n.ends_ms.append(w.end_ms)
            n.stream.notify()
            stats.signed += 1
            stats.event_start_ms = w.start_ms if stats.event_start_ms is None else min(stats.event_start_ms, w.start_ms)
            stats.event_end_ms = w.end_ms if stats.event_end_ms is None else max(stats.event_end_ms, w.end_ms)
            # Back-pressure: never let one node run far ahead of its acks.
            while n.unacked() > NODE_BACKLOG:
                if n.task.done():
                    n.task.result()  # raises the stream's error (e.g. a refusal)
                await asyncio.sleep(0.005)
            if i % 64 == 0:
                await asyncio.sleep(0)
            if progress is not None and time.monotonic() - last_progress >= progress_every_s:
                refresh()
                progress(stats)
                last_progress = time.monotonic()
        for n in nodes.values():
            n.stream.close_when_drained()
        results = await asyncio.gather(*(n.task for n in nodes.values()), return_exceptions=True)
        for node_id, r in zip(nodes, results, strict=True):
            if isinstance(r, BaseException):
                text = r.details() if isinstance(r, grpc.aio.AioRpcError) else str(r)
                stats.rejected.append(f"{node_id}: {text}")
    finally:
        # However it ends (done, an error, cancelled): no stream outlives the replay, and the
        # stats say what the collector never acknowledged.
        running = [n.task for n in nodes.values() if not n.task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        refresh()
        for node_id, n in nodes.items():
            last = n.chain.next_seq - 1
            if n.stream.acked_through < last:
                stats.unsent[node_id] = (n.stream.acked_through + 1, last)
    if progress is not None:
        progress(stats)
    return stats


async def _wait_for_skew(nodes: dict[str, _Node], end_ms: int) -> None:
    while True:
        oldest = [e for n in nodes.values() if (e := n.oldest_unacked_end_ms()) is not None]
        if not oldest or end_ms - min(oldest) <= EVENT_SKEW_MS:
            return
        for n in nodes.values():
            if n.task.done():
                n.task.result()
        await asyncio.sleep(0.005)


async def replay_trace(
    trace: Path,
    collector: str,
    tokens: list[str],
    *,
    window_s: int = 60,
    progress: Callable[[ReplayStats], None] | None = None,
    channels: Channels | None = None,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Replay the trace file to ``collector``: over ``channels`` (closed at the end), or
    plaintext."""
    channels = channels or Channels(collector, lambda _node: insecure_channel(collector), per_node=False)
    try:
        return await replay(
            windows_from_trace(trace, window_s=window_s), channels, TokenPool(tokens), progress=progress, stats=stats
        )
    finally:
        await channels.close()
