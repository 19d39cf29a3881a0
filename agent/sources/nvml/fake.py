"""A hand-written fake NVML for tests and benchmarks; the agent never uses it.

It implements :class:`agent.sources.nvml.api.Nvml` (mypy checks that, see the end of the
module) on scenario GPUs described by :class:`FakeGpu` and :class:`FakeMig`. It raises the
real ``pynvml.NVMLError`` codes and returns the real ctypes structures where pynvml does, so
the source is tested against NVML's actual error and data shapes; constants are pynvml's
own. ``without`` names functions an older pynvml lacks. Like dcgm-exporter's
``mock_client.go`` beside its ``types.go``, it lives beside the interface it fakes; the
scenarios, named after the failure they reproduce (gpustat's convention), are in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pynvml

if TYPE_CHECKING:
    from agent.sources.nvml.api import Nvml

GIB = 1024**3
MIB = 1024**2


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

    NVMLError = pynvml.NVMLError

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

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise take every attribute as present

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
        return bool(gpu.mig_mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE)

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

    # confidential computing: a GPU without CC answers NOT_SUPPORTED (tests that need reports subclass)
    def nvmlDeviceGetConfComputeGpuAttestationReport(self, h: FakeHandle, nonce: bytes) -> Any:  # noqa: N802
        self._gpu("nvmlDeviceGetConfComputeGpuAttestationReport", h)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetConfComputeGpuCertificate(self, h: FakeHandle) -> Any:  # noqa: N802
        self._gpu("nvmlDeviceGetConfComputeGpuCertificate", h)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # health
    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:  # noqa: N802
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu("nvmlDeviceGetTemperature", h).temp_c

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock: int) -> int:  # noqa: N802
        g = self._gpu("nvmlDeviceGetClockInfo", h)
        return {pynvml.NVML_CLOCK_SM: g.sm_clock_mhz, pynvml.NVML_CLOCK_MEM: g.mem_clock_mhz}[clock]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:  # noqa: N802
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", h).throttle_mask

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeHandle) -> int:  # noqa: N802 - the older name
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", h).throttle_mask

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

    def nvmlEventSetWait(self, event_set: int, timeout_ms: int) -> Any:  # noqa: N802 - pynvml without _v2
        return self.nvmlEventSetWait_v2(event_set, timeout_ms)

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

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[FakeProcessInfo]:  # noqa: N802
        return list(self._gpu("nvmlDeviceGetComputeRunningProcesses", h).procs)

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


if TYPE_CHECKING:

    def _implements_the_interface(fake: FakeNvml) -> Nvml:
        return fake  # mypy: FakeNvml must have every call of the Nvml protocol, with its types
