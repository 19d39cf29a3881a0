"""The source seam: the only way the agent reads GPUs and the node.

Only modules under ``agent/sources/`` import ``pynvml`` or open ``/proc`` and ``/sys``.
Everything downstream (attribution, windowing, signing) works on the frozen dataclasses of
``core.samples``, so the NVML source, the simulated source and the test fakes are
interchangeable.
"""

from __future__ import annotations

from typing import Protocol

from agent.errors import AgentError
from core.samples import DeviceInfo, NodeSample


class SourceError(AgentError):
    """The source cannot start (e.g. no NVIDIA driver). Carries a remedy for a person."""

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy

    def diagnostics(self) -> str:
        return f"{self}\n{self.remedy}" if self.remedy else str(self)


class GpuSource(Protocol):
    """A node's GPUs. ``devices()`` is called once at start, ``sample()`` every interval."""

    def devices(self) -> tuple[DeviceInfo, ...]: ...

    def sample(self) -> NodeSample: ...

    def close(self) -> None: ...
