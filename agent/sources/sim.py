"""The simulated source: plays one node of a trace through the live agent's code path.

Samples keep their shape but are re-timed to the agent's clock, so an agent started with a
simulated source behaves like one on a real node (windows, signing, streaming) and the
collector cannot tell the difference except by the statement's data. At the end of the
trace it starts again from the beginning.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from agent.sources.base import DeviceInfo, NodeSample, SourceError
from agent.trace import NodeRecord, SampleRecord, read_trace


class SimulatedSource:
    def __init__(self, trace: Path | str, node: str | None = None, clock: Callable[[], float] = time.time) -> None:
        devices: tuple[DeviceInfo, ...] | None = None
        samples: list[NodeSample] = []
        for rec in read_trace(trace):
            if isinstance(rec, NodeRecord) and devices is None and (node is None or rec.node == node):
                node = rec.node
                devices = rec.devices
            elif isinstance(rec, SampleRecord) and rec.node == node:
                samples.append(rec.sample)
        if devices is None or not samples:
            raise SourceError(
                f"trace {trace} has no samples for node {node or '(first node)'}",
                "Pick a node that appears in the trace (sim_node in the agent config).",
            )
        self.node = node
        self._devices = devices
        self._samples = samples
        self._i = 0
        self._clock = clock

    def devices(self) -> tuple[DeviceInfo, ...]:
        return self._devices

    def sample(self) -> NodeSample:
        s = self._samples[self._i]
        self._i = (self._i + 1) % len(self._samples)
        return dataclasses.replace(s, t=self._clock())

    def close(self) -> None:
        pass
