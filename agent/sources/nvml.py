"""The NVML source: reads NVIDIA GPUs through ``pynvml`` (package nvidia-ml-py).

This is the only module that calls NVML. Every reading that fails is recorded, not guessed:
the value is None and ``unavailable[field]`` holds the NVML error's name
(``NVML_ERROR_NOT_SUPPORTED``, ``NVML_ERROR_NO_PERMISSION`` ...) or one of this module's
reasons (``gpm_not_supported``, ``gpm_api_absent``, ``first_sample``,
``NVML_VALUE_NOT_AVAILABLE``, ``proc_unreadable``). A GPU that falls off the bus
(``NVML_ERROR_GPU_IS_LOST``) is left out of the sample and named in
``NodeSample.unavailable["gpu[<index>]"]``; the other GPUs are still read. Each distinct
(GPU, field, reason) is logged once, not every second.

Beyond the activity readings the source reads identity (PCI bus id, board part number,
VBIOS, driver and CUDA driver versions, architecture, MIG and confidential-computing mode),
health (temperature, clocks and throttle reasons, ECC counters, retired pages, remapped
rows; the slow-changing counters every ``_SLOW_EVERY`` samples) and Xid errors through one
NVML event set per GPU, drained with a timeout of 0 so the sampling path never blocks.
``nvmlDeviceGetPcieThroughput`` (which sleeps ~20 ms per call) is never called: PCIe and
NVLink bytes come from GPM. Processes are the compute list (v3), MPS clients, and, where
accounting mode is on, processes that started and ended between two samples. A listed PID
that the host's /proc does not have, or a process list and utilisation samples whose PIDs
are from different PID namespaces (HAMi-core #112), is reported with a reason, never
attributed to whoever owns that PID number on the host. Node-level blind spots
(``accounting_mode``, ``gpm``) are in ``NodeSample.unavailable``.

Units, as NVML gives them: power in milliwatts, energy in millijoules since the driver was
loaded, memory in bytes, utilisation in percent. GPM bandwidths come in MiB/s and are
converted to bytes per second.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.sources import procfs
from agent.sources.base import DeviceInfo, GpuSample, NodeSample, ProcessSample, SourceError
from agent.sources.cc import CcEvidence
from agent.sources.nodeio import NodeIo

_logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
# NVML's "value not available" sentinels: (unsigned int)-1 and (unsigned long long)-1.
_NA_UINT = 2**32 - 1
_NA_ULONGLONG = 2**64 - 1

_REMEDY_DRIVER = (
    "Install the NVIDIA driver on this node (it ships libnvidia-ml.so.1) and check that "
    "`nvidia-smi` lists the GPUs. In a container, run the agent with the NVIDIA container "
    "toolkit (docker --gpus all, or the nvidia RuntimeClass on Kubernetes) so the driver "
    "library and /dev/nvidia* are mounted."
)

# GPM metric -> GpuSample field, and the factor from NVML's unit to the field's unit.
_GPM_METRICS: tuple[tuple[str, str, float], ...] = (
    ("NVML_GPM_METRIC_SM_UTIL", "sm_active_pct", 1.0),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "tensor_active_pct", 1.0),
    ("NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC", "nvlink_tx_bytes_per_s", float(_MIB)),
    ("NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC", "nvlink_rx_bytes_per_s", float(_MIB)),
    ("NVML_GPM_METRIC_PCIE_TX_PER_SEC", "pcie_tx_bytes_per_s", float(_MIB)),
    ("NVML_GPM_METRIC_PCIE_RX_PER_SEC", "pcie_rx_bytes_per_s", float(_MIB)),
)
_GPM_API = (
    "nvmlGpmQueryDeviceSupport",
    "nvmlGpmSampleAlloc",
    "nvmlGpmSampleGet",
    "nvmlGpmSampleFree",
    "nvmlGpmMetricsGet",
    "c_nvmlGpmMetricsGet_t",
    "NVML_GPM_METRICS_GET_VERSION",
)
_PROCESS_LIST_FUNCTIONS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId when the GPU is not in MIG mode
# ECC, retired pages and remapped rows change rarely: read them every this many samples.
_SLOW_EVERY = 10
_MAX_EVENTS_PER_SAMPLE = 64  # Xid events drained per GPU per sample (the rest wait for the next)
_MAX_ACCOUNTING_SEEN = 8192  # PIDs remembered per GPU so accounting stats are asked once


class _AbsentError(Exception):
    """Stands in for an exception class the NVML module does not define."""


class _GpuLostError(Exception):
    """Internal: this GPU raised NVML_ERROR_GPU_IS_LOST; carries the reason string."""


@dataclass
class _Gpm:
    """GPM state of one GPU: two sample buffers, and whether ``buffers[prev]`` holds data."""

    buffers: tuple[Any, Any]
    prev: int = 0
    have_prev: bool = False


class NvmlSource:
    """A :class:`~agent.sources.base.GpuSource` over NVML.

    ``nvml`` is the pynvml module (imported here when None; tests pass a fake that raises the
    real ``pynvml.NVMLError_*`` classes). ``proc_root`` is the host's /proc, used to fill
    ``ProcessSample.start_time_ticks``; None leaves it unset. ``node_io``, when given, adds
    node I/O rates to every sample. ``clock`` gives the sample time in Unix seconds. ``gpm``
    turns the Hopper+ GPU Performance Monitoring metrics on (where the GPU supports them).

    Raises :class:`SourceError` with a remedy when NVML cannot start.
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        proc_root: str | os.PathLike[str] | None = None,
        node_io: NodeIo | None = None,
        clock: Callable[[], float] = time.time,
        gpm: bool = True,
    ) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as e:
                raise SourceError(
                    "the NVML Python bindings (module pynvml) are not installed",
                    remedy="Install the package nvidia-ml-py into the agent's environment.",
                ) from e
            nvml = pynvml
        self._nvml: Any = nvml
        self._proc_root = proc_root
        self._node_io = node_io
        self._clock = clock
        self._error_names: dict[int, str] = {
            v: name
            for name in dir(nvml)
            if name.startswith("NVML_ERROR_") and isinstance(v := getattr(nvml, name), int)
        }
        self._logged: set[tuple[int, str, str]] = set()
        self._closed = False

        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise self._init_error(e) from e
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as e:
            self._shutdown()
            raise SourceError(
                f"NVML started but cannot count the GPUs: {self._reason(e)}", remedy=_REMEDY_DRIVER
            ) from e

        # Index -> handle, or the reason the GPU could not be opened.
        self._handles: list[Any | None] = []
        self._no_handle: dict[int, str] = {}
        for i in range(count):
            try:
                self._handles.append(nvml.nvmlDeviceGetHandleByIndex(i))
            except nvml.NVMLError as e:
                self._handles.append(None)
                self._no_handle[i] = self._reason(e)
                _logger.warning("GPU %d cannot be opened: %s; it will be reported unavailable", i, self._reason(e))

        self._process_fn: str | None = None  # the process-list function this driver supports
        self._proc_util_ts: dict[int, int] = {}  # GPU -> last NVML process-sample timestamp (us)
        self._gpm: dict[int, _Gpm] = {}
        self._gpm_reason: dict[int, str] = {}
        self._xid_sets: dict[int, Any] = {}
        self._xid_reason: dict[int, str] = {}
        self._slow: dict[int, tuple[int, dict[str, int], dict[str, str]]] = {}  # GPU -> (tick, values, reasons)
        self._acct_seen: dict[int, dict[int, None]] = {}  # GPU -> PIDs seen (insertion-ordered set)
        self._acct_off: dict[int, str] = {}  # GPU -> why accounting stats are not read
        for i, h in enumerate(self._handles):
            if h is None:
                continue
            reason = self._gpm_setup(i, h) if gpm else "gpm_disabled"
            if reason is not None:
                self._gpm_reason[i] = reason
            reason = self._xid_setup(i, h)
            if reason is not None:
                self._xid_reason[i] = reason

    # -- errors -----------------------------------------------------------------------

    def _reason(self, e: BaseException) -> str:
        value = getattr(e, "value", None)
        if isinstance(value, int):
            return self._error_names.get(value, f"NVML_ERROR_{value}")
        return type(e).__name__

    def _is(self, e: BaseException, name: str) -> bool:
        return getattr(e, "value", None) == getattr(self._nvml, name, object())

    def _init_error(self, e: BaseException) -> SourceError:
        reason = self._reason(e)
        if self._is(e, "NVML_ERROR_LIBRARY_NOT_FOUND"):
            return SourceError(f"the NVIDIA driver library libnvidia-ml.so.1 was not found ({reason})", _REMEDY_DRIVER)
        if self._is(e, "NVML_ERROR_DRIVER_NOT_LOADED"):
            return SourceError(
                f"the NVIDIA kernel driver is not loaded ({reason})",
                "Load or install the NVIDIA driver (`modprobe nvidia`, or install the driver "
                "package), then check that `nvidia-smi` lists the GPUs.",
            )
        if self._is(e, "NVML_ERROR_NO_PERMISSION"):
            return SourceError(
                f"no permission to open the GPUs ({reason})",
                "Run the agent as a user that may open /dev/nvidia* (root, or the group that owns them).",
            )
        if self._is(e, "NVML_ERROR_LIB_RM_VERSION_MISMATCH"):
            return SourceError(
                f"the NVML library and the loaded kernel driver differ in version ({reason})",
                "The driver was upgraded without a reboot: reboot the node (or reload the nvidia modules).",
            )
        return SourceError(f"NVML failed to start: {reason}", _REMEDY_DRIVER)

    def _note(self, index: int, field: str, reason: str) -> None:
        """Log a field that could not be read, once per (GPU, field, reason)."""
        key = (index, field, reason)
        if key in self._logged:
            return
        self._logged.add(key)
        if reason in ("NVML_ERROR_NOT_SUPPORTED", "gpm_not_supported", "gpm_api_absent", "gpm_disabled", "api_absent"):
            _logger.info("GPU %d: %s is not available on this GPU/driver (%s)", index, field, reason)
        else:
            _logger.warning("GPU %d: cannot read %s: %s", index, field, reason)

    def _call(self, index: int, field: str, unavailable: dict[str, str], fn: str, *args: Any) -> Any | None:
        """``nvml.<fn>(*args)``; on an NVML error, None and ``unavailable[field] = reason``.

        NVML_ERROR_GPU_IS_LOST is raised as :class:`_GpuLostError`: the whole GPU is left out.
        """
        nvml = self._nvml
        try:
            return getattr(nvml, fn)(*args)
        except nvml.NVMLError as e:
            reason = self._reason(e)
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(reason) from e
            unavailable[field] = reason
            self._note(index, field, reason)
            return None

    def _mark(self, index: int, field: str, unavailable: dict[str, str], reason: str) -> None:
        unavailable[field] = reason
        self._note(index, field, reason)

    def _not_na(self, index: int, field: str, unavailable: dict[str, str], v: Any, sentinel: int) -> Any | None:
        """``v``, or None with reason NVML_VALUE_NOT_AVAILABLE when it is NVML's sentinel."""
        if v is not None and v == sentinel:
            self._mark(index, field, unavailable, "NVML_VALUE_NOT_AVAILABLE")
            return None
        return v

    # -- devices ----------------------------------------------------------------------

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Identity and limits of every GPU that could be opened (power limit in mW, memory in bytes)."""
        out: list[DeviceInfo] = []
        for i, h in enumerate(self._handles):
            if h is None:
                continue
            un: dict[str, str] = {}
            try:
                uuid = self._call(i, "uuid", un, "nvmlDeviceGetUUID", h)
                serial = self._call(i, "serial", un, "nvmlDeviceGetSerial", h)
                model = self._call(i, "model", un, "nvmlDeviceGetName", h)
                mem = self._call(i, "mem_total_bytes", un, "nvmlDeviceGetMemoryInfo", h)
                limit = self._power_limit(i, h, un)
                identity = {**self._identity(i, h, un), **self._system_identity(i, un)}
                reserved = self._mem_reserved(i, h, un)
            except _GpuLostError as lost:
                _logger.warning("GPU %d is lost (%s); left out of the device list", i, lost)
                continue
            out.append(
                DeviceInfo(
                    index=i,
                    uuid=_text(uuid),
                    serial=_text(serial) if serial is not None else None,
                    model=_text(model),
                    mem_total_bytes=int(mem.total) if mem is not None else None,
                    power_limit_mw=limit,
                    unavailable=un,
                    identity=identity,
                    mem_reserved_bytes=reserved,
                )
            )
        return tuple(out)

    def _opt(self, index: int, field: str, un: dict[str, str], fn: str, *args: Any) -> Any | None:
        """Like :meth:`_call`, for a function an older pynvml may lack (reason ``api_absent``)."""
        if not hasattr(self._nvml, fn):
            self._mark(index, field, un, "api_absent")
            return None
        return self._call(index, field, un, fn, *args)

    def _identity(self, i: int, h: Any, un: dict[str, str]) -> dict[str, str]:
        """Per-GPU identity text; a key that cannot be read is named in ``un`` as ``identity.<key>``."""
        nvml = self._nvml
        out: dict[str, str] = {}
        pci = self._opt(i, "identity.pci_bus_id", un, "nvmlDeviceGetPciInfo", h)
        if pci is not None:
            out["pci_bus_id"] = _text(pci.busId)
        for key, fn in (
            ("board_part_number", "nvmlDeviceGetBoardPartNumber"),
            ("vbios_version", "nvmlDeviceGetVbiosVersion"),
        ):
            v = self._opt(i, f"identity.{key}", un, fn, h)
            if v is not None:
                out[key] = _text(v)
        arch = self._opt(i, "identity.architecture", un, "nvmlDeviceGetArchitecture", h)
        if arch is not None:
            names = {
                getattr(nvml, n): n.removeprefix("NVML_DEVICE_ARCH_").lower()
                for n in dir(nvml)
                if n.startswith("NVML_DEVICE_ARCH_") and isinstance(getattr(nvml, n), int)
            }
            out["architecture"] = names.get(int(arch), f"arch_{int(arch)}")
        mig = self._opt(i, "identity.mig_mode", un, "nvmlDeviceGetMigMode", h)
        if mig is not None:
            out["mig_mode"] = "enabled" if int(mig[0]) == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1) else "disabled"
        return out

    def _system_identity(self, i: int, un: dict[str, str]) -> dict[str, str]:
        """Driver-wide identity (the same for every GPU): driver, CUDA driver, CC mode."""
        out: dict[str, str] = {}
        driver = self._opt(i, "identity.driver_version", un, "nvmlSystemGetDriverVersion")
        if driver is not None:
            out["driver_version"] = _text(driver)
        cuda = self._opt(i, "identity.cuda_driver_version", un, "nvmlSystemGetCudaDriverVersion")
        if cuda is not None:
            out["cuda_driver_version"] = f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
        cc = self._opt(i, "identity.cc_mode", un, "nvmlSystemGetConfComputeState")
        if cc is not None:
            on = int(cc.ccFeature) == getattr(self._nvml, "NVML_CC_SYSTEM_FEATURE_ENABLED", 1)
            out["cc_mode"] = "on" if on else "off"
        return out

    def _mem_reserved(self, i: int, h: Any, un: dict[str, str]) -> int | None:
        """Memory the driver reserves (nvmlDeviceGetMemoryInfo_v2), in bytes."""
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is None:
            self._mark(i, "mem_reserved_bytes", un, "api_absent")
            return None
        mem = self._call(i, "mem_reserved_bytes", un, "nvmlDeviceGetMemoryInfo", h, version)
        return int(mem.reserved) if mem is not None else None

    def _power_limit(self, index: int, handle: Any, un: dict[str, str]) -> int | None:
        """The enforced power limit in mW; the management limit when the former cannot be read.

        When neither can be read, the reason recorded is the enforced limit's.
        """
        nvml = self._nvml
        first_reason: str | None = None
        for fn in ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"):
            try:
                return int(getattr(nvml, fn)(handle))
            except nvml.NVMLError as e:
                if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                    raise _GpuLostError(self._reason(e)) from e
                first_reason = first_reason or self._reason(e)
        self._mark(index, "power_limit_mw", un, first_reason or "unknown")
        return None

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
                gpus.append(self._sample_gpu(i, h))
            except _GpuLostError as lost:
                unavailable[f"gpu[{i}]"] = str(lost)
                self._note(i, "gpu", str(lost))
        node_io = None
        if self._node_io is not None:
            node_io, io_reasons = self._node_io.sample()
            unavailable.update({f"node_io.{k}": v for k, v in io_reasons.items()})
        unavailable.update(self._blind_spots())
        return NodeSample(t=t, gpus=tuple(gpus), node_io=node_io, unavailable=unavailable)

    def _blind_spots(self) -> dict[str, str]:
        """Node-level blind spots: GPUs without GPM, GPUs with accounting mode off."""
        out: dict[str, str] = {}
        for key, reasons in (("gpm", self._gpm_reason), ("accounting_mode", self._acct_off)):
            by_reason: dict[str, list[str]] = {}
            for i, reason in sorted(reasons.items()):
                by_reason.setdefault(reason, []).append(str(i))
            if by_reason:
                out[key] = "; ".join(f"{r} on GPU {','.join(ids)}" for r, ids in sorted(by_reason.items()))
        return out

    def _sample_gpu(self, i: int, h: Any) -> GpuSample:
        un: dict[str, str] = {}
        util = self._call(i, "util_pct", un, "nvmlDeviceGetUtilizationRates", h)
        util_pct = self._not_na(i, "util_pct", un, util.gpu if util is not None else None, _NA_UINT)
        mem = self._call(i, "mem_used_bytes", un, "nvmlDeviceGetMemoryInfo", h)
        mem_used = self._not_na(i, "mem_used_bytes", un, mem.used if mem is not None else None, _NA_ULONGLONG)
        power = self._call(i, "power_mw", un, "nvmlDeviceGetPowerUsage", h)
        power = self._not_na(i, "power_mw", un, power, _NA_UINT)
        energy = self._call(i, "energy_mj", un, "nvmlDeviceGetTotalEnergyConsumption", h)
        energy = self._not_na(i, "energy_mj", un, energy, _NA_ULONGLONG)
        procs = self._processes(i, h, un)
        gpm = self._gpm_metrics(i, h, un)
        health = self._health(i, h, un)
        events = self._xid_events(i, un)
        return GpuSample(
            index=i,
            util_pct=float(util_pct) if util_pct is not None else None,
            mem_used_bytes=int(mem_used) if mem_used is not None else None,
            power_mw=int(power) if power is not None else None,
            energy_mj=int(energy) if energy is not None else None,
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
        )

    # -- health -------------------------------------------------------------------------

    def _health(self, i: int, h: Any, un: dict[str, str]) -> dict[str, int]:
        """Temperature, clocks, throttle reasons now; ECC, retired pages, remapped rows every
        ``_SLOW_EVERY`` samples (the last reading is repeated in between)."""
        nvml = self._nvml
        out: dict[str, int] = {}
        quick: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
            ("temp_gpu_c", "nvmlDeviceGetTemperature", (getattr(nvml, "NVML_TEMPERATURE_GPU", 0),)),
            ("sm_clock_mhz", "nvmlDeviceGetClockInfo", (getattr(nvml, "NVML_CLOCK_SM", 1),)),
            ("mem_clock_mhz", "nvmlDeviceGetClockInfo", (getattr(nvml, "NVML_CLOCK_MEM", 2),)),
        )
        for key, fn, args in quick:
            v = self._opt(i, f"health.{key}", un, fn, h, *args)
            if v is not None:
                out[key] = int(v)
        reasons_fn = (
            "nvmlDeviceGetCurrentClocksEventReasons"
            if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
            else "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        mask = self._opt(i, "health.throttle_reasons_mask", un, reasons_fn, h)
        if mask is not None:
            out["throttle_reasons_mask"] = int(mask)
        tick, slow, slow_un = self._slow.get(i, (0, {}, {}))
        if tick % _SLOW_EVERY == 0:
            slow, slow_un = self._slow_health(i, h)
        self._slow[i] = (tick + 1, slow, slow_un)
        un.update(slow_un)
        out.update(slow)
        return out

    def _slow_health(self, i: int, h: Any) -> tuple[dict[str, int], dict[str, str]]:
        nvml = self._nvml
        out: dict[str, int] = {}
        un: dict[str, str] = {}
        for err, err_name in (
            (getattr(nvml, "NVML_MEMORY_ERROR_TYPE_CORRECTED", 0), "corrected"),
            (getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1), "uncorrected"),
        ):
            for counter, counter_name in (
                (getattr(nvml, "NVML_VOLATILE_ECC", 0), "volatile"),
                (getattr(nvml, "NVML_AGGREGATE_ECC", 1), "aggregate"),
            ):
                key = f"ecc_{counter_name}_{err_name}"
                v = self._opt(i, f"health.{key}", un, "nvmlDeviceGetTotalEccErrors", h, err, counter)
                if v is not None:
                    out[key] = int(v)
        for key, cause in (
            ("retired_pages_sbe", getattr(nvml, "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", 0)),
            ("retired_pages_dbe", getattr(nvml, "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", 1)),
        ):
            pages = self._opt(i, f"health.{key}", un, "nvmlDeviceGetRetiredPages", h, cause)
            if pages is not None:
                out[key] = len(pages)
        pending = self._opt(i, "health.retired_pages_pending", un, "nvmlDeviceGetRetiredPagesPendingStatus", h)
        if pending is not None:
            out["retired_pages_pending"] = int(pending)
        rows = self._opt(i, "health.remapped_rows_correctable", un, "nvmlDeviceGetRemappedRows", h)
        if rows is not None:
            corr, unc, pend, fail = (int(x) for x in rows)
            out.update(
                remapped_rows_correctable=corr,
                remapped_rows_uncorrectable=unc,
                remapped_rows_pending=pend,
                remapped_rows_failure=fail,
            )
        elif "health.remapped_rows_correctable" in un:
            reason = un["health.remapped_rows_correctable"]
            for key in ("remapped_rows_uncorrectable", "remapped_rows_pending", "remapped_rows_failure"):
                un[f"health.{key}"] = reason
        return out, un

    # -- Xid events -----------------------------------------------------------------------

    def _xid_setup(self, i: int, h: Any) -> str | None:
        """One event set per GPU, registered for Xid critical errors; the reason when not."""
        nvml = self._nvml
        needed = ("nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetFree", "nvmlEventTypeXidCriticalError")
        if not all(hasattr(nvml, n) for n in needed) or not (
            hasattr(nvml, "nvmlEventSetWait_v2") or hasattr(nvml, "nvmlEventSetWait")
        ):
            return "api_absent"
        event_set = None
        try:
            event_set = nvml.nvmlEventSetCreate()
            nvml.nvmlDeviceRegisterEvents(h, nvml.nvmlEventTypeXidCriticalError, event_set)
        except nvml.NVMLError as e:
            if event_set is not None:
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlEventSetFree(event_set)
            return self._reason(e)
        self._xid_sets[i] = event_set
        return None

    def _xid_events(self, i: int, un: dict[str, str]) -> tuple[tuple[str, str], ...]:
        """Drain GPU ``i``'s Xid event set without waiting (timeout 0)."""
        event_set = self._xid_sets.get(i)
        if event_set is None:
            self._mark(i, "xid_events", un, self._xid_reason.get(i, "api_absent"))
            return ()
        nvml = self._nvml
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
        out: list[tuple[str, str]] = []
        for _ in range(_MAX_EVENTS_PER_SAMPLE):
            try:
                data = wait(event_set, 0)
            except nvml.NVMLError as e:
                if self._is(e, "NVML_ERROR_TIMEOUT"):
                    break  # nothing (more) pending
                if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                    raise _GpuLostError(self._reason(e)) from e
                self._mark(i, "xid_events", un, self._reason(e))
                break
            detail = f"Xid {int(data.eventData)}"
            gi, ci = (
                int(getattr(data, "gpuInstanceId", _NO_INSTANCE)),
                int(getattr(data, "computeInstanceId", _NO_INSTANCE)),
            )
            if gi != _NO_INSTANCE:
                detail += f" in GPU instance {gi}" + (f" compute instance {ci}" if ci != _NO_INSTANCE else "")
            _logger.warning("GPU %d: %s", i, detail)
            out.append(("xid", detail))
        return tuple(out)

    def _list_processes(self, i: int, h: Any, un: dict[str, str]) -> list[Any] | None:
        """NVML's compute processes on the GPU (newest API the driver has), or None."""
        nvml = self._nvml
        names: tuple[str, ...] = (
            (self._process_fn,)
            if self._process_fn is not None
            else tuple(n for n in _PROCESS_LIST_FUNCTIONS if hasattr(nvml, n))
        )
        last_reason = "api_absent"
        for name in names:
            try:
                procs = getattr(nvml, name)(h)
            except nvml.NVMLError as e:
                if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                    raise _GpuLostError(self._reason(e)) from e
                last_reason = self._reason(e)
                if self._is(e, "NVML_ERROR_FUNCTION_NOT_FOUND"):
                    continue  # an older driver: try the previous version of the call
                break
            except getattr(nvml, "NVMLLibraryMismatchError", _AbsentError) as e:  # the unversioned call's way
                last_reason = type(e).__name__
                continue
            self._process_fn = name
            return list(procs)
        self._mark(i, "procs", un, last_reason)
        return None

    def _processes(self, i: int, h: Any, un: dict[str, str]) -> tuple[ProcessSample, ...]:
        listed = self._list_processes(i, h, un) or []
        # One PID can appear more than once (MIG instances); sum its memory.
        mem_by_pid: dict[int, int | None] = {}
        via: dict[int, str] = {}
        instance: dict[int, int] = {}
        mps = self._mps_processes(i, h, un)
        for p, kind in [*((p, "compute") for p in listed), *((p, "mps") for p in mps)]:
            pid = int(p.pid)
            if kind == "mps" and via.get(pid) == "compute":
                continue  # already counted from the compute list
            via.setdefault(pid, kind)
            gi = getattr(p, "gpuInstanceId", _NO_INSTANCE)
            if gi is not None and int(gi) != _NO_INSTANCE:
                instance.setdefault(pid, int(gi))
            used = p.usedGpuMemory
            if used is None or used == _NA_ULONGLONG:
                self._mark(i, "procs.mem_bytes", un, "NVML_VALUE_NOT_AVAILABLE")
                mem_by_pid[pid] = None
            elif pid not in mem_by_pid:
                mem_by_pid[pid] = int(used)
            elif (prev := mem_by_pid[pid]) is not None:
                mem_by_pid[pid] = prev + int(used)
        sm = self._process_sm(i, h, un) if mem_by_pid else {}
        if sm and mem_by_pid and not set(sm) & set(mem_by_pid):
            # HAMi-core #112: on some drivers the process list and the utilisation samples
            # give PIDs from different PID namespaces. Neither set can be trusted to match the
            # other, so no per-process SM share is used for this sample.
            self._mark(i, "procs.sm_pct", un, "pid_namespace_mismatch")
            sm = {}
        out: list[ProcessSample] = []
        for pid, mem_bytes in mem_by_pid.items():
            start: int | None = None
            suspect: str | None = None
            if self._proc_root is not None:
                start = procfs.read_start_time_ticks(self._proc_root, pid)
                if start is None:
                    # Exited between NVML's list and this read, or not a host PID (NVML gave a
                    # container-namespace PID, HAMi-core #112): never attribute it by number.
                    self._mark(i, "procs.start_time_ticks", un, "proc_unreadable")
                    suspect = "pid_not_in_host_proc"
            out.append(
                ProcessSample(
                    pid=pid,
                    mem_bytes=mem_bytes,
                    sm_pct=sm.get(pid),
                    start_time_ticks=start,
                    via=via[pid],
                    gpu_instance_id=instance.get(pid),
                    suspect=suspect,
                )
            )
        out.extend(self._accounting_only(i, h, un, set(mem_by_pid)))
        return tuple(out)

    def _mps_processes(self, i: int, h: Any, un: dict[str, str]) -> list[Any]:
        """MPS clients (nvmlDeviceGetMPSComputeRunningProcesses_v3); [] when MPS is not in use."""
        procs = self._opt(i, "procs.mps", un, "nvmlDeviceGetMPSComputeRunningProcesses_v3", h)
        return list(procs) if procs else []

    def _accounting_only(self, i: int, h: Any, un: dict[str, str], listed: set[int]) -> list[ProcessSample]:
        """Processes accounting mode saw that ended before this sample could list them.

        Each is reported once, with its peak memory, ``via="accounting"`` and
        ``suspect="exited_before_sample"``: its /proc entry is gone, so it stays unattributed
        (its PID may already belong to someone else).
        """
        nvml = self._nvml
        seen = self._acct_seen.setdefault(i, {})
        for pid in listed:
            seen[pid] = None
        mode = self._opt(i, "procs.accounting", un, "nvmlDeviceGetAccountingMode", h)
        if mode is None:
            self._acct_off[i] = un.get("procs.accounting", "unknown")
            return []
        if int(mode) != getattr(nvml, "NVML_FEATURE_ENABLED", 1):
            self._acct_off[i] = "disabled"
            return []
        self._acct_off.pop(i, None)
        pids = self._opt(i, "procs.accounting", un, "nvmlDeviceGetAccountingPids", h)
        out: list[ProcessSample] = []
        for pid in pids or ():
            pid = int(pid)
            if pid in seen:
                continue
            stats = self._opt(i, "procs.accounting", un, "nvmlDeviceGetAccountingStats", h, pid)
            if stats is None or int(stats.isRunning):
                continue  # still running: the process list will show it
            seen[pid] = None
            peak = stats.maxMemoryUsage
            out.append(
                ProcessSample(
                    pid=pid,
                    mem_bytes=None if peak is None or peak == _NA_ULONGLONG else int(peak),
                    via="accounting",
                    suspect="exited_before_sample",
                )
            )
        while len(seen) > _MAX_ACCOUNTING_SEEN:
            del seen[next(iter(seen))]
        return out

    def _process_sm(self, i: int, h: Any, un: dict[str, str]) -> dict[int, float]:
        """PID -> mean SM utilisation (%) over NVML's samples since the previous call."""
        nvml = self._nvml
        if not hasattr(nvml, "nvmlDeviceGetProcessUtilization"):
            self._mark(i, "procs.sm_pct", un, "api_absent")
            return {}
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(h, self._proc_util_ts.get(i, 0))
        except nvml.NVMLError as e:
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(self._reason(e)) from e
            if self._is(e, "NVML_ERROR_NOT_FOUND"):
                return {}  # no samples since the last timestamp: nothing new, not an error
            self._mark(i, "procs.sm_pct", un, self._reason(e))
            return {}
        sums: dict[int, tuple[float, int]] = {}
        last = self._proc_util_ts.get(i, 0)
        for s in samples:
            last = max(last, int(s.timeStamp))
            if s.smUtil > 100:  # sentinel or garbage: not a percentage
                continue
            total, n = sums.get(int(s.pid), (0.0, 0))
            sums[int(s.pid)] = (total + float(s.smUtil), n + 1)
        self._proc_util_ts[i] = last
        return {pid: total / n for pid, (total, n) in sums.items()}

    # -- GPM (Hopper and newer) ---------------------------------------------------------

    def _gpm_setup(self, i: int, h: Any) -> str | None:
        """Allocate GPM sample buffers for GPU ``i``; the reason when GPM cannot be used."""
        nvml = self._nvml
        if not all(hasattr(nvml, name) for name in _GPM_API):
            return "gpm_api_absent"
        buffers: list[Any] = []
        try:
            support = nvml.nvmlGpmQueryDeviceSupport(h)
            if not support.isSupportedDevice:
                return "gpm_not_supported"
            while len(buffers) < 2:
                buffers.append(nvml.nvmlGpmSampleAlloc())
        except nvml.NVMLError as e:
            for buf in buffers:
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlGpmSampleFree(buf)
            return self._reason(e)
        self._gpm[i] = _Gpm(buffers=(buffers[0], buffers[1]))
        return None

    def _gpm_metrics(self, i: int, h: Any, un: dict[str, str]) -> dict[str, float]:
        """GPM metrics between the previous and this sample, by GpuSample field name."""
        fields = [f for _, f, _ in _GPM_METRICS]
        state = self._gpm.get(i)
        if state is None:
            for f in fields:
                self._mark(i, f, un, self._gpm_reason.get(i, "gpm_not_supported"))
            return {}
        nvml = self._nvml
        cur = 1 - state.prev
        try:
            nvml.nvmlGpmSampleGet(h, state.buffers[cur])
            if not state.have_prev:
                state.prev, state.have_prev = cur, True
                for f in fields:
                    un[f] = "first_sample"
                return {}
            request = nvml.c_nvmlGpmMetricsGet_t()
            request.version = nvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(_GPM_METRICS)
            request.sample1 = state.buffers[state.prev]
            request.sample2 = state.buffers[cur]
            for k, (metric, _, _) in enumerate(_GPM_METRICS):
                request.metrics[k].metricId = getattr(nvml, metric)
            state.prev = cur
            nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError as e:
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(self._reason(e)) from e
            state.have_prev = False  # start over from a fresh pair of samples
            for f in fields:
                self._mark(i, f, un, self._reason(e))
            return {}
        out: dict[str, float] = {}
        for k, (_, field, factor) in enumerate(_GPM_METRICS):
            m = request.metrics[k]
            ret = int(m.nvmlReturn)
            value = float(m.value)
            if ret != nvml.NVML_SUCCESS:
                self._mark(i, field, un, self._error_names.get(ret, f"NVML_ERROR_{ret}"))
            elif not math.isfinite(value) or value < 0:
                self._mark(i, field, un, "NVML_VALUE_NOT_AVAILABLE")
            else:
                out[field] = value * factor
        return out

    # -- confidential computing ---------------------------------------------------------

    def cc_attestation(self, nonce: bytes) -> CcEvidence:
        """Each GPU's CC attestation report over ``nonce`` (32 bytes), or why there is none.

        nvmlSystemGetConfComputeState says whether CC is on; only then is
        nvmlDeviceGetConfComputeGpuAttestationReport asked, per GPU. Never raises.
        """
        nvml = self._nvml
        if not hasattr(nvml, "nvmlSystemGetConfComputeState"):
            return CcEvidence(reason="cc_api_absent")
        try:
            state = nvml.nvmlSystemGetConfComputeState()
        except nvml.NVMLError as e:
            reason = self._reason(e)
            self._note(-1, "cc_attestation", reason)
            return CcEvidence(reason=reason)
        if getattr(state, "ccFeature", None) != getattr(nvml, "NVML_CC_SYSTEM_FEATURE_ENABLED", 1):
            return CcEvidence(reason="cc_mode_off")
        reports: dict[int, bytes] = {}
        unavailable: dict[int, str] = {}
        for i, h in enumerate(self._handles):
            if h is None:
                unavailable[i] = self._no_handle.get(i, "no_handle")
                continue
            try:
                r = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(h, nonce)
            except nvml.NVMLError as e:
                unavailable[i] = self._reason(e)
                self._note(i, "cc_attestation", unavailable[i])
                continue
            size = int(r.attestationReportSize)
            reports[i] = bytes(r.attestationReport[:size])
        return CcEvidence(reports=reports, unavailable=unavailable, reason=None if reports else "no_gpu_attested")

    # -- shutdown -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as e:
            _logger.warning("nvmlShutdown failed: %s", self._reason(e))

    def close(self) -> None:
        """Free GPM buffers and shut NVML down. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for i, state in self._gpm.items():
            for buf in state.buffers:
                try:
                    self._nvml.nvmlGpmSampleFree(buf)
                except self._nvml.NVMLError as e:
                    _logger.debug("GPU %d: nvmlGpmSampleFree failed: %s", i, self._reason(e))
        self._gpm.clear()
        for i, event_set in self._xid_sets.items():
            try:
                self._nvml.nvmlEventSetFree(event_set)
            except self._nvml.NVMLError as e:
                _logger.debug("GPU %d: nvmlEventSetFree failed: %s", i, self._reason(e))
        self._xid_sets.clear()
        self._shutdown()


def _text(v: Any) -> str:
    """NVML strings: str in nvidia-ml-py, bytes in old pynvml releases; None -> ""."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)
