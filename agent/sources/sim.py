"""The simulated source: plays one node of a trace through the live agent's code path.

Samples keep their shape but are re-timed to the agent's clock, so an agent started with a
simulated source behaves like one on a real node (windows, signing, streaming). The trace
loops, and which sample is played is a function of the wall clock, as is the energy
counter: it grows across loops and across agent restarts exactly as a real GPU's
total-energy counter does (it is never reset by restarting the agent).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from agent.sources.base import SourceError
from core.samples import DeviceInfo, NodeSample
from core.trace import NodeRecord, SampleRecord, read_trace


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
        self._clock = clock
        self._t0 = samples[0].t
        step = samples[1].t - samples[0].t if len(samples) > 1 else 1.0
        self._period = samples[-1].t - samples[0].t + step
        # Energy one loop of the trace adds per GPU (last reading plus one more step at the last rate).
        self._loop_energy: dict[int, int] = {}
        for g in samples[0].gpus:
            first = g.energy_mj
            last = next((x.energy_mj for x in samples[-1].gpus if x.index == g.index), None)
            if first is not None and last is not None and last >= first:
                per_step = (last - first) / max(len(samples) - 1, 1)
                self._loop_energy[g.index] = round(last - first + per_step)
        self._times = [x.t for x in samples]

    def devices(self) -> tuple[DeviceInfo, ...]:
        return self._devices

    def sample(self) -> NodeSample:
        now = self._clock()
        loops, offset = divmod(now - self._t0, self._period)
        i = min(bisect.bisect_right(self._times, self._t0 + offset) - 1, len(self._samples) - 1)
        s = self._samples[max(i, 0)]
        gpus = tuple(
            g
            if g.energy_mj is None or g.index not in self._loop_energy
            else dataclasses.replace(g, energy_mj=g.energy_mj + int(loops) * self._loop_energy[g.index])
            for g in s.gpus
        )
        return dataclasses.replace(s, t=now, gpus=gpus)

    def close(self) -> None:
        pass
