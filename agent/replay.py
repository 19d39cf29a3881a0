"""``gpuaudit-agent replay``: stream a trace through the real agent code to a collector.

Each node in the trace gets its own key (enrolled with one of the given join tokens), its
own chain and its own gRPC stream, exactly as a fleet of live agents would; windows are
signed as the trace's event time closes them and sent as fast as the collector takes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.pipeline import windows_from_trace
from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, enroll, insecure_channel
from attestation.keys import Ed25519Signer
from attestation.statement import UsageWindow

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
            raise RuntimeError(
                f"no join token left for node {node}: the trace has more nodes than tokens were given "
                "(create them with `gpuaudit-collector token create --count N`)"
            )
        return self._tokens.pop(0)


async def replay(
    windows: Iterator[UsageWindow],
    channel: grpc.aio.Channel,
    tokens: TokenPool,
    *,
    spool: Spool | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    progress_every_s: float = 2.0,
    backoff_max_s: float = 30.0,
    ack_timeout_s: float = 30.0,
) -> ReplayStats:
    spool = spool or Spool(":memory:")
    stats = ReplayStats()
    nodes: dict[str, _Node] = {}
    t0 = time.monotonic()
    last_progress = t0

    async def node_for(node_id: str) -> _Node:
        n = nodes.get(node_id)
        if n is None:
            signer = Ed25519Signer.generate()
            await enroll(channel, node_id, signer, tokens.take(node_id))
            stream = NodeStream(
                channel, node_id, signer.key_id, spool, backoff_max_s=backoff_max_s, ack_timeout_s=ack_timeout_s
            )
            n = nodes[node_id] = _Node(ChainSigner(signer, spool), stream, asyncio.create_task(stream.run()))
            stats.nodes += 1
        return n

    def refresh() -> None:
        stats.acked = sum(n.stream.stats.acked for n in nodes.values())
        stats.duplicates = sum(n.stream.stats.duplicates for n in nodes.values())
        stats.seconds = time.monotonic() - t0

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
            stats.rejected.append(f"{node_id}: {r}")
    refresh()
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
) -> ReplayStats:
    channel = insecure_channel(collector)
    try:
        return await replay(windows_from_trace(trace, window_s=window_s), channel, TokenPool(tokens), progress=progress)
    finally:
        await channel.close()
