"""The NVML interface the source uses: every pynvml call, with its units.

:class:`Nvml` lists exactly the functions of ``pynvml`` (package nvidia-ml-py) that the
source calls, typed with what they return; the real module satisfies it, and so must a test
fake (:mod:`agent.sources.nvml.fake` is checked against it). An older pynvml may lack some
of them: the source asks ``hasattr`` first and records ``api_absent`` (or a reason of its
own) where one is missing. The nvml.h constants the source needs are read once from the
same module (:mod:`agent.sources.nvml.constants`). Handles are opaque: the source passes
them back and never looks inside.

Units, as NVML gives them: power in milliwatts, energy in millijoules since the driver was
loaded, memory in bytes, utilisation in percent, clocks in MHz, temperatures in degrees
Celsius, timestamps in microseconds since the epoch, GPM bandwidths in MiB/s, NVLink data
counters in KiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias, overload

DeviceHandle: TypeAlias = Any
"""An ``nvmlDevice_t`` (a ctypes pointer in pynvml): a GPU's or a MIG device's handle."""
EventSet: TypeAlias = Any
"""An ``nvmlEventSet_t``."""
GpmSample: TypeAlias = Any
"""An ``nvmlGpmSample_t``: an opaque GPM sample buffer."""


# -- what the calls return (read-only views of pynvml's ctypes structures) ---------------


class Memory(Protocol):
    """``nvmlMemory_t``: frame-buffer memory, in bytes."""

    @property
    def total(self) -> int: ...
    @property
    def used(self) -> int: ...


class MemoryV2(Memory, Protocol):
    """``nvmlMemory_v2_t``: as :class:`Memory`, plus what the driver reserves, in bytes."""

    @property
    def reserved(self) -> int: ...


class PciInfo(Protocol):
    """``nvmlPciInfo_t``: ``busId`` is ``domain:bus:device.function`` (bytes in pynvml)."""

    @property
    def busId(self) -> bytes | str: ...  # noqa: N802 - NVML's field name


class ConfComputeState(Protocol):
    """``nvmlConfComputeSystemState_t``: ``ccFeature`` is NVML_CC_SYSTEM_FEATURE_ENABLED or _DISABLED."""

    @property
    def ccFeature(self) -> int: ...  # noqa: N802


class Utilization(Protocol):
    """``nvmlUtilization_t``: ``gpu`` is the percent of the last sample period a kernel ran."""

    @property
    def gpu(self) -> int: ...


class ProcessInfo(Protocol):
    """``nvmlProcessInfo_t``: a host PID and its GPU memory in bytes (None: not available).

    MIG and MPS entries also carry ``gpuInstanceId`` and ``computeInstanceId`` (0xFFFFFFFF
    when the GPU is not in MIG mode); older structures lack them, so they are read with
    ``getattr``.
    """

    @property
    def pid(self) -> int: ...
    @property
    def usedGpuMemory(self) -> int | None: ...  # noqa: N802


class AccountingStats(Protocol):
    """``nvmlAccountingStats_t``: ``maxMemoryUsage`` in bytes (None: not available), ``isRunning`` 0 or 1."""

    @property
    def isRunning(self) -> int: ...  # noqa: N802
    @property
    def maxMemoryUsage(self) -> int | None: ...  # noqa: N802


class ProcessUtilizationSample(Protocol):
    """``nvmlProcessUtilizationSample_t``: ``timeStamp`` in us, ``smUtil`` in percent (over 100: no reading)."""

    @property
    def pid(self) -> int: ...
    @property
    def timeStamp(self) -> int: ...  # noqa: N802
    @property
    def smUtil(self) -> int: ...  # noqa: N802


class EventData(Protocol):
    """``nvmlEventData_t``: for an Xid event ``eventData`` is the Xid code.

    ``gpuInstanceId`` and ``computeInstanceId`` (0xFFFFFFFF: none) exist on newer pynvml
    only and are read with ``getattr``.
    """

    @property
    def eventData(self) -> int: ...  # noqa: N802


class GpmSupport(Protocol):
    """``nvmlGpmSupport_t``: ``isSupportedDevice`` is nonzero on a GPU with GPM (Hopper and newer)."""

    @property
    def isSupportedDevice(self) -> int: ...  # noqa: N802


class GpmMetric(Protocol):
    """One entry of ``nvmlGpmMetricsGet_t.metrics``: the request's ``metricId``, NVML's answer."""

    metricId: int  # noqa: N815
    nvmlReturn: int  # noqa: N815
    value: float  # percent for utilisations, MiB/s for bandwidths


class GpmMetricsGet(Protocol):
    """``nvmlGpmMetricsGet_t``: a request filled in by the caller, answered in ``metrics``."""

    version: int
    numMetrics: int  # noqa: N815
    sample1: GpmSample
    sample2: GpmSample

    @property
    def metrics(self) -> Sequence[GpmMetric]: ...


class FieldValue(Protocol):
    """``nvmlFieldValue_t``: ``timestamp`` in us; ``valueType`` names the member of ``value`` that holds it."""

    @property
    def nvmlReturn(self) -> int: ...  # noqa: N802
    @property
    def valueType(self) -> int: ...  # noqa: N802
    @property
    def value(self) -> Any: ...  # a ctypes union: uiVal, ulVal, ullVal, sllVal, siVal, usVal
    @property
    def timestamp(self) -> int: ...


class DeviceAttributes(Protocol):
    """``nvmlDeviceAttributes_t`` of a MIG device: ``gpuInstanceSliceCount`` is its GPU instance's slices."""

    @property
    def gpuInstanceSliceCount(self) -> int: ...  # noqa: N802


class GpuInstanceProfileInfo(Protocol):
    """``nvmlGpuInstanceProfileInfo_t``: ``sliceCount`` is the profile's number of slices."""

    @property
    def sliceCount(self) -> int: ...  # noqa: N802


class AttestationReport(Protocol):
    """``nvmlConfComputeGpuAttestationReport_t``: the first ``attestationReportSize`` bytes of
    ``attestationReport`` are the report (SPDM GET_MEASUREMENTS request and response)."""

    @property
    def attestationReportSize(self) -> int: ...  # noqa: N802
    @property
    def attestationReport(self) -> Any: ...  # noqa: N802 - a ctypes byte array


class GpuCertificate(Protocol):
    """``nvmlConfComputeGpuCertificate_t``: the first ``attestationCertChainSize`` bytes of
    ``attestationCertChain`` are the GPU's certificate chain, PEM, leaf first."""

    @property
    def attestationCertChainSize(self) -> int: ...  # noqa: N802
    @property
    def attestationCertChain(self) -> Any: ...  # noqa: N802 - a ctypes byte array


# -- the calls ---------------------------------------------------------------------------


class Nvml(Protocol):
    """The pynvml functions the source calls. Every one raises ``NVMLError`` (whose ``value``
    is the NVML_ERROR_* code) when NVML answers with an error."""

    NVMLError: type[Exception]

    # lifecycle
    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        """Load libnvidia-ml and open the driver."""

    def nvmlShutdown(self) -> None:  # noqa: N802
        """Release what nvmlInit took."""

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        """The number of GPUs (not MIG devices)."""

    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> DeviceHandle:  # noqa: N802
        """The handle of GPU ``index`` (0-based, NVML's enumeration order)."""

    # identity
    def nvmlDeviceGetUUID(self, handle: DeviceHandle, /) -> str | bytes:  # noqa: N802
        """``GPU-…`` for a GPU, ``MIG-…`` for a MIG device."""

    def nvmlDeviceGetSerial(self, handle: DeviceHandle, /) -> str | bytes:  # noqa: N802
        """The board serial number (NOT_SUPPORTED on consumer GPUs)."""

    def nvmlDeviceGetName(self, handle: DeviceHandle, /) -> str | bytes:  # noqa: N802
        """The product name, e.g. ``NVIDIA H100 80GB HBM3``."""

    @overload
    def nvmlDeviceGetMemoryInfo(self, handle: DeviceHandle, /) -> Memory: ...  # noqa: N802
    @overload
    def nvmlDeviceGetMemoryInfo(self, handle: DeviceHandle, version: int, /) -> MemoryV2: ...  # noqa: N802
    def nvmlDeviceGetMemoryInfo(self, handle: DeviceHandle, version: int = ..., /) -> Memory:  # noqa: N802
        """Memory in bytes; with ``version`` = ``nvmlMemory_v2`` also the driver's reservation."""

    def nvmlDeviceGetPciInfo(self, handle: DeviceHandle, /) -> PciInfo:  # noqa: N802
        """PCI location; ``busId`` is what ``nvidia-smi`` shows."""

    def nvmlDeviceGetBoardPartNumber(self, handle: DeviceHandle, /) -> str | bytes:  # noqa: N802
        """The board's part number."""

    def nvmlDeviceGetVbiosVersion(self, handle: DeviceHandle, /) -> str | bytes:  # noqa: N802
        """The VBIOS version string."""

    def nvmlDeviceGetArchitecture(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """An NVML_DEVICE_ARCH_* value."""

    def nvmlDeviceGetMigMode(self, handle: DeviceHandle, /) -> Sequence[int]:  # noqa: N802
        """(current, pending) MIG mode, each NVML_DEVICE_MIG_ENABLE or _DISABLE."""

    def nvmlSystemGetDriverVersion(self) -> str | bytes:  # noqa: N802
        """The kernel driver's version, e.g. ``550.54.15``."""

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        """The CUDA driver API version: 1000 * major + 10 * minor (12040 is 12.4)."""

    def nvmlSystemGetConfComputeState(self) -> ConfComputeState:  # noqa: N802
        """Whether confidential computing is on for the system."""

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """The power limit the GPU enforces now, in mW."""

    def nvmlDeviceGetPowerManagementLimit(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """The power management limit, in mW."""

    # activity
    def nvmlDeviceGetUtilizationRates(self, handle: DeviceHandle, /) -> Utilization:  # noqa: N802
        """Percent of time a kernel ran over the last sample period (NOT_SUPPORTED in MIG mode)."""

    def nvmlDeviceGetPowerUsage(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """Power draw in mW; 0xFFFFFFFF when not available."""

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """Energy in mJ since the driver was loaded (Volta and newer); 2**64 - 1 when not available."""

    # health
    def nvmlDeviceGetTemperature(self, handle: DeviceHandle, sensor: int, /) -> int:  # noqa: N802
        """Temperature of ``sensor`` (NVML_TEMPERATURE_GPU) in degrees Celsius."""

    def nvmlDeviceGetClockInfo(self, handle: DeviceHandle, clock: int, /) -> int:  # noqa: N802
        """Current clock of ``clock`` (NVML_CLOCK_SM, NVML_CLOCK_MEM) in MHz."""

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """Bit mask of why clocks are held down (nvmlClocksEventReason*)."""

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """The same mask under its older name (pynvml before 12.535.108)."""

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: DeviceHandle, error_type: int, counter_type: int, /
    ) -> int:
        """ECC errors of ``error_type`` (corrected/uncorrected) since boot (volatile) or ever (aggregate)."""

    def nvmlDeviceGetRetiredPages(self, handle: DeviceHandle, cause: int, /) -> Sequence[int]:  # noqa: N802
        """Addresses of the pages retired for ``cause`` (pre-Hopper; NOT_SUPPORTED on Hopper)."""

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """1 when a page waits for retirement at the next reboot, else 0."""

    def nvmlDeviceGetRemappedRows(self, handle: DeviceHandle, /) -> Sequence[int]:  # noqa: N802
        """Remapped rows: (correctable, uncorrectable, pending, failure occurred) (Ampere and newer)."""

    # Xid events
    def nvmlEventSetCreate(self) -> EventSet:  # noqa: N802
        """A new, empty event set."""

    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: DeviceHandle, event_types: int, event_set: EventSet, /
    ) -> None:
        """Deliver ``event_types`` (a mask of nvmlEventType*) of the GPU to ``event_set``."""

    def nvmlEventSetWait_v2(self, event_set: EventSet, timeout_ms: int, /) -> EventData:  # noqa: N802
        """The next event, waiting at most ``timeout_ms`` ms (NVML_ERROR_TIMEOUT when none)."""

    def nvmlEventSetWait(self, event_set: EventSet, timeout_ms: int, /) -> EventData:  # noqa: N802
        """The same, for pynvml without the _v2 call."""

    def nvmlEventSetFree(self, event_set: EventSet, /) -> None:  # noqa: N802
        """Release ``event_set``."""

    # processes
    def nvmlDeviceGetComputeRunningProcesses_v3(  # noqa: N802
        self, handle: DeviceHandle, /
    ) -> Sequence[ProcessInfo]:
        """Compute processes on a GPU or MIG device, host PIDs, memory in bytes (driver 510+)."""

    def nvmlDeviceGetComputeRunningProcesses_v2(  # noqa: N802
        self, handle: DeviceHandle, /
    ) -> Sequence[ProcessInfo]:
        """The same from older drivers (NVML_ERROR_FUNCTION_NOT_FOUND where absent)."""

    def nvmlDeviceGetComputeRunningProcesses(self, handle: DeviceHandle, /) -> Sequence[ProcessInfo]:  # noqa: N802
        """The same, unversioned (may raise NVMLLibraryMismatchError)."""

    def nvmlDeviceGetMPSComputeRunningProcesses_v3(  # noqa: N802
        self, handle: DeviceHandle, /
    ) -> Sequence[ProcessInfo]:
        """MPS clients; empty when MPS is not in use."""

    def nvmlDeviceGetAccountingMode(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """NVML_FEATURE_ENABLED or _DISABLED."""

    def nvmlDeviceGetAccountingPids(self, handle: DeviceHandle, /) -> Sequence[int]:  # noqa: N802
        """PIDs in the accounting buffer (running and recently ended)."""

    def nvmlDeviceGetAccountingStats(self, handle: DeviceHandle, pid: int, /) -> AccountingStats:  # noqa: N802
        """Accounting of ``pid``: peak memory in bytes, whether it still runs."""

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: DeviceHandle, last_seen_us: int, /
    ) -> Sequence[ProcessUtilizationSample]:
        """Per-process samples newer than ``last_seen_us`` (us); NVML_ERROR_NOT_FOUND when none."""

    # GPM (Hopper and newer)
    def nvmlGpmQueryDeviceSupport(self, handle: DeviceHandle, /) -> GpmSupport:  # noqa: N802
        """Whether the GPU supports GPM."""

    def nvmlGpmSampleAlloc(self) -> GpmSample:  # noqa: N802
        """A GPM sample buffer (freed with nvmlGpmSampleFree)."""

    def nvmlGpmSampleFree(self, sample: GpmSample, /) -> None:  # noqa: N802
        """Release a GPM sample buffer."""

    def nvmlGpmSampleGet(self, handle: DeviceHandle, sample: GpmSample, /) -> GpmSample:  # noqa: N802
        """Take a GPM sample of the whole GPU into ``sample``."""

    def nvmlGpmMigSampleGet(  # noqa: N802
        self, handle: DeviceHandle, gpu_instance_id: int, sample: GpmSample, /
    ) -> GpmSample:
        """Take a GPM sample of GPU instance ``gpu_instance_id`` (on the parent's handle)."""

    def nvmlGpmMetricsGet(self, request: GpmMetricsGet, /) -> GpmMetricsGet:  # noqa: N802
        """Compute ``request.metrics`` between ``sample1`` and ``sample2``: percent or MiB/s."""

    # NVLink counters
    def nvmlDeviceGetFieldValues(  # noqa: N802
        self, handle: DeviceHandle, field_ids: list[tuple[int, int]], /
    ) -> Sequence[FieldValue]:
        """Field values for (field id, scope id) pairs, each with its own return code;
        the NVLink data counters are cumulative KiB."""

    # MIG
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """MIG device slots of a GPU (0 when MIG is off)."""

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: DeviceHandle, index: int, /) -> DeviceHandle:  # noqa: N802
        """The MIG device in slot ``index`` (NVML_ERROR_NOT_FOUND for an empty slot)."""

    def nvmlDeviceGetGpuInstanceId(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """A MIG device's GPU instance id."""

    def nvmlDeviceGetComputeInstanceId(self, handle: DeviceHandle, /) -> int:  # noqa: N802
        """A MIG device's compute instance id (within its GPU instance)."""

    def nvmlDeviceGetAttributes(self, handle: DeviceHandle, /) -> DeviceAttributes:  # noqa: N802
        """A MIG device's attributes (NOT_SUPPORTED on a GPU handle)."""

    def nvmlDeviceGetGpuInstanceProfileInfo(  # noqa: N802
        self, handle: DeviceHandle, profile: int, version: int = ..., /
    ) -> GpuInstanceProfileInfo:
        """A GPU instance profile (NVML_GPU_INSTANCE_PROFILE_*); ``version`` 1 for drivers
        without the v2 call (NVML_ERROR_FUNCTION_NOT_FOUND), pynvml's default is 2."""

    # confidential computing
    def nvmlDeviceGetConfComputeGpuAttestationReport(  # noqa: N802
        self, handle: DeviceHandle, nonce: bytes, /
    ) -> AttestationReport:
        """The GPU's attestation report over the 32-byte ``nonce``."""

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: DeviceHandle, /) -> GpuCertificate:  # noqa: N802
        """The GPU's attestation certificate chain."""


def load() -> Nvml:
    """The real binding: the ``pynvml`` module (ImportError when nvidia-ml-py is not installed)."""
    import pynvml

    nvml: Nvml = pynvml
    return nvml
