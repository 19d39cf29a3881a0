"""NvmlSource: the GPU source over NVML, put together from one module per concern.

It opens NVML and the GPUs, sets up what each concern needs per GPU (GPM buffers, the Xid
event set), and reads every GPU each sample: activity, MIG instances, processes, GPM or
NVLink counters, health and Xid events. A GPU that falls off the bus
(``NVML_ERROR_GPU_IS_LOST``) is left out of the sample and named in
``NodeSample.unavailable["gpu[<index>]"]``; the other GPUs are still read. Node-level blind
spots (``accounting_mode``, ``gpm``) are in ``NodeSample.unavailable``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from agent.sources.base import SourceError
from agent.sources.cc import CcEvidence
from agent.sources.nodeio import NodeIo
from agent.sources.nvml import api
from agent.sources.nvml.activity import read_activity
from agent.sources.nvml.api import DeviceHandle, Nvml
from agent.sources.nvml.common import Ctx, GpuLostError
from agent.sources.nvml.confidential import cc_attestation
from agent.sources.nvml.gpm import Gpm
from agent.sources.nvml.health import Health, Xid
from agent.sources.nvml.identity import device_info
from agent.sources.nvml.mig import Mig
from agent.sources.nvml.nvlink import NvlinkCounters
from agent.sources.nvml.processes import Processes
from core.samples import DeviceInfo, GpuSample, NodeSample

_logger = logging.getLogger(__name__)

_REMEDY_DRIVER = (
    "Install the NVIDIA driver on this node (it ships libnvidia-ml.so.1) and check that "
    "`nvidia-smi` lists the GPUs. In a container, run the agent with the NVIDIA container "
    "toolkit (docker --gpus all, or the nvidia RuntimeClass on Kubernetes) so the driver "
    "library and /dev/nvidia* are mounted."
)


class NvmlSource:
    """A :class:`~agent.sources.base.GpuSource` over NVML.

    ``nvml`` is the NVML binding (:class:`~agent.sources.nvml.api.Nvml`): the pynvml module,
    imported here when None; tests pass a fake that raises the real ``pynvml.NVMLError_*``
    classes. ``proc_root`` is the host's /proc, used to fill
    ``ProcessSample.start_time_ticks``; None leaves it unset. ``node_io``, when given, adds
    node I/O rates to every sample. ``clock`` gives the sample time in Unix seconds. ``gpm``
    turns the Hopper+ GPU Performance Monitoring metrics on (where the GPU supports them).

    Raises :class:`SourceError` with a remedy when NVML cannot start.
    """

    def __init__(
        self,
        nvml: Nvml | None = None,
        *,
        proc_root: str | os.PathLike[str] | None = None,
        node_io: NodeIo | None = None,
        clock: Callable[[], float] = time.time,
        gpm: bool = True,
    ) -> None:
        if nvml is None:
            try:
                nvml = api.load()
            except ImportError as e:
                raise SourceError(
                    "the NVML Python bindings (module pynvml) are not installed",
                    remedy="Install the package nvidia-ml-py into the agent's environment.",
                ) from e
        c = self._c = Ctx(nvml)
        self._node_io = node_io
        self._clock = clock
        self._closed = False

        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise self._init_error(e) from e
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as e:
            self._shutdown()
            raise SourceError(f"NVML started but cannot count the GPUs: {c.reason(e)}", remedy=_REMEDY_DRIVER) from e

        # Index -> handle, or the reason the GPU could not be opened.
        self._handles: list[DeviceHandle | None] = []
        self._no_handle: dict[int, str] = {}
        for i in range(count):
            try:
                self._handles.append(nvml.nvmlDeviceGetHandleByIndex(i))
            except nvml.NVMLError as e:
                self._handles.append(None)
                self._no_handle[i] = c.reason(e)
                _logger.warning("GPU %d cannot be opened: %s; it will be reported unavailable", i, c.reason(e))

        self._processes = Processes(c, proc_root)
        self._gpm = Gpm(c)
        self._xid = Xid(c)
        self._health = Health(c)
        self._nvlink = NvlinkCounters(c)
        self._mig = Mig(c, self._gpm, self._processes)
        for i, h in enumerate(self._handles):
            if h is None:
                continue
            if gpm:
                self._gpm.setup(i, h)
            else:
                self._gpm.disable(i)
            self._xid.setup(i, h)

    # -- errors -----------------------------------------------------------------------

    def _init_error(self, e: BaseException) -> SourceError:
        c = self._c
        reason = c.reason(e)
        if c.is_(e, "LIBRARY_NOT_FOUND"):
            return SourceError(f"the NVIDIA driver library libnvidia-ml.so.1 was not found ({reason})", _REMEDY_DRIVER)
        if c.is_(e, "DRIVER_NOT_LOADED"):
            return SourceError(
                f"the NVIDIA kernel driver is not loaded ({reason})",
                "Load or install the NVIDIA driver (`modprobe nvidia`, or install the driver "
                "package), then check that `nvidia-smi` lists the GPUs.",
            )
        if c.is_(e, "NO_PERMISSION"):
            return SourceError(
                f"no permission to open the GPUs ({reason})",
                "Run the agent as a user that may open /dev/nvidia* (root, or the group that owns them).",
            )
        if c.is_(e, "LIB_RM_VERSION_MISMATCH"):
            return SourceError(
                f"the NVML library and the loaded kernel driver differ in version ({reason})",
                "The driver was upgraded without a reboot: reboot the node (or reload the nvidia modules).",
            )
        return SourceError(f"NVML failed to start: {reason}", _REMEDY_DRIVER)

    # -- devices ----------------------------------------------------------------------

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Identity and limits of every GPU that could be opened (power limit in mW, memory in bytes)."""
        out: list[DeviceInfo] = []
        for i, h in enumerate(self._handles):
            if h is None:
                continue
            try:
                out.append(device_info(self._c, i, h))
            except GpuLostError as lost:
                _logger.warning("GPU %d is lost (%s); left out of the device list", i, lost)
        return tuple(out)

    # -- sampling ---------------------------------------------------------------------

    def sample(self) -> NodeSample:
        """Read every GPU now. A lost GPU is left out and named in ``unavailable``."""
        if self._closed:
            raise SourceError("NvmlSource.sample() called after close()")
        t = self._clock()
        gpus: list[GpuSample] = []
        unavailable: dict[str, str] = {}
        for i, h in enumerate(self._handles):
            if h is None:
                unavailable[f"gpu[{i}]"] = self._no_handle[i]
                continue
            try:
                gpus.append(self._sample_gpu(i, h, t))
            except GpuLostError as lost:
                unavailable[f"gpu[{i}]"] = str(lost)
                self._c.note(i, "gpu", str(lost))
        node_io = None
        if self._node_io is not None:
            node_io, io_reasons = self._node_io.sample()
            unavailable.update({f"node_io.{k}": v for k, v in io_reasons.items()})
        unavailable.update(self._blind_spots())
        return NodeSample(t=t, gpus=tuple(gpus), node_io=node_io, unavailable=unavailable)

    def _blind_spots(self) -> dict[str, str]:
        """Node-level blind spots: GPUs without GPM, GPUs with accounting mode off."""
        out: dict[str, str] = {}
        for key, reasons in (("gpm", self._gpm.reasons), ("accounting_mode", self._processes.accounting_off)):
            by_reason: dict[str, list[str]] = {}
            for i, reason in sorted(reasons.items()):
                by_reason.setdefault(reason, []).append(str(i))
            if by_reason:
                out[key] = "; ".join(f"{r} on GPU {','.join(ids)}" for r, ids in sorted(by_reason.items()))
        return out

    def _sample_gpu(self, i: int, h: DeviceHandle, t: float) -> GpuSample:
        un: dict[str, str] = {}
        act = read_activity(self._c, i, h, un)
        mig = self._mig.read(i, h, un)
        if mig is None:
            procs = self._processes.read(i, h, un)
        else:
            procs = self._processes.read(i, h, un, mig.listed, mig.partial)
        gpm = self._gpm.metrics(i, h, un)
        if not self._gpm.has(i):
            gpm.update(self._nvlink.read(i, h, un, t, self._gpm.reason(i)))
        health = self._health.read(i, h, un)
        events = self._xid.drain(i, un)
        return GpuSample(
            index=i,
            util_pct=act.util_pct,
            mem_used_bytes=act.mem_used_bytes,
            power_mw=act.power_mw,
            energy_mj=act.energy_mj,
            procs=procs,
            sm_active_pct=gpm.get("sm_active_pct"),
            tensor_active_pct=gpm.get("tensor_active_pct"),
            nvlink_tx_bytes_per_s=gpm.get("nvlink_tx_bytes_per_s"),
            nvlink_rx_bytes_per_s=gpm.get("nvlink_rx_bytes_per_s"),
            pcie_tx_bytes_per_s=gpm.get("pcie_tx_bytes_per_s"),
            pcie_rx_bytes_per_s=gpm.get("pcie_rx_bytes_per_s"),
            unavailable=un,
            health=health,
            events=events,
            mig=mig.sample(procs) if mig is not None else None,
        )

    # -- confidential computing ---------------------------------------------------------

    def cc_attestation(self, nonce: bytes) -> CcEvidence:
        """Each GPU's CC attestation report over ``nonce`` (32 bytes), or why there is none.
        Never raises; see :mod:`agent.sources.nvml.confidential`."""
        return cc_attestation(self._c, self._handles, self._no_handle, nonce)

    # -- shutdown -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        nvml = self._c.nvml
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as e:
            _logger.warning("nvmlShutdown failed: %s", self._c.reason(e))

    def close(self) -> None:
        """Free GPM buffers and event sets, and shut NVML down. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._gpm.close()
        self._mig.close()
        self._xid.close()
        self._shutdown()
