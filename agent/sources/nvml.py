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
attributed to whoever owns that PID number on the host; nor is a PID that the host's /proc
shows as a kernel thread (``suspect="kernel_thread"``). Node-level blind spots
(``accounting_mode``, ``gpm``) are in ``NodeSample.unavailable``.

MIG: on a GPU with MIG mode on, the MIG devices (one per compute instance) are enumerated
with ``nvmlDeviceGetMaxMigDeviceCount`` and ``nvmlDeviceGetMigDeviceHandleByIndex`` (an empty
slot answers NVML_ERROR_NOT_FOUND), again every ``_MIG_RESCAN_EVERY`` samples and as soon as
a MIG handle stops answering (instances are created and destroyed while the agent runs).
Each instance gives its GPU and compute instance ids, MIG UUID, slice count
(``nvmlDeviceGetAttributes``: ``gpuInstanceSliceCount``), memory and process list read on
the MIG handle, so membership does not depend on the parent's aggregate list (which needs
privileges); the GPU's slice count is that of its largest GPU instance profile. NVML's
utilisation rates are not supported on MIG GPUs or MIG devices, so per-instance activity
is GPM's, per GPU instance (``nvmlGpmMigSampleGet`` on the parent, Hopper and newer);
elsewhere it is unavailable with the reason.

NVLink without GPM (pre-Hopper, or GPM off): the cumulative NVLink data counters
``NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX``/``_RX`` (KiB, summed over all links: scope id
UINT_MAX) are read with ``nvmlDeviceGetFieldValues`` and turned into bytes per second from
the difference between two samples over NVML's own timestamps. A counter that goes back
(driver reload, wrap) gives no rate for that sample (``counter_reset``), never a number.

Units, as NVML gives them: power in milliwatts, energy in millijoules since the driver was
loaded, memory in bytes, utilisation in percent. GPM bandwidths come in MiB/s and are
converted to bytes per second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.sources import procfs
from agent.sources.base import (
    DeviceInfo,
    GpuSample,
    MigInstanceSample,
    MigSample,
    NodeSample,
    ProcessSample,
    SourceError,
)
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
# MIG layouts change rarely (an administrator creates or destroys instances): re-enumerate
# every this many samples, and at once when a MIG handle answers as if its instance were gone.
_MIG_RESCAN_EVERY = 10
_MIG_GONE = ("NVML_ERROR_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT")
# GPU instance profile ids (NVML_GPU_INSTANCE_PROFILE_7_SLICE, ..._1_SLICE_REV1, ...), not the
# profile count or capability bits.
_GI_PROFILE = re.compile(r"NVML_GPU_INSTANCE_PROFILE_[0-9]+_SLICE(_[A-Z0-9_]+)?")
_MIG_API = ("nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId")
# GPM metrics read per GPU instance (nvmlGpmMigSampleGet): activity only.
_MIG_GPM_METRICS: tuple[tuple[str, str, float], ...] = _GPM_METRICS[:2]
# nvmlFieldValue_t.scopeId for the NVLink throughput counters: UINT_MAX sums all links (nvml.h).
_ALL_LINKS = 0xFFFFFFFF
_KIB = 1024
# nvmlFieldValue_t.valueType -> the member of the value union that holds it (nvml.h
# nvmlValueType_t); a throughput counter is an unsigned integer.
_FIELD_VALUE_MEMBER = {1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


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


@dataclass
class _MigDevice:
    """One MIG device as enumerated: its handle and what does not change while it exists."""

    handle: Any
    gi: int
    ci: int | None
    uuid: str | None
    slices: int | None
    reasons: dict[str, str]  # readings above that could not be taken

    @property
    def label(self) -> str:
        return f"mig[{self.gi}.{'?' if self.ci is None else self.ci}]"


@dataclass
class _MigLayout:
    """A GPU's MIG mode and instances, as of the last enumeration."""

    enabled: bool
    devices: list[_MigDevice]
    slices_total: int | None
    reasons: dict[str, str]  # why the layout or slices_total is incomplete
    tick: int = 0


@dataclass
class _MigRead:
    """What one sample read from a MIG GPU's instances, before the process list is final."""

    slices_total: int | None
    reasons: dict[str, str]
    # (process struct, GPU instance id, compute instance id) from each MIG device's list
    listed: list[tuple[Any, int | None, int | None]] = dataclasses.field(default_factory=list)
    partial: bool = False  # some MIG device's process list could not be read
    # (device, memory total, memory used, GPM values by field, reasons) per MIG device
    instances: list[tuple[_MigDevice, int | None, int | None, dict[str, float], dict[str, str]]] = dataclasses.field(
        default_factory=list
    )

    def sample(self, procs: tuple[ProcessSample, ...]) -> MigSample:
        """The MigSample, each instance with the PIDs the final process list places in it."""
        out = []
        for d, total, used, values, reasons in self.instances:
            pids = sorted(
                p.pid
                for p in procs
                if p.gpu_instance_id == d.gi
                and (p.compute_instance_id is None or d.ci is None or p.compute_instance_id == d.ci)
            )
            out.append(
                MigInstanceSample(
                    gpu_instance_id=d.gi,
                    compute_instance_id=d.ci,
                    uuid=d.uuid,
                    slices=d.slices,
                    mem_total_bytes=total,
                    mem_used_bytes=used,
                    sm_active_pct=values.get("sm_active_pct"),
                    tensor_active_pct=values.get("tensor_active_pct"),
                    pids=tuple(pids),
                    unavailable=reasons,
                )
            )
        return MigSample(slices_total=self.slices_total, instances=tuple(out), unavailable=dict(self.reasons))


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
        self._mig: dict[int, _MigLayout] = {}  # GPU -> MIG layout (enabled or not)
        self._mig_stale: set[int] = set()  # GPUs whose MIG layout must be read again now
        self._mig_gpm: dict[tuple[int, int], _Gpm] = {}  # (GPU, GPU instance id) -> GPM buffers
        self._nvlink_prev: dict[tuple[int, str], tuple[int, float]] = {}  # (GPU, field) -> (KiB, s)
        self._nvlink_off: dict[int, str] = {}  # GPU -> why its NVLink counters are not read
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
                gpus.append(self._sample_gpu(i, h, t))
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

    def _sample_gpu(self, i: int, h: Any, t: float) -> GpuSample:
        un: dict[str, str] = {}
        util = self._call(i, "util_pct", un, "nvmlDeviceGetUtilizationRates", h)
        util_pct = self._not_na(i, "util_pct", un, util.gpu if util is not None else None, _NA_UINT)
        mem = self._call(i, "mem_used_bytes", un, "nvmlDeviceGetMemoryInfo", h)
        mem_used = self._not_na(i, "mem_used_bytes", un, mem.used if mem is not None else None, _NA_ULONGLONG)
        power = self._call(i, "power_mw", un, "nvmlDeviceGetPowerUsage", h)
        power = self._not_na(i, "power_mw", un, power, _NA_UINT)
        energy = self._call(i, "energy_mj", un, "nvmlDeviceGetTotalEnergyConsumption", h)
        energy = self._not_na(i, "energy_mj", un, energy, _NA_ULONGLONG)
        mig = self._mig_read(i, h, un)
        procs = self._processes(i, h, un, mig)
        gpm = self._gpm_metrics(i, h, un)
        if i not in self._gpm:
            gpm.update(self._nvlink_counters(i, h, un, t))
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
            mig=mig.sample(procs) if mig is not None else None,
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

    def _list_processes(
        self, i: int, h: Any, un: dict[str, str], key: str = "procs", label: str | None = None
    ) -> list[Any] | None:
        """NVML's compute processes on ``h`` (newest API the driver has), or None with the
        reason in ``un[key]`` (logged once as ``label``, default ``key``)."""
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
        un[key] = last_reason
        self._note(i, label or key, last_reason)
        if label is not None and last_reason in _MIG_GONE:
            self._mig_stale.add(i)
        return None

    def _processes(self, i: int, h: Any, un: dict[str, str], mig: _MigRead | None = None) -> tuple[ProcessSample, ...]:
        """The GPU's processes. On a MIG GPU they come from each MIG device's own list, tagged
        with its GPU and compute instance; the parent's aggregate list is read only when some
        instance's list could not be, for the processes no instance list showed."""
        listed: list[tuple[Any, int | None, int | None]]
        if mig is None:
            listed = [(p, None, None) for p in self._list_processes(i, h, un) or []]
        else:
            listed = list(mig.listed)
            if mig.partial:
                seen = {int(p.pid) for p, _, _ in listed}
                listed += [(p, None, None) for p in self._list_processes(i, h, un) or [] if int(p.pid) not in seen]
        # One PID can appear more than once (MIG instances); sum its memory.
        mem_by_pid: dict[int, int | None] = {}
        via: dict[int, str] = {}
        instance: dict[int, int] = {}
        compute_instance: dict[int, int] = {}
        mps = self._mps_processes(i, h, un)
        entries = [*((p, gi, ci, "compute") for p, gi, ci in listed), *((p, None, None, "mps") for p in mps)]
        for p, known_gi, known_ci, kind in entries:
            pid = int(p.pid)
            if kind == "mps" and via.get(pid) == "compute":
                continue  # already counted from the compute list
            via.setdefault(pid, kind)
            gi = known_gi if known_gi is not None else getattr(p, "gpuInstanceId", _NO_INSTANCE)
            if gi is not None and int(gi) != _NO_INSTANCE:
                instance.setdefault(pid, int(gi))
            ci = known_ci if known_ci is not None else getattr(p, "computeInstanceId", _NO_INSTANCE)
            if ci is not None and int(ci) != _NO_INSTANCE:
                compute_instance.setdefault(pid, int(ci))
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
                stat = procfs.read_stat(self._proc_root, pid)
                if stat is None:
                    # Exited between NVML's list and this read, or not a host PID (NVML gave a
                    # container-namespace PID, HAMi-core #112): never attribute it by number.
                    self._mark(i, "procs.start_time_ticks", un, "proc_unreadable")
                    suspect = "pid_not_in_host_proc"
                elif stat.kernel_thread:
                    # No GPU process is a kernel thread: the PID is from another namespace.
                    start = stat.start_time_ticks
                    suspect = "kernel_thread"
                    if (i, "procs", "kernel_thread") not in self._logged:
                        self._logged.add((i, "procs", "kernel_thread"))
                        _logger.warning(
                            "GPU %d: NVML lists PID %d, a kernel thread in the host's /proc: left unattributed "
                            "(a PID from another PID namespace?)",
                            i,
                            pid,
                        )
                else:
                    start = stat.start_time_ticks
            out.append(
                ProcessSample(
                    pid=pid,
                    mem_bytes=mem_bytes,
                    sm_pct=sm.get(pid),
                    start_time_ticks=start,
                    via=via[pid],
                    gpu_instance_id=instance.get(pid),
                    suspect=suspect,
                    compute_instance_id=compute_instance.get(pid),
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
        """GPM metrics between the previous and this sample, by GpuSample field name.

        Without GPM the NVLink fields are left to :meth:`_nvlink_counters`.
        """
        state = self._gpm.get(i)
        if state is None:
            reason = self._gpm_reason.get(i, "gpm_not_supported")
            for _, f, _ in _GPM_METRICS:
                if not f.startswith("nvlink_"):
                    self._mark(i, f, un, reason)
            return {}
        return self._gpm_read(i, state, lambda buf: self._nvml.nvmlGpmSampleGet(h, buf), _GPM_METRICS, un, "")

    def _gpm_read(
        self,
        i: int,
        state: _Gpm,
        take: Callable[[Any], Any],
        metrics: tuple[tuple[str, str, float], ...],
        un: dict[str, str],
        label: str,
    ) -> dict[str, float]:
        """Take a GPM sample into ``state`` with ``take(buffer)`` and compute ``metrics``
        between it and the previous one. A reading that fails is named in ``un`` (logged once
        as ``label`` + field)."""
        nvml = self._nvml

        def mark(f: str, reason: str) -> None:
            un[f] = reason
            self._note(i, label + f, reason)

        cur = 1 - state.prev
        try:
            take(state.buffers[cur])
            if not state.have_prev:
                state.prev, state.have_prev = cur, True
                for _, f, _ in metrics:
                    un[f] = "first_sample"
                return {}
            request = nvml.c_nvmlGpmMetricsGet_t()
            request.version = nvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(metrics)
            request.sample1 = state.buffers[state.prev]
            request.sample2 = state.buffers[cur]
            for k, (metric, _, _) in enumerate(metrics):
                request.metrics[k].metricId = getattr(nvml, metric)
            state.prev = cur
            nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError as e:
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(self._reason(e)) from e
            state.have_prev = False  # start over from a fresh pair of samples
            for _, f, _ in metrics:
                mark(f, self._reason(e))
            return {}
        out: dict[str, float] = {}
        for k, (_, field, factor) in enumerate(metrics):
            m = request.metrics[k]
            ret = int(m.nvmlReturn)
            value = float(m.value)
            if ret != nvml.NVML_SUCCESS:
                mark(field, self._error_names.get(ret, f"NVML_ERROR_{ret}"))
            elif not math.isfinite(value) or value < 0:
                mark(field, "NVML_VALUE_NOT_AVAILABLE")
            else:
                out[field] = value * factor
        return out

    # -- NVLink counters without GPM --------------------------------------------------------

    def _nvlink_counters(self, i: int, h: Any, un: dict[str, str], t: float) -> dict[str, float]:
        """NVLink bytes per second from the cumulative KiB data counters (all links), for a
        GPU without GPM: the counter's difference since the previous sample over the time
        between NVML's timestamps of the two readings (the sample clock where NVML gives none).
        """
        nvml = self._nvml
        fields = (
            ("nvlink_tx_bytes_per_s", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"),
            ("nvlink_rx_bytes_per_s", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"),
        )
        off = self._nvlink_off.get(i)
        if off is None and not (hasattr(nvml, "nvmlDeviceGetFieldValues") and all(hasattr(nvml, c) for _, c in fields)):
            # No way to read the counters: the reason GPM is missing stands for them too.
            off = self._nvlink_off[i] = self._gpm_reason.get(i, "gpm_not_supported")
        if off is not None:
            for f, _ in fields:
                self._mark(i, f, un, off)
            return {}
        try:
            values = nvml.nvmlDeviceGetFieldValues(h, [(getattr(nvml, c), _ALL_LINKS) for _, c in fields])
        except nvml.NVMLError as e:
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(self._reason(e)) from e
            reason = self._reason(e)
            if self._is(e, "NVML_ERROR_NOT_SUPPORTED"):
                self._nvlink_off[i] = reason  # no NVLink on this GPU: not asked again
            for f, _ in fields:
                self._mark(i, f, un, reason)
            return {}
        out: dict[str, float] = {}
        unsupported = 0
        for (f, _), v in zip(fields, values, strict=True):
            ret = int(v.nvmlReturn)
            if ret != nvml.NVML_SUCCESS:
                unsupported += ret == nvml.NVML_ERROR_NOT_SUPPORTED
                self._mark(i, f, un, self._error_names.get(ret, f"NVML_ERROR_{ret}"))
                continue
            member = _FIELD_VALUE_MEMBER.get(int(v.valueType))
            kib = int(getattr(v.value, member)) if member is not None else -1
            if kib < 0:
                self._mark(i, f, un, "unexpected_value_type" if member is None else "NVML_VALUE_NOT_AVAILABLE")
                continue
            at = int(v.timestamp) / 1e6 if int(v.timestamp) > 0 else t
            prev = self._nvlink_prev.get((i, f))
            self._nvlink_prev[(i, f)] = (kib, at)
            if prev is None:
                un[f] = "first_sample"
            elif kib < prev[0]:
                # Reset (driver reload) or wrap: the bytes moved since are unknown.
                self._mark(i, f, un, "counter_reset")
            elif at <= prev[1]:
                self._mark(i, f, un, "no_interval")
            else:
                un.pop(f, None)
                out[f] = (kib - prev[0]) * _KIB / (at - prev[1])
        if unsupported == len(fields):
            self._nvlink_off[i] = "NVML_ERROR_NOT_SUPPORTED"
        return out

    # -- MIG ------------------------------------------------------------------------------

    def _mig_layout(self, i: int, h: Any, un: dict[str, str]) -> _MigLayout | None:
        """GPU ``i``'s MIG layout, enumerated again when due; None when MIG is off."""
        lay = self._mig.get(i)
        if lay is None or i in self._mig_stale or lay.tick % _MIG_RESCAN_EVERY == 0:
            tick = lay.tick if lay is not None else 0
            lay = self._mig[i] = self._mig_scan(i, h, un, lay)
            lay.tick = tick
            self._mig_stale.discard(i)  # what the enumeration could not read waits for the next
            self._mig_gpm_sync(i, lay)
        elif "mode" in lay.reasons:
            un["mig"] = lay.reasons["mode"]
        lay.tick += 1
        return lay if lay.enabled else None

    def _mig_scan(self, i: int, h: Any, un: dict[str, str], old: _MigLayout | None) -> _MigLayout:
        nvml = self._nvml
        off = _MigLayout(enabled=False, devices=[], slices_total=None, reasons={})
        if not hasattr(nvml, "nvmlDeviceGetMigMode"):
            return off  # an nvidia-ml-py without MIG: identity.mig_mode says api_absent
        try:
            mode = nvml.nvmlDeviceGetMigMode(h)
        except nvml.NVMLError as e:
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(self._reason(e)) from e
            if self._is(e, "NVML_ERROR_NOT_SUPPORTED"):
                return off  # not a MIG-capable GPU: nothing is missing
            off.reasons["mode"] = un["mig"] = self._reason(e)
            self._note(i, "mig", off.reasons["mode"])
            return off
        if int(mode[0]) != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return off
        reasons: dict[str, str] = {}
        if old is not None and old.enabled and old.slices_total is not None:
            slices_total: int | None = old.slices_total
        else:
            slices_total = self._mig_slices_total(i, h, reasons)
        devices: list[_MigDevice] = []
        if not all(hasattr(nvml, n) for n in _MIG_API):
            reasons["instances"] = "api_absent"
            self._note(i, "mig.instances", "api_absent")
            return _MigLayout(enabled=True, devices=devices, slices_total=slices_total, reasons=reasons)
        count = self._mig_try(i, "mig", reasons, "instances", nvml.nvmlDeviceGetMaxMigDeviceCount, h)
        for k in range(int(count or 0)):
            try:
                mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
            except nvml.NVMLError as e:
                if self._is(e, "NVML_ERROR_NOT_FOUND"):
                    continue  # an empty slot: no MIG device at this index
                if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                    raise _GpuLostError(self._reason(e)) from e
                reasons[f"instance[{k}]"] = self._reason(e)
                self._note(i, f"mig.instance[{k}]", reasons[f"instance[{k}]"])
                continue
            gi = self._mig_try(i, "mig", reasons, f"instance[{k}]", nvml.nvmlDeviceGetGpuInstanceId, mh)
            if gi is None:
                continue  # an instance that cannot be placed cannot be reported
            dr: dict[str, str] = {}
            label = f"mig[{int(gi)}]"
            ci_fn = getattr(nvml, "nvmlDeviceGetComputeInstanceId", None)
            ci = self._mig_try(i, label, dr, "compute_instance_id", ci_fn, mh)
            uuid = self._mig_try(i, label, dr, "uuid", nvml.nvmlDeviceGetUUID, mh)
            attrs = self._mig_try(i, label, dr, "slices", getattr(nvml, "nvmlDeviceGetAttributes", None), mh)
            slices = int(attrs.gpuInstanceSliceCount) if attrs is not None else None
            if slices is not None and slices <= 0:
                slices, dr["slices"] = None, "NVML_VALUE_NOT_AVAILABLE"
            devices.append(
                _MigDevice(
                    handle=mh,
                    gi=int(gi),
                    ci=int(ci) if ci is not None else None,
                    uuid=_text(uuid) if uuid is not None else None,
                    slices=slices,
                    reasons=dr,
                )
            )
        devices.sort(key=lambda d: (d.gi, -1 if d.ci is None else d.ci))
        return _MigLayout(enabled=True, devices=devices, slices_total=slices_total, reasons=reasons)

    def _mig_try(self, i: int, label: str, reasons: dict[str, str], key: str, fn: Any, *args: Any) -> Any | None:
        """``fn(*args)``, or None with ``reasons[key]`` (``api_absent`` when ``fn`` is None)."""
        nvml = self._nvml
        if fn is None:
            reasons[key] = "api_absent"
            self._note(i, f"{label}.{key}", "api_absent")
            return None
        try:
            return fn(*args)
        except nvml.NVMLError as e:
            if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise _GpuLostError(self._reason(e)) from e
            reasons[key] = self._reason(e)
            self._note(i, f"{label}.{key}", reasons[key])
            if reasons[key] in _MIG_GONE and label.startswith("mig["):
                self._mig_stale.add(i)
            return None

    def _mig_slices_total(self, i: int, h: Any, reasons: dict[str, str]) -> int | None:
        """The GPU's slice count: the largest ``sliceCount`` of the GPU instance profiles it
        supports (its full-GPU profile). None with ``reasons["slices_total"]`` when unknown."""
        nvml = self._nvml
        fn = getattr(nvml, "nvmlDeviceGetGpuInstanceProfileInfo", None)
        profiles = sorted({v for n in dir(nvml) if _GI_PROFILE.fullmatch(n) and isinstance(v := getattr(nvml, n), int)})
        if fn is None or not profiles:
            reasons["slices_total"] = "api_absent"
            self._note(i, "mig.slices_total", "api_absent")
            return None
        best = 0
        reason = "no_profile_supported"
        version: tuple[int, ...] = ()  # pynvml's default: the v2 call (nvmlDeviceGetGpuInstanceProfileInfoV)
        for profile in profiles:
            try:
                try:
                    info = fn(h, profile, *version)
                except nvml.NVMLError as e:
                    if version or not self._is(e, "NVML_ERROR_FUNCTION_NOT_FOUND"):
                        raise
                    version = (1,)  # a driver older than the v2 call
                    info = fn(h, profile, *version)
            except nvml.NVMLError as e:
                if self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                    raise _GpuLostError(self._reason(e)) from e
                # NOT_SUPPORTED / INVALID_ARGUMENT: this GPU has no such profile, which is no error.
                if not (self._is(e, "NVML_ERROR_NOT_SUPPORTED") or self._is(e, "NVML_ERROR_INVALID_ARGUMENT")):
                    reason = self._reason(e)
                continue
            best = max(best, int(info.sliceCount))
        if best <= 0:
            reasons["slices_total"] = reason
            self._note(i, "mig.slices_total", reason)
            return None
        return best

    def _mig_gpm_sync(self, i: int, lay: _MigLayout) -> None:
        """GPM buffers for each GPU instance of ``lay`` (Hopper+); free those of vanished ones."""
        nvml = self._nvml
        want = {d.gi for d in lay.devices} if lay.enabled and i in self._gpm else set()
        if not hasattr(nvml, "nvmlGpmMigSampleGet"):
            want = set()
        for key in [k for k in self._mig_gpm if k[0] == i and k[1] not in want]:
            for buf in self._mig_gpm.pop(key).buffers:
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlGpmSampleFree(buf)
        for gi in sorted(want):
            if (i, gi) in self._mig_gpm:
                continue
            buffers: list[Any] = []
            try:
                while len(buffers) < 2:
                    buffers.append(nvml.nvmlGpmSampleAlloc())
            except nvml.NVMLError as e:
                for buf in buffers:
                    with contextlib.suppress(nvml.NVMLError):
                        nvml.nvmlGpmSampleFree(buf)
                self._note(i, f"mig[{gi}].gpm", self._reason(e))
                continue
            self._mig_gpm[(i, gi)] = _Gpm(buffers=(buffers[0], buffers[1]))

    def _mig_gpm_reason(self, i: int) -> str:
        if i not in self._gpm:
            return self._gpm_reason.get(i, "gpm_not_supported")
        if not hasattr(self._nvml, "nvmlGpmMigSampleGet"):
            return "gpm_api_absent"
        return "gpm_buffers_unavailable"

    def _mig_read(self, i: int, h: Any, un: dict[str, str]) -> _MigRead | None:
        """Each MIG device's memory and processes, and each GPU instance's GPM activity."""
        lay = self._mig_layout(i, h, un)
        if lay is None:
            return None
        nvml = self._nvml
        read = _MigRead(slices_total=lay.slices_total, reasons=dict(lay.reasons))
        # An instance that could not be enumerated may still run processes: the parent's
        # aggregate list is then read for them.
        read.partial = any(k == "instances" or k.startswith("instance[") for k in lay.reasons)
        gpm_by_gi: dict[int, tuple[dict[str, float], dict[str, str]]] = {}
        for d in lay.devices:
            iu = dict(d.reasons)
            mem = self._mig_try(i, d.label, iu, "mem_used_bytes", nvml.nvmlDeviceGetMemoryInfo, d.handle)
            total: int | None = None
            used: int | None = None
            if mem is None:
                iu["mem_total_bytes"] = iu["mem_used_bytes"]
            else:
                total, used = int(mem.total), int(mem.used)
                for key, v in (("mem_total_bytes", total), ("mem_used_bytes", used)):
                    if v == _NA_ULONGLONG:
                        iu[key] = "NVML_VALUE_NOT_AVAILABLE"
                        self._note(i, f"{d.label}.{key}", iu[key])
                total = None if "mem_total_bytes" in iu else total
                used = None if "mem_used_bytes" in iu else used
            procs = self._list_processes(i, d.handle, iu, "procs", f"{d.label}.procs")
            if procs is None:
                read.partial = True
            else:
                read.listed.extend((p, d.gi, d.ci) for p in procs)
            if d.gi not in gpm_by_gi:
                gu: dict[str, str] = {}
                state = self._mig_gpm.get((i, d.gi))
                if state is None:
                    reason = self._mig_gpm_reason(i)
                    for _, f, _ in _MIG_GPM_METRICS:
                        gu[f] = reason
                        self._note(i, f"mig[{d.gi}].{f}", reason)
                    values: dict[str, float] = {}
                else:
                    take = functools.partial(nvml.nvmlGpmMigSampleGet, h, d.gi)
                    values = self._gpm_read(i, state, take, _MIG_GPM_METRICS, gu, f"mig[{d.gi}].")
                gpm_by_gi[d.gi] = (values, gu)
            values, gu = gpm_by_gi[d.gi]
            iu.update(gu)
            read.instances.append((d, total, used, values, iu))
        return read

    # -- confidential computing ---------------------------------------------------------

    def cc_attestation(self, nonce: bytes) -> CcEvidence:
        """Each GPU's CC attestation report over ``nonce`` (32 bytes), or why there is none.

        nvmlSystemGetConfComputeState says whether CC is on; only then is
        nvmlDeviceGetConfComputeGpuAttestationReport asked, per GPU, and for each GPU that
        gave a report nvmlDeviceGetConfComputeGpuCertificate (its ``attestationCertChain``,
        the chain whose leaf signed the report). Never raises.
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
        chains: dict[int, bytes] = {}
        chain_unavailable: dict[int, str] = {}
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
            chain = self._cc_cert_chain(i, h)
            if isinstance(chain, bytes):
                chains[i] = chain
            else:
                chain_unavailable[i] = chain
        return CcEvidence(
            reports=reports,
            unavailable=unavailable,
            reason=None if reports else "no_gpu_attested",
            chains=chains,
            chain_unavailable=chain_unavailable,
        )

    def _cc_cert_chain(self, i: int, h: Any) -> bytes | str:
        """GPU ``i``'s attestation certificate chain as NVML gives it, or (a str) why there is none."""
        nvml = self._nvml
        if not hasattr(nvml, "nvmlDeviceGetConfComputeGpuCertificate"):
            return "cc_cert_api_absent"
        try:
            c = nvml.nvmlDeviceGetConfComputeGpuCertificate(h)
        except nvml.NVMLError as e:
            reason = self._reason(e)
        else:
            size = int(c.attestationCertChainSize)
            if 0 < size <= len(c.attestationCertChain):
                return bytes(c.attestationCertChain[:size])
            reason = f"cert_chain_size_{size}"
        self._note(i, "cc_cert_chain", reason)
        return reason

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
        for (i, gi), state in self._mig_gpm.items():
            for buf in state.buffers:
                try:
                    self._nvml.nvmlGpmSampleFree(buf)
                except self._nvml.NVMLError as e:
                    _logger.debug("GPU %d instance %d: nvmlGpmSampleFree failed: %s", i, gi, self._reason(e))
        self._mig_gpm.clear()
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
