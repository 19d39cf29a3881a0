"""agent.sources.nvml.NvmlSource against a hand-written fake NVML.

The fake raises the real ``pynvml.NVMLError_*`` classes and returns the real ctypes
structures where pynvml does, so the source is tested against NVML's actual error and data
shapes. Scenarios are named after the failure they reproduce (gpustat's convention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.sources.base import GpuSample, NodeSample, SourceError
from agent.sources.nodeio import NodeIo
from agent.sources.nvml import NvmlSource

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
SYS = Path(__file__).resolve().parents[2] / "fixtures" / "sys"
GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------------------
# The fake


@dataclass
class FakeProcessInfo:
    """What pynvml's nvmlDeviceGetComputeRunningProcesses_v3 returns per process."""

    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's field name
    gpuInstanceId: int = 0xFFFFFFFF  # noqa: N815
    computeInstanceId: int = 0xFFFFFFFF  # noqa: N815


@dataclass
class FakeAccounted:
    """One entry of NVML's accounting buffer (nvmlDeviceGetAccountingPids / GetAccountingStats)."""

    pid: int
    max_memory_bytes: int | None
    running: bool = False
    start_time_us: int = 1_700_000_000_000_000
    gpu_util_pct: int = 50


@dataclass
class FakeMig:
    """One MIG device: compute instance ``ci`` of GPU instance ``gi``, at handle index ``slot``."""

    slot: int
    gi: int
    ci: int
    slices: int
    uuid: str = ""
    mem_total: int = 10 * GIB
    mem_used: int = 0
    procs: list[FakeProcessInfo] = field(default_factory=list)  # as the MIG handle lists them
    gpm_values: dict[int, float] = field(default_factory=dict)  # per GPU instance (nvmlGpmMigSampleGet)
    errors: dict[str, int] = field(default_factory=dict)  # NVML function -> error on this MIG handle


# What nvmlDeviceGetGpuInstanceProfileInfo answers on an H100 80GB (profile -> sliceCount);
# every other profile is NVML_ERROR_NOT_SUPPORTED (nvidia-smi mig -lgip).
H100_GI_PROFILES = {
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE: 1,
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: 1,
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE: 2,
    pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE: 3,
    pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE: 4,
    pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE: 7,
}


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    serial: str = "1650123456789"
    mem_total: int = 81559 * MIB
    mem_used: int = 42 * GIB
    util_gpu: int = 87
    power_mw: int = 612_345
    energy_mj: int = 987_654_321
    enforced_limit_mw: int = 700_000
    management_limit_mw: int = 700_000
    procs: list[FakeProcessInfo] = field(default_factory=list)
    # (pid, timestamp in us, sm %) samples in NVML's process-utilisation buffer
    proc_util: list[tuple[int, int, int]] = field(default_factory=list)
    gpm_supported: bool = True
    gpm_values: dict[int, float] = field(default_factory=dict)
    # identity beyond UUID/serial/name
    pci_bus_id: str = "00000000:18:00.0"
    board_part_number: str = "692-2G520-0200-000"
    vbios_version: str = "96.00.74.00.0D"
    architecture: int = pynvml.NVML_DEVICE_ARCH_HOPPER
    mig_mode: tuple[int, int] = (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_DISABLE)
    mem_reserved: int = 527 * MIB
    # health
    temp_c: int = 47
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    throttle_mask: int = 0
    # (memory error type, counter type) -> count; absent pairs read 0
    ecc: dict[tuple[int, int], int] = field(default_factory=dict)
    retired_pages: dict[int, list[int]] = field(default_factory=dict)  # cause -> page addresses
    retired_pending: int = 0
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)  # corr, unc, pending, failure
    # Xid codes waiting in the GPU's event set
    xids: list[int] = field(default_factory=list)
    # MPS clients, accounting mode and its buffer
    mps_procs: list[FakeProcessInfo] = field(default_factory=list)
    accounting_mode: int = pynvml.NVML_FEATURE_ENABLED
    accounted: list[FakeAccounted] = field(default_factory=list)
    # NVML function name -> NVML_ERROR_* code it fails with
    errors: dict[str, int] = field(default_factory=dict)
    # The GPU falls off the bus after this many utilisation reads (None: never).
    lost_after_reads: int | None = None
    reads: int = 0
    # MIG: the MIG devices (with mig_mode enabled), the slots a handle may be asked for, and
    # the GPU instance profiles the GPU supports.
    migs: list[FakeMig] = field(default_factory=list)
    max_mig_devices: int = 7
    gi_profiles: dict[int, int] = field(default_factory=lambda: dict(H100_GI_PROFILES))
    gi_profiles_v2_missing: bool = False
    # NVLink throughput counters (nvmlDeviceGetFieldValues): field id -> KiB since the driver
    # loaded, and NVML's timestamp of the reading in us. None: the GPU has no NVLink (each
    # field answers NVML_ERROR_NOT_SUPPORTED).
    nvlink_kib: dict[int, int] | None = None
    nvlink_ts_us: int = 1_700_000_000_000_000


@dataclass(frozen=True)
class FakeHandle:
    index: int


@dataclass(frozen=True)
class FakeMigHandle:
    """A MIG device handle: the parent GPU's index and the MIG device's slot."""

    index: int
    slot: int


class FakeNvml:
    """The parts of pynvml that NvmlSource uses. Constants, error classes and ctypes
    structures are the real ones; functions behave like NVML on the scenario's GPUs."""

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None, without: tuple[str, ...] = ()) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML", "c_nvml", "nvmlEventType")) or name in ("nvmlMemory_v2",):
                setattr(self, name, getattr(pynvml, name))
        self.gpus = gpus
        self.driver_version = "550.54.15"
        self.cuda_driver_version = 12040
        self.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_DISABLED
        self.system_errors: dict[str, int] = {}  # system-wide NVML function -> error code
        self.event_sets: dict[int, FakeHandle | None] = {}  # event set id -> registered GPU
        self.event_sets_freed = 0
        self.init_error = init_error
        self.calls: list[tuple[str, Any]] = []
        self.initialised = 0
        self.shutdowns = 0
        self.gpm_allocated = 0
        self.gpm_freed = 0
        self._gpm_last: FakeGpu | FakeMig | None = None
        self._without = set(without)  # functions an older pynvml does not have

    def __getattribute__(self, name: str) -> Any:
        if name in object.__getattribute__(self, "__dict__").get("_without", ()):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    # helpers
    def _mig(self, fn: str, handle: FakeMigHandle) -> FakeMig:
        """The MIG device behind ``handle``; NVML_ERROR_INVALID_ARGUMENT once it is destroyed."""
        self.calls.append((fn, (handle.index, handle.slot)))
        gpu = self.gpus[handle.index]
        if gpu.lost_after_reads is not None and gpu.reads > gpu.lost_after_reads:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        found = [m for m in gpu.migs if m.slot == handle.slot]
        if not found:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if fn in found[0].errors:
            raise pynvml.NVMLError(found[0].errors[fn])
        return found[0]

    @staticmethod
    def _mig_on(gpu: FakeGpu) -> bool:
        return gpu.mig_mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE

    def _gpu(self, fn: str, handle: FakeHandle, *, counts_as_read: bool = False) -> FakeGpu:
        self.calls.append((fn, handle.index))
        gpu = self.gpus[handle.index]
        if counts_as_read:
            gpu.reads += 1
        if gpu.lost_after_reads is not None and gpu.reads > gpu.lost_after_reads:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.errors:
            raise pynvml.NVMLError(gpu.errors[fn])
        return gpu

    # lifecycle
    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:  # noqa: N802
        if "nvmlDeviceGetHandleByIndex" in self.gpus[index].errors:
            raise pynvml.NVMLError(self.gpus[index].errors["nvmlDeviceGetHandleByIndex"])
        return FakeHandle(index)

    # identity
    def nvmlDeviceGetUUID(self, h: FakeHandle | FakeMigHandle) -> str:  # noqa: N802
        if isinstance(h, FakeMigHandle):
            return self._mig("nvmlDeviceGetUUID", h).uuid
        return self._gpu("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetSerial(self, h: FakeHandle) -> str:  # noqa: N802
        return self._gpu("nvmlDeviceGetSerial", h).serial

    def nvmlDeviceGetName(self, h: FakeHandle) -> str:  # noqa: N802
        return self._gpu("nvmlDeviceGetName", h).name

    def nvmlDeviceGetMemoryInfo(self, h: FakeHandle | FakeMigHandle, version: int | None = None) -> Any:  # noqa: N802
        if isinstance(h, FakeMigHandle):
            m = self._mig("nvmlDeviceGetMemoryInfo", h)
            return pynvml.c_nvmlMemory_t(total=m.mem_total, free=m.mem_total - m.mem_used, used=m.mem_used)
        g = self._gpu("nvmlDeviceGetMemoryInfo", h)
        if version:
            assert version == pynvml.nvmlMemory_v2, "the v2 call needs the struct version"
            free = g.mem_total - g.mem_used - g.mem_reserved
            return pynvml.c_nvmlMemory_v2_t(
                version=version, total=g.mem_total, reserved=g.mem_reserved, free=free, used=g.mem_used
            )
        return pynvml.c_nvmlMemory_t(total=g.mem_total, free=g.mem_total - g.mem_used, used=g.mem_used)

    def nvmlDeviceGetPciInfo(self, h: FakeHandle) -> Any:  # noqa: N802
        info = pynvml.nvmlPciInfo_t()
        info.busId = self._gpu("nvmlDeviceGetPciInfo", h).pci_bus_id.encode()
        return info

    def nvmlDeviceGetBoardPartNumber(self, h: FakeHandle) -> str:  # noqa: N802
        return self._gpu("nvmlDeviceGetBoardPartNumber", h).board_part_number

    def nvmlDeviceGetVbiosVersion(self, h: FakeHandle) -> str:  # noqa: N802
        return self._gpu("nvmlDeviceGetVbiosVersion", h).vbios_version

    def nvmlDeviceGetArchitecture(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetArchitecture", h).architecture

    def nvmlDeviceGetMigMode(self, h: FakeHandle) -> list[int]:  # noqa: N802
        return list(self._gpu("nvmlDeviceGetMigMode", h).mig_mode)

    # MIG
    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeHandle) -> int:  # noqa: N802
        g = self._gpu("nvmlDeviceGetMaxMigDeviceCount", h)
        return g.max_mig_devices if self._mig_on(g) else 0  # "zero if MIG is not supported or enabled"

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeHandle, index: int) -> FakeMigHandle:  # noqa: N802
        g = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", h)
        if not self._mig_on(g) or index >= g.max_mig_devices:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not any(m.slot == index for m in g.migs):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)  # an empty slot
        return FakeMigHandle(h.index, index)

    def nvmlDeviceGetGpuInstanceId(self, h: FakeMigHandle) -> int:  # noqa: N802
        return self._mig("nvmlDeviceGetGpuInstanceId", h).gi

    def nvmlDeviceGetComputeInstanceId(self, h: FakeMigHandle) -> int:  # noqa: N802
        return self._mig("nvmlDeviceGetComputeInstanceId", h).ci

    def nvmlDeviceGetAttributes(self, h: FakeHandle | FakeMigHandle) -> Any:  # noqa: N802
        if not isinstance(h, FakeMigHandle):  # "This API currently only supports MIG device handles."
            self._gpu("nvmlDeviceGetAttributes", h)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        m = self._mig("nvmlDeviceGetAttributes", h)
        return pynvml.c_nvmlDeviceAttributes(
            multiprocessorCount=16 * m.slices,
            gpuInstanceSliceCount=m.slices,
            computeInstanceSliceCount=m.slices,
            memorySizeMB=m.mem_total // MIB,
        )

    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: FakeHandle, profile: int, version: int = 2) -> Any:  # noqa: N802
        g = self._gpu("nvmlDeviceGetGpuInstanceProfileInfo", h)
        self.calls.append(("profile_info_version", version))
        if version == 2 and g.gi_profiles_v2_missing:  # a driver without nvmlDeviceGetGpuInstanceProfileInfoV
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if profile not in g.gi_profiles:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id = profile
        info.sliceCount = g.gi_profiles[profile]
        return info

    def nvmlGpmMigSampleGet(self, h: FakeHandle, gpu_instance_id: int, sample: Any) -> Any:  # noqa: N802
        g = self._gpu("nvmlGpmMigSampleGet", h)
        found = [m for m in g.migs if m.gi == gpu_instance_id]
        if not found:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._gpm_last = found[0]
        return sample

    # NVLink counters
    def nvmlDeviceGetFieldValues(self, h: FakeHandle, field_ids: list[Any]) -> Any:  # noqa: N802
        g = self._gpu("nvmlDeviceGetFieldValues", h)
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for k, spec in enumerate(field_ids):
            fid, scope = spec if isinstance(spec, tuple) else (spec, 0)
            v = values[k]
            v.fieldId, v.scopeId = fid, scope
            self.calls.append(("field", (fid, scope)))
            if g.nvlink_kib is None or fid not in g.nvlink_kib:
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            v.nvmlReturn = pynvml.NVML_SUCCESS
            v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            v.value.ullVal = g.nvlink_kib[fid]
            v.timestamp = g.nvlink_ts_us
        return values

    def _system(self, fn: str) -> None:
        self.calls.append((fn, None))
        if fn in self.system_errors:
            raise pynvml.NVMLError(self.system_errors[fn])

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._system("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        self._system("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlSystemGetConfComputeState(self) -> Any:  # noqa: N802
        self._system("nvmlSystemGetConfComputeState")
        return pynvml.c_nvmlConfComputeSystemState_t(environment=0, ccFeature=self.cc_feature, devToolsMode=0)

    # health
    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:  # noqa: N802
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu("nvmlDeviceGetTemperature", h).temp_c

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock: int) -> int:  # noqa: N802
        g = self._gpu("nvmlDeviceGetClockInfo", h)
        return {pynvml.NVML_CLOCK_SM: g.sm_clock_mhz, pynvml.NVML_CLOCK_MEM: g.mem_clock_mhz}[clock]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", h).throttle_mask

    def nvmlDeviceGetTotalEccErrors(self, h: FakeHandle, error_type: int, counter_type: int) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetTotalEccErrors", h).ecc.get((error_type, counter_type), 0)

    def nvmlDeviceGetRetiredPages(self, h: FakeHandle, cause: int) -> list[int]:  # noqa: N802
        return list(self._gpu("nvmlDeviceGetRetiredPages", h).retired_pages.get(cause, []))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetRetiredPagesPendingStatus", h).retired_pending

    def nvmlDeviceGetRemappedRows(self, h: FakeHandle) -> tuple[int, int, int, int]:  # noqa: N802
        return self._gpu("nvmlDeviceGetRemappedRows", h).remapped_rows

    # events
    def nvmlEventSetCreate(self) -> int:  # noqa: N802
        key = len(self.event_sets) + 1
        self.event_sets[key] = None
        return key

    def nvmlDeviceRegisterEvents(self, h: FakeHandle, event_types: int, event_set: int) -> None:  # noqa: N802
        self._gpu("nvmlDeviceRegisterEvents", h)
        assert event_types == pynvml.nvmlEventTypeXidCriticalError
        self.event_sets[event_set] = h

    def nvmlEventSetWait_v2(self, event_set: int, timeout_ms: int) -> Any:  # noqa: N802
        assert timeout_ms == 0, "the sampling path must never wait for events"
        h = self.event_sets[event_set]
        assert h is not None
        g = self._gpu("nvmlEventSetWait_v2", h)
        if not g.xids:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return pynvml.c_nvmlEventData_t(
            eventType=pynvml.nvmlEventTypeXidCriticalError,
            eventData=g.xids.pop(0),
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        )

    def nvmlEventSetFree(self, event_set: int) -> None:  # noqa: N802
        self.event_sets_freed += 1

    # MPS and accounting
    def nvmlDeviceGetMPSComputeRunningProcesses_v3(self, h: FakeHandle) -> list[FakeProcessInfo]:  # noqa: N802
        return list(self._gpu("nvmlDeviceGetMPSComputeRunningProcesses_v3", h).mps_procs)

    def nvmlDeviceGetAccountingMode(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetAccountingMode", h).accounting_mode

    def nvmlDeviceGetAccountingPids(self, h: FakeHandle) -> list[int]:  # noqa: N802
        g = self._gpu("nvmlDeviceGetAccountingPids", h)
        if g.accounting_mode != pynvml.NVML_FEATURE_ENABLED:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [a.pid for a in g.accounted]

    def nvmlDeviceGetAccountingStats(self, h: FakeHandle, pid: int) -> Any:  # noqa: N802
        g = self._gpu("nvmlDeviceGetAccountingStats", h)
        self.calls.append(("accounting_pid", pid))
        for a in g.accounted:
            if a.pid == pid:
                stats = pynvml.c_nvmlAccountingStats_t(
                    gpuUtilization=a.gpu_util_pct,
                    memoryUtilization=10,
                    maxMemoryUsage=a.max_memory_bytes or 0,
                    time=1500,
                    startTime=a.start_time_us,
                    isRunning=1 if a.running else 0,
                )
                if a.max_memory_bytes is None:
                    stats.maxMemoryUsage = None  # pynvml's own translation of NVML_VALUE_NOT_AVAILABLE
                return stats
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", h).enforced_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetPowerManagementLimit", h).management_limit_mw

    # telemetry
    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> Any:  # noqa: N802
        g = self._gpu("nvmlDeviceGetUtilizationRates", h, counts_as_read=True)
        if self._mig_on(g):  # "On MIG-enabled GPUs, querying device utilization rates is not currently supported."
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlUtilization_t(gpu=g.util_gpu, memory=30)

    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetPowerUsage", h).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: FakeHandle | FakeMigHandle) -> list[FakeProcessInfo]:  # noqa: N802
        if isinstance(h, FakeMigHandle):
            m = self._mig("nvmlDeviceGetComputeRunningProcesses_v3", h)
            return [FakeProcessInfo(p.pid, p.usedGpuMemory, m.gi, m.ci) for p in m.procs]
        g = self._gpu("nvmlDeviceGetComputeRunningProcesses_v3", h)
        if self._mig_on(g) and not g.procs:
            # In MIG mode the parent handle gives the aggregate of every instance (to root).
            return [FakeProcessInfo(p.pid, p.usedGpuMemory, m.gi, m.ci) for m in g.migs for p in m.procs]
        return list(g.procs)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: FakeHandle) -> list[FakeProcessInfo]:  # noqa: N802
        return list(self._gpu("nvmlDeviceGetComputeRunningProcesses_v2", h).procs)

    def nvmlDeviceGetProcessUtilization(self, h: FakeHandle, last_seen: int) -> list[Any]:  # noqa: N802
        g = self._gpu("nvmlDeviceGetProcessUtilization", h)
        self.calls.append(("last_seen", last_seen))
        out = [
            pynvml.c_nvmlProcessUtilizationSample_t(pid=pid, timeStamp=ts, smUtil=sm, memUtil=0, encUtil=0, decUtil=0)
            for pid, ts, sm in g.proc_util
            if ts > last_seen
        ]
        if not out:  # NVML: "If no valid sample entries are found since lastSeenTimeStamp"
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return out

    # GPM
    def nvmlGpmQueryDeviceSupport(self, h: FakeHandle) -> Any:  # noqa: N802
        g = self._gpu("nvmlGpmQueryDeviceSupport", h)
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if g.gpm_supported else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:  # noqa: N802
        self.gpm_allocated += 1
        return pynvml.c_nvmlGpmSample_t()

    def nvmlGpmSampleFree(self, sample: Any) -> None:  # noqa: N802
        self.gpm_freed += 1

    def nvmlGpmSampleGet(self, h: FakeHandle, sample: Any) -> Any:  # noqa: N802
        self._gpm_last = self._gpu("nvmlGpmSampleGet", h)
        return sample

    def nvmlGpmMetricsGet(self, request: Any) -> Any:  # noqa: N802
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION, "the request must carry the struct version"
        assert self._gpm_last is not None, "nvmlGpmSampleGet must come before nvmlGpmMetricsGet"
        for k in range(request.numMetrics):
            m = request.metrics[k]
            if m.metricId in self._gpm_last.gpm_values:
                m.value = self._gpm_last.gpm_values[m.metricId]
                m.nvmlReturn = pynvml.NVML_SUCCESS
            else:
                m.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return request


H100_GPM = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 71.5,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 42.25,
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: 1024.0,
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: 512.0,
    pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 2.0,
    pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 4.0,
}


def _h100(i: int, **kw: Any) -> FakeGpu:
    return FakeGpu(
        uuid=f"GPU-5fd2a8c0-0000-4000-8000-00000000000{i}",
        serial=f"16501234567{i:02d}",
        gpm_values=dict(H100_GPM),
        **kw,
    )


def scenario_h100_healthy() -> FakeNvml:
    """Two H100s; GPU 0 runs the Kubernetes trainer (PID 4242) and the besteffort pod (9191)."""
    gpu0 = _h100(
        0,
        procs=[FakeProcessInfo(4242, 40 * GIB), FakeProcessInfo(9191, 2 * GIB)],
        proc_util=[(4242, 1_000_000, 90), (4242, 1_166_000, 80), (9191, 1_100_000, 5)],
    )
    return FakeNvml([gpu0, _h100(1)])


def scenario_energy_not_supported() -> FakeNvml:
    """A Pascal GPU: no total-energy counter (Volta+), no GPM (Hopper+)."""
    p100 = FakeGpu(
        name="Tesla P100-PCIE-16GB",
        mem_total=16280 * MIB,
        enforced_limit_mw=250_000,
        gpm_supported=False,
        errors={"nvmlDeviceGetTotalEnergyConsumption": pynvml.NVML_ERROR_NOT_SUPPORTED},
    )
    return FakeNvml([p100])


def scenario_gpu_is_lost() -> FakeNvml:
    """Eight H100s; GPU 3 falls off the bus ("GPU has fallen off the bus", Xid 79) after its first read."""
    gpus = [_h100(i) for i in range(8)]
    gpus[3].lost_after_reads = 1
    return FakeNvml(gpus)


def scenario_nonexistent_pid() -> FakeNvml:
    """NVML lists PID 31337, which exits before its /proc entry is read."""
    return FakeNvml([_h100(0, procs=[FakeProcessInfo(4242, 40 * GIB), FakeProcessInfo(31337, 1 * GIB)])])


def scenario_driver_not_loaded() -> FakeNvml:
    """libnvidia-ml.so is installed but the kernel module is not loaded."""
    return FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


def scenario_library_not_found() -> FakeNvml:
    """No NVIDIA driver on the node at all (or the container lacks the toolkit's mounts)."""
    return FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def scenario_process_memory_not_available() -> FakeNvml:
    """usedGpuMemory is NVML_VALUE_NOT_AVAILABLE (pynvml turns it into None): e.g. MIG without permission."""
    return FakeNvml([_h100(0, procs=[FakeProcessInfo(4242, None)])])


def scenario_old_driver_without_v3() -> FakeNvml:
    """A driver older than the _v3 process list: the call is not found in libnvidia-ml."""
    gpu = _h100(0, procs=[FakeProcessInfo(4242, 40 * GIB)])
    gpu.errors["nvmlDeviceGetComputeRunningProcesses_v3"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    return FakeNvml([gpu])


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _source(fake: FakeNvml, **kw: Any) -> NvmlSource:
    return NvmlSource(fake, proc_root=PROC, clock=Clock(), **kw)


def _gpu(sample: NodeSample, index: int) -> GpuSample:
    found = [g for g in sample.gpus if g.index == index]
    assert found, f"GPU {index} missing from the sample; unavailable={sample.unavailable}"
    return found[0]


# ---------------------------------------------------------------------------
# Tests


def test_h100_devices() -> None:
    src = _source(scenario_h100_healthy())
    devs = src.devices()
    assert [d.index for d in devs] == [0, 1]
    d = devs[0]
    assert (d.uuid, d.serial, d.model) == (
        "GPU-5fd2a8c0-0000-4000-8000-000000000000",
        "1650123456700",
        "NVIDIA H100 80GB HBM3",
    )
    assert d.mem_total_bytes == 81559 * MIB, "total memory is in bytes"
    assert d.power_limit_mw == 700_000, "the enforced power limit, in mW"
    assert d.unavailable == {}, f"a healthy H100 must have every device field: {d.unavailable}"


def test_h100_sample_values_and_units() -> None:
    fake = scenario_h100_healthy()
    s = _source(fake).sample()
    assert s.unavailable == {}, f"no GPU or node field should be missing: {s.unavailable}"
    assert s.t == 1_700_000_001.0, "t comes from the injected clock"
    g = _gpu(s, 0)
    assert (g.util_pct, g.mem_used_bytes, g.power_mw, g.energy_mj) == (87.0, 42 * GIB, 612_345, 987_654_321)
    procs = {p.pid: p for p in g.procs}
    assert set(procs) == {4242, 9191}
    assert procs[4242].mem_bytes == 40 * GIB
    assert procs[4242].start_time_ticks == 123456, "start time is field 22 of the fixture's /proc/4242/stat"
    assert procs[4242].sm_pct == pytest.approx(85.0), "SM % is the mean of NVML's samples since the last call"
    assert procs[9191].sm_pct == pytest.approx(5.0)
    assert procs[4242].attribution is None, "the NVML source leaves attribution to agent.attribution"
    assert _gpu(s, 1).procs == ()


def test_gpm_needs_two_samples_then_reports_sm_and_tensor_activity() -> None:
    src = _source(scenario_h100_healthy())
    first = _gpu(src.sample(), 0)
    assert first.sm_active_pct is None and first.unavailable.get("sm_active_pct") == "first_sample"
    second = _gpu(src.sample(), 0)
    assert second.sm_active_pct == pytest.approx(71.5)
    assert second.tensor_active_pct == pytest.approx(42.25)
    assert second.nvlink_tx_bytes_per_s == 1024.0 * MIB, "GPM gives MiB/s; the sample holds bytes/s"
    assert second.nvlink_rx_bytes_per_s == 512.0 * MIB
    assert (second.pcie_tx_bytes_per_s, second.pcie_rx_bytes_per_s) == (2.0 * MIB, 4.0 * MIB)
    assert second.unavailable == {}, second.unavailable


def test_gpm_metric_the_driver_does_not_support() -> None:
    fake = scenario_h100_healthy()
    del fake.gpus[0].gpm_values[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC]
    src = _source(fake)
    src.sample()
    g = _gpu(src.sample(), 0)
    assert g.nvlink_tx_bytes_per_s is None
    assert g.unavailable == {"nvlink_tx_bytes_per_s": "NVML_ERROR_NOT_SUPPORTED"}
    assert g.sm_active_pct == pytest.approx(71.5), "one unsupported metric must not hide the others"


def test_process_utilisation_remembers_the_last_timestamp() -> None:
    fake = scenario_h100_healthy()
    src = _source(fake)
    src.sample()
    g = _gpu(src.sample(), 0)  # no samples newer than 1_166_000: NVML says NOT_FOUND
    seen = [arg for name, arg in fake.calls if name == "last_seen"]
    assert seen[:2] == [0, 1_166_000], f"the second query must start after the newest sample seen: {seen}"
    assert all(p.sm_pct is None for p in g.procs), "no new samples: SM % is not measured, not 0"
    assert "procs.sm_pct" not in g.unavailable, "NOT_FOUND means 'no new samples', which is not a failure"


def test_energy_not_supported_is_unavailable_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    src = _source(scenario_energy_not_supported())
    samples = [src.sample() for _ in range(5)]
    g = _gpu(samples[-1], 0)
    assert g.energy_mj is None, "an unsupported counter must be None, never 0"
    assert g.unavailable["energy_mj"] == "NVML_ERROR_NOT_SUPPORTED"
    assert g.power_mw == 612_345, "other fields are still read"
    for f in ("sm_active_pct", "tensor_active_pct", "pcie_rx_bytes_per_s"):
        assert g.unavailable[f] == "gpm_not_supported", f"{f}: a Pascal GPU has no GPM"
    assert g.unavailable["nvlink_tx_bytes_per_s"] == "NVML_ERROR_NOT_SUPPORTED", (
        "without GPM the NVLink counters are asked for; a PCIe P100 has none"
    )
    energy_logs = [r for r in caplog.records if "energy_mj" in r.getMessage()]
    assert len(energy_logs) == 1, f"a recurring failure must be logged once, got {len(energy_logs)} in 5 samples"
    assert src.devices()[0].model == "Tesla P100-PCIE-16GB"


def test_one_lost_gpu_of_eight_is_left_out_and_the_rest_sampled(caplog: pytest.LogCaptureFixture) -> None:
    src = _source(scenario_gpu_is_lost())
    before = src.sample()
    assert [g.index for g in before.gpus] == list(range(8)), "all 8 GPUs are read before the loss"
    after = [src.sample() for _ in range(3)]
    for s in after:
        assert [g.index for g in s.gpus] == [0, 1, 2, 4, 5, 6, 7], "GPU 3 is lost; the other 7 must still be read"
        assert s.unavailable == {"gpu[3]": "NVML_ERROR_GPU_IS_LOST"}
        assert all(g.power_mw == 612_345 for g in s.gpus), "no lost-GPU placeholder values may appear"
    lost_logs = [r for r in caplog.records if "GPU 3" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lost_logs) == 1, f"the lost GPU must be logged once, got {len(lost_logs)}"
    assert [d.index for d in src.devices()] == [0, 1, 2, 4, 5, 6, 7]


def test_process_that_exited_before_the_proc_read() -> None:
    g = _gpu(_source(scenario_nonexistent_pid()).sample(), 0)
    procs = {p.pid: p for p in g.procs}
    assert set(procs) == {4242, 31337}, "the exited process used GPU memory: it must stay in the sample"
    assert procs[31337].start_time_ticks is None and procs[31337].mem_bytes == 1 * GIB
    assert procs[4242].start_time_ticks == 123456
    assert g.unavailable["procs.start_time_ticks"] == "proc_unreadable"


def test_process_memory_not_available_is_none_not_zero() -> None:
    g = _gpu(_source(scenario_process_memory_not_available()).sample(), 0)
    assert g.procs[0].mem_bytes is None, "NVML_VALUE_NOT_AVAILABLE must not become 0 bytes"
    assert g.unavailable["procs.mem_bytes"] == "NVML_VALUE_NOT_AVAILABLE"


def test_raw_sentinels_are_not_readings() -> None:
    fake = FakeNvml([_h100(0, procs=[FakeProcessInfo(4242, 2**64 - 1)])])
    fake.gpus[0].power_mw = 2**32 - 1  # (unsigned int)-1
    g = _gpu(_source(fake).sample(), 0)
    assert g.power_mw is None and g.unavailable["power_mw"] == "NVML_VALUE_NOT_AVAILABLE"
    assert g.procs[0].mem_bytes is None


def test_old_driver_falls_back_to_v2_process_list() -> None:
    fake = scenario_old_driver_without_v3()
    src = _source(fake)
    for _ in range(2):
        g = _gpu(src.sample(), 0)
        assert [p.pid for p in g.procs] == [4242] and "procs" not in g.unavailable
    names = [name for name, _ in fake.calls if name.startswith("nvmlDeviceGetComputeRunningProcesses")]
    assert names == [
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses_v2",
    ], "v3 is tried once; afterwards the source remembers v2 works"


def test_process_list_failure_is_recorded_not_empty() -> None:
    fake = scenario_h100_healthy()
    fake.gpus[0].errors["nvmlDeviceGetComputeRunningProcesses_v3"] = pynvml.NVML_ERROR_NO_PERMISSION
    g = _gpu(_source(fake).sample(), 0)
    assert g.procs == () and g.unavailable["procs"] == "NVML_ERROR_NO_PERMISSION", (
        "an empty process list must be distinguishable from one that could not be read"
    )


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [(scenario_driver_not_loaded, "kernel driver is not loaded"), (scenario_library_not_found, "libnvidia-ml.so.1")],
)
def test_no_driver_is_a_source_error_with_a_remedy(scenario: Any, needle: str) -> None:
    with pytest.raises(SourceError) as info:
        NvmlSource(scenario())
    text = info.value.diagnostics()
    assert needle in text, text
    assert "nvidia-smi" in text, f"the remedy must tell a person how to check the driver: {text}"
    assert isinstance(info.value.__cause__, pynvml.NVMLError), "the NVML error is kept as the cause"


def test_power_limit_falls_back_then_is_unavailable() -> None:
    fake = scenario_h100_healthy()
    fake.gpus[0].errors["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[0].management_limit_mw = 650_000
    fake.gpus[1].errors["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].errors["nvmlDeviceGetPowerManagementLimit"] = pynvml.NVML_ERROR_NO_PERMISSION
    d0, d1 = _source(fake).devices()
    assert d0.power_limit_mw == 650_000 and d0.unavailable == {}
    assert d1.power_limit_mw is None and d1.unavailable == {"power_limit_mw": "NVML_ERROR_NOT_SUPPORTED"}


def test_serial_not_supported_on_consumer_gpu() -> None:
    fake = FakeNvml([FakeGpu(name="NVIDIA GeForce RTX 4090", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceGetSerial"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    (d,) = _source(fake).devices()
    assert d.serial is None and d.unavailable == {"serial": "NVML_ERROR_NOT_SUPPORTED"}


def test_gpu_that_cannot_be_opened_at_start() -> None:
    fake = scenario_h100_healthy()
    fake.gpus[1].errors["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_NO_PERMISSION
    src = _source(fake)
    s = src.sample()
    assert [g.index for g in s.gpus] == [0]
    assert s.unavailable == {"gpu[1]": "NVML_ERROR_NO_PERMISSION"}
    assert [d.index for d in src.devices()] == [0]


def test_pynvml_without_gpm_api() -> None:
    fake = FakeNvml([_h100(0)], without=("nvmlGpmQueryDeviceSupport",))
    g = _gpu(_source(fake).sample(), 0)
    assert g.sm_active_pct is None and g.unavailable["sm_active_pct"] == "gpm_api_absent"


def test_node_io_is_merged_into_the_sample() -> None:
    class NoPsutil:
        def net_io_counters(self, pernic: bool = False) -> dict[str, Any]:
            return {}

        def disk_io_counters(self, perdisk: bool = False) -> dict[str, Any]:
            return {}

    src = _source(scenario_h100_healthy(), node_io=NodeIo(SYS, psutil_module=NoPsutil()))
    s = src.sample()
    assert s.node_io is not None
    assert s.unavailable["node_io.ib_tx_bytes_per_s"] == "first_sample"


def test_close_frees_gpm_and_shuts_down_once() -> None:
    fake = scenario_h100_healthy()
    src = _source(fake)
    src.sample()
    src.close()
    src.close()
    assert fake.shutdowns == 1, "nvmlShutdown must be called exactly once"
    assert fake.gpm_freed == fake.gpm_allocated == 4, "two GPM buffers per H100, all freed"
    with pytest.raises(SourceError, match="after close"):
        src.sample()


def test_real_pynvml_without_a_driver_is_a_source_error() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver; tests/gpu covers it")
    with pytest.raises(SourceError) as info:
        NvmlSource()  # the default: import the real pynvml lazily
    assert "nvidia-smi" in info.value.diagnostics()


# ---------------------------------------------------------------------------
# Identity, health, Xid events, MPS, accounting, PID namespaces (issue 3)


def scenario_xid_79_then_quiet() -> FakeNvml:
    """An H100 reports Xid 79 (fallen off the bus, recovered by reset) and Xid 48 (DBE)."""
    gpu = _h100(0)
    gpu.xids = [79, 48]
    return FakeNvml([gpu])


def scenario_hami_core_112_pid_namespaces() -> FakeNvml:
    """Driver 560.35.03 in a container (HAMi-core #112): the process list gives the container
    PID 324, the utilisation samples the host PID 645400 of the same process."""
    gpu = _h100(0, procs=[FakeProcessInfo(324, 8 * GIB)], proc_util=[(645400, 1_000_000, 13)])
    return FakeNvml([gpu])


def scenario_short_job_between_samples() -> FakeNvml:
    """Accounting mode on: PID 5151 ran for 1.5 s between two samples and is gone; 4242 runs."""
    gpu = _h100(0, procs=[FakeProcessInfo(4242, 40 * GIB)])
    gpu.accounted = [FakeAccounted(4242, 40 * GIB, running=True), FakeAccounted(5151, 3 * GIB)]
    return FakeNvml([gpu])


def scenario_mps_clients() -> FakeNvml:
    """MPS: the compute list shows the MPS server (4242); the clients are 6161 and 7171."""
    gpu = _h100(0, procs=[FakeProcessInfo(4242, 1 * GIB)])
    gpu.mps_procs = [FakeProcessInfo(6161, 5 * GIB), FakeProcessInfo(7171, 6 * GIB)]
    return FakeNvml([gpu])


def test_identity_fields_of_an_h100() -> None:
    (d, _) = _source(scenario_h100_healthy()).devices()
    assert d.identity == {
        "pci_bus_id": "00000000:18:00.0",
        "board_part_number": "692-2G520-0200-000",
        "vbios_version": "96.00.74.00.0D",
        "architecture": "hopper",
        "mig_mode": "disabled",
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "cc_mode": "off",
    }
    assert d.mem_reserved_bytes == 527 * MIB


@pytest.mark.parametrize(
    ("fn", "key"),
    [
        ("nvmlDeviceGetBoardPartNumber", "identity.board_part_number"),
        ("nvmlDeviceGetMigMode", "identity.mig_mode"),
        ("nvmlDeviceGetVbiosVersion", "identity.vbios_version"),
    ],
)
def test_identity_field_not_supported_is_named(fn: str, key: str) -> None:
    fake = FakeNvml([FakeGpu(name="NVIDIA GeForce RTX 4090", gpm_supported=False)])
    fake.gpus[0].errors[fn] = pynvml.NVML_ERROR_NOT_SUPPORTED
    (d,) = _source(fake).devices()
    assert d.unavailable == {key: "NVML_ERROR_NOT_SUPPORTED"}
    assert key.removeprefix("identity.") not in d.identity, "an unreadable identity field must be absent, not ''"


def test_confidential_computing_on_and_old_pynvml_without_cc_api() -> None:
    fake = scenario_h100_healthy()
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    assert _source(fake).devices()[0].identity["cc_mode"] == "on"
    old = FakeNvml([_h100(0)], without=("nvmlSystemGetConfComputeState",))
    (d,) = _source(old).devices()
    assert "cc_mode" not in d.identity and d.unavailable["identity.cc_mode"] == "api_absent"


def test_health_readings_and_ecc_counters() -> None:
    fake = scenario_h100_healthy()
    g0 = fake.gpus[0]
    g0.throttle_mask = pynvml.nvmlClocksThrottleReasonSwPowerCap
    g0.ecc = {(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 12}
    g0.remapped_rows = (3, 1, 0, 0)
    h = _gpu(_source(fake).sample(), 0).health
    assert h["temp_gpu_c"] == 47 and h["sm_clock_mhz"] == 1980 and h["mem_clock_mhz"] == 2619
    assert h["throttle_reasons_mask"] == pynvml.nvmlClocksThrottleReasonSwPowerCap
    assert h["ecc_aggregate_corrected"] == 12 and h["ecc_volatile_uncorrected"] == 0
    assert (h["remapped_rows_correctable"], h["remapped_rows_uncorrectable"]) == (3, 1)
    assert h["retired_pages_sbe"] == 0 and h["retired_pages_pending"] == 0


def test_hopper_has_no_retired_pages_and_consumer_gpu_no_ecc() -> None:
    fake = FakeNvml([_h100(0), FakeGpu(name="NVIDIA GeForce RTX 4090", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceGetRetiredPages"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].errors["nvmlDeviceGetTotalEccErrors"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].errors["nvmlDeviceGetRemappedRows"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    s = _source(fake).sample()
    h100, rtx = _gpu(s, 0), _gpu(s, 1)
    assert "retired_pages_sbe" not in h100.health and h100.unavailable["health.retired_pages_sbe"] == (
        "NVML_ERROR_NOT_SUPPORTED"
    )
    assert "ecc_volatile_uncorrected" not in rtx.health, "no ECC must not read as 0 errors"
    assert rtx.unavailable["health.ecc_volatile_uncorrected"] == "NVML_ERROR_NOT_SUPPORTED"
    assert rtx.unavailable["health.remapped_rows_failure"] == "NVML_ERROR_NOT_SUPPORTED"


def test_slow_counters_are_read_every_tenth_sample() -> None:
    fake = scenario_h100_healthy()
    src = _source(fake)
    for _ in range(11):
        src.sample()
    reads = [h for name, h in fake.calls if name == "nvmlDeviceGetRemappedRows" and h == 0]
    assert len(reads) == 2, f"remapped rows read at samples 1 and 11, got {len(reads)} reads"


def test_xid_events_are_drained_without_waiting() -> None:
    fake = scenario_xid_79_then_quiet()
    src = _source(fake)
    first = _gpu(src.sample(), 0)
    assert first.events == (("xid", "Xid 79"), ("xid", "Xid 48"))
    assert _gpu(src.sample(), 0).events == (), "events are reported once"
    src.close()
    assert fake.event_sets_freed == 1


def test_xid_registration_not_supported_is_noted() -> None:
    fake = FakeNvml([FakeGpu(name="Tesla P100-PCIE-16GB", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceRegisterEvents"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    g = _gpu(_source(fake).sample(), 0)
    assert g.events == () and g.unavailable["xid_events"] == "NVML_ERROR_NOT_SUPPORTED"


def test_mps_clients_are_listed_beside_the_server() -> None:
    g = _gpu(_source(scenario_mps_clients()).sample(), 0)
    via = {p.pid: p.via for p in g.procs}
    assert via == {4242: "compute", 6161: "mps", 7171: "mps"}
    assert {p.pid: p.mem_bytes for p in g.procs}[7171] == 6 * GIB


def test_accounting_catches_a_process_that_lived_between_samples() -> None:
    fake = scenario_short_job_between_samples()
    src = _source(fake)
    g = _gpu(src.sample(), 0)
    short = [p for p in g.procs if p.via == "accounting"]
    assert [(p.pid, p.mem_bytes, p.suspect) for p in short] == [(5151, 3 * GIB, "exited_before_sample")]
    assert [p.pid for p in g.procs if p.via == "compute"] == [4242], "the running process is not doubled"
    g2 = _gpu(src.sample(), 0)
    assert [p.pid for p in g2.procs] == [4242], "a finished process is reported once"
    asked = [pid for name, pid in fake.calls if name == "accounting_pid"]
    assert asked == [5151], f"stats are asked once per new PID, never for listed ones: {asked}"


def test_node_blind_spots_accounting_off_and_no_gpm() -> None:
    fake = FakeNvml([_h100(0), FakeGpu(name="NVIDIA A100-SXM4-80GB", gpm_supported=False)])
    fake.gpus[0].accounting_mode = pynvml.NVML_FEATURE_DISABLED
    fake.gpus[1].accounting_mode = pynvml.NVML_FEATURE_DISABLED
    s = _source(fake).sample()
    assert s.unavailable == {"accounting_mode": "disabled on GPU 0,1", "gpm": "gpm_not_supported on GPU 1"}


def test_hami_core_112_mismatched_pid_namespaces() -> None:
    g = _gpu(_source(scenario_hami_core_112_pid_namespaces()).sample(), 0)
    (p,) = g.procs
    assert p.pid == 324 and p.sm_pct is None, "the host PID's SM % must not be given to container PID 324"
    assert g.unavailable["procs.sm_pct"] == "pid_namespace_mismatch"
    assert p.suspect == "pid_not_in_host_proc", "PID 324 is not in the host's /proc: it must not be attributed"
