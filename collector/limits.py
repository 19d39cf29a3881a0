"""The collector's limits against floods: per-key rate, concurrent streams, deadlines, queue.

Every limit refuses in a way that loses nothing: the agent keeps each envelope in its
spool until acknowledged, and treats RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED as
retryable (agent/stream.py), so a refused stream is resumed later from ``Resume.next_seq``.
Each refusal is counted in ``gpuaudit_collector_statements_refused_total{reason}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # Envelopes per second one node key may send, sustained, and the burst above it (a
    # node sends one a minute; the burst lets a day of spool catch up without a refusal).
    rate_per_key: float = 20.0
    rate_burst: int = 2000
    # Statement streams open at once (one per node is normal).
    max_streams: int = 4096
    # Seconds a new stream may take to send its Hello, and an enrollment may take.
    hello_timeout_s: float = 10.0
    enroll_timeout_s: float = 10.0
    # Envelopes waiting for ingest across all streams; beyond it streams wait (HTTP/2 flow
    # control pushes back on the agents), so memory stays bounded under a flood.
    max_queued: int = 8192


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take()`` spends one if there is one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._t = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is available."""
        return max(0.0, (1.0 - self._tokens) / self.rate) if self.rate > 0 else float("inf")
