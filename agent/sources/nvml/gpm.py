"""GPM (GPU Performance Monitoring, Hopper and newer): SM and tensor activity (%), NVLink and
PCIe bandwidth (NVML gives MiB/s; the sample holds bytes per second), computed between two
GPM samples, so the first sample after a start or an error has none (``first_sample``).
``nvmlDeviceGetPcieThroughput`` (which sleeps ~20 ms per call) is never called.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from agent.sources.nvml.api import DeviceHandle, GpmSample
from agent.sources.nvml.common import MIB, Ctx

_logger = logging.getLogger(__name__)

# GPM metric -> GpuSample field, and the factor from NVML's unit to the field's unit.
GPM_METRICS: tuple[tuple[str, str, float], ...] = (
    ("NVML_GPM_METRIC_SM_UTIL", "sm_active_pct", 1.0),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "tensor_active_pct", 1.0),
    ("NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC", "nvlink_tx_bytes_per_s", float(MIB)),
    ("NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC", "nvlink_rx_bytes_per_s", float(MIB)),
    ("NVML_GPM_METRIC_PCIE_TX_PER_SEC", "pcie_tx_bytes_per_s", float(MIB)),
    ("NVML_GPM_METRIC_PCIE_RX_PER_SEC", "pcie_rx_bytes_per_s", float(MIB)),
)
_GPM_API = (
    "nvmlGpmQueryDeviceSupport",
    "nvmlGpmSampleAlloc",
    "nvmlGpmSampleGet",
    "nvmlGpmSampleFree",
    "nvmlGpmMetricsGet",
)


@dataclass
class GpmBuffers:
    """Two GPM sample buffers, and whether ``buffers[prev]`` holds data."""

    buffers: tuple[GpmSample, GpmSample]
    prev: int = 0
    have_prev: bool = False


class Gpm:
    """GPM per GPU: its buffers, or the reason it has none (``gpm_not_supported``,
    ``gpm_api_absent``, ``gpm_disabled``, an NVML error)."""

    def __init__(self, c: Ctx) -> None:
        self._c = c
        self._state: dict[int, GpmBuffers] = {}
        self.reasons: dict[int, str] = {}  # GPU -> why it has no GPM

    def has(self, i: int) -> bool:
        """Whether GPU ``i`` reads its activity from GPM."""
        return i in self._state

    def reason(self, i: int) -> str:
        """Why GPU ``i`` has no GPM."""
        return self.reasons.get(i, "gpm_not_supported")

    def disable(self, i: int) -> None:
        """GPM turned off by configuration for GPU ``i``."""
        self.reasons[i] = "gpm_disabled"

    def setup(self, i: int, h: DeviceHandle) -> None:
        """Allocate GPM sample buffers for GPU ``i``; else keep the reason GPM cannot be used."""
        c, nvml = self._c, self._c.nvml
        if not c.has(*_GPM_API) or c.k.gpm_metrics_get_t is None or c.k.gpm_metrics_get_version is None:
            self.reasons[i] = "gpm_api_absent"
            return
        try:
            support = nvml.nvmlGpmQueryDeviceSupport(h)
        except nvml.NVMLError as e:
            self.reasons[i] = c.reason(e)
            return
        if not support.isSupportedDevice:
            self.reasons[i] = "gpm_not_supported"
            return
        buffers = self.alloc_pair()
        if isinstance(buffers, str):
            self.reasons[i] = buffers
            return
        self._state[i] = buffers

    def alloc_pair(self) -> GpmBuffers | str:
        """Two fresh sample buffers, or (a str) why they could not be allocated."""
        c, nvml = self._c, self._c.nvml
        buffers: list[GpmSample] = []
        try:
            while len(buffers) < 2:
                buffers.append(nvml.nvmlGpmSampleAlloc())
        except nvml.NVMLError as e:
            self.free(buffers)
            return c.reason(e)
        return GpmBuffers(buffers=(buffers[0], buffers[1]))

    def free(self, buffers: tuple[GpmSample, ...] | list[GpmSample], label: str = "") -> None:
        """Free sample buffers; a failure is only logged at debug (``label`` names the owner)."""
        nvml = self._c.nvml
        for buf in buffers:
            try:
                nvml.nvmlGpmSampleFree(buf)
            except nvml.NVMLError as e:
                if label:
                    _logger.debug("%s: nvmlGpmSampleFree failed: %s", label, self._c.reason(e))

    def metrics(self, i: int, h: DeviceHandle, un: dict[str, str]) -> dict[str, float]:
        """GPM metrics between the previous and this sample, by GpuSample field name.

        Without GPM the NVLink fields are left to the NVLink counters.
        """
        state = self._state.get(i)
        if state is None:
            reason = self.reason(i)
            for _, f, _ in GPM_METRICS:
                if not f.startswith("nvlink_"):
                    self._c.mark(i, f, un, reason)
            return {}
        nvml = self._c.nvml
        return self.read(i, state, lambda buf: nvml.nvmlGpmSampleGet(h, buf), GPM_METRICS, un, "")

    def read(
        self,
        i: int,
        state: GpmBuffers,
        take: Callable[[GpmSample], object],
        metrics: tuple[tuple[str, str, float], ...],
        un: dict[str, str],
        label: str,
    ) -> dict[str, float]:
        """Take a GPM sample into ``state`` with ``take(buffer)`` and compute ``metrics``
        between it and the previous one. A reading that fails is named in ``un`` (logged once
        as ``label`` + field)."""
        c, nvml, k = self._c, self._c.nvml, self._c.k

        def mark(f: str, reason: str) -> None:
            un[f] = reason
            c.note(i, label + f, reason)

        cur = 1 - state.prev
        try:
            take(state.buffers[cur])
            if not state.have_prev:
                state.prev, state.have_prev = cur, True
                for _, f, _ in metrics:
                    un[f] = "first_sample"
                return {}
            assert k.gpm_metrics_get_t is not None and k.gpm_metrics_get_version is not None  # checked in setup
            request = k.gpm_metrics_get_t()
            request.version = k.gpm_metrics_get_version
            request.numMetrics = len(metrics)
            request.sample1 = state.buffers[state.prev]
            request.sample2 = state.buffers[cur]
            for n, (metric, _, _) in enumerate(metrics):
                request.metrics[n].metricId = k.gpm_metrics[metric]
            state.prev = cur
            nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError as e:
            c.raise_if_lost(e)
            state.have_prev = False  # start over from a fresh pair of samples
            for _, f, _ in metrics:
                mark(f, c.reason(e))
            return {}
        out: dict[str, float] = {}
        for n, (_, field, factor) in enumerate(metrics):
            m = request.metrics[n]
            ret = int(m.nvmlReturn)
            value = float(m.value)
            if ret != k.success:
                mark(field, c.code_name(ret))
            elif not math.isfinite(value) or value < 0:
                mark(field, "NVML_VALUE_NOT_AVAILABLE")
            else:
                out[field] = value * factor
        return out

    def close(self) -> None:
        """Free every GPU's buffers."""
        for i, state in self._state.items():
            self.free(state.buffers, f"GPU {i}")
        self._state.clear()
