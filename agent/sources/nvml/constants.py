"""The nvml.h constants the NVML source uses, read once from the binding.

A constant an old pynvml lacks has nvml.h's value, or None where there is no safe default
(an error code or field id that is None matches nothing).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from agent.sources.nvml.api import GpmMetricsGet

# GPU instance profile ids (NVML_GPU_INSTANCE_PROFILE_7_SLICE, ..._1_SLICE_REV1, ...), not the
# profile count or capability bits.
_GI_PROFILE = re.compile(r"NVML_GPU_INSTANCE_PROFILE_[0-9]+_SLICE(_[A-Z0-9_]+)?")


class _AbsentError(Exception):
    """Stands in for an exception class the NVML module does not define."""


def _ints(nvml: object, prefix: str) -> dict[str, int]:
    return {n: v for n in dir(nvml) if n.startswith(prefix) and isinstance(v := getattr(nvml, n), int)}


@dataclasses.dataclass(frozen=True)
class NvmlConstants:
    """The nvml.h constants the source uses, read once from the binding with :meth:`of`.

    An error code or field id the binding lacks is None (nothing matches it); the others
    default to nvml.h's value.
    """

    error_names: dict[int, str]  # NVML_ERROR_* code -> name
    error_codes: dict[str, int]  # NVML_ERROR_* name -> code
    arch_names: dict[int, str]  # NVML_DEVICE_ARCH_* -> "hopper", ...
    gi_profiles: tuple[int, ...]  # NVML_GPU_INSTANCE_PROFILE_*_SLICE*, sorted
    gpm_metrics: dict[str, int]  # NVML_GPM_METRIC_* name -> id
    fields: dict[str, int]  # NVML_FI_* name -> field id
    library_mismatch: type[Exception]  # NVMLLibraryMismatchError, or a class nothing raises
    gpm_metrics_get_t: Callable[[], GpmMetricsGet] | None  # c_nvmlGpmMetricsGet_t
    gpm_metrics_get_version: int | None
    memory_v2: int | None  # nvmlMemory_v2: the struct version of nvmlDeviceGetMemoryInfo's v2 call
    xid_event: int | None  # nvmlEventTypeXidCriticalError
    success: int = 0
    mig_enable: int = 1
    cc_feature_enabled: int = 1
    feature_enabled: int = 1
    temperature_gpu: int = 0
    clock_sm: int = 1
    clock_mem: int = 2
    memory_error_corrected: int = 0
    memory_error_uncorrected: int = 1
    volatile_ecc: int = 0
    aggregate_ecc: int = 1
    retired_sbe: int = 0  # NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
    retired_dbe: int = 1  # NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR

    @classmethod
    def of(cls, nvml: object) -> NvmlConstants:
        def get(name: str, default: int) -> int:
            v = getattr(nvml, name, default)
            return v if isinstance(v, int) else default

        def opt(name: str) -> Any:
            return getattr(nvml, name, None)

        errors = _ints(nvml, "NVML_ERROR_")
        return cls(
            error_names={v: n for n, v in errors.items()},
            error_codes=errors,
            arch_names={
                v: n.removeprefix("NVML_DEVICE_ARCH_").lower() for n, v in _ints(nvml, "NVML_DEVICE_ARCH_").items()
            },
            gi_profiles=tuple(
                sorted({v for n, v in _ints(nvml, "NVML_GPU_INSTANCE_PROFILE_").items() if _GI_PROFILE.fullmatch(n)})
            ),
            gpm_metrics=_ints(nvml, "NVML_GPM_METRIC_"),
            fields=_ints(nvml, "NVML_FI_"),
            library_mismatch=opt("NVMLLibraryMismatchError") or _AbsentError,
            gpm_metrics_get_t=opt("c_nvmlGpmMetricsGet_t"),
            gpm_metrics_get_version=opt("NVML_GPM_METRICS_GET_VERSION"),
            memory_v2=opt("nvmlMemory_v2"),
            xid_event=opt("nvmlEventTypeXidCriticalError"),
            success=get("NVML_SUCCESS", 0),
            mig_enable=get("NVML_DEVICE_MIG_ENABLE", 1),
            cc_feature_enabled=get("NVML_CC_SYSTEM_FEATURE_ENABLED", 1),
            feature_enabled=get("NVML_FEATURE_ENABLED", 1),
            temperature_gpu=get("NVML_TEMPERATURE_GPU", 0),
            clock_sm=get("NVML_CLOCK_SM", 1),
            clock_mem=get("NVML_CLOCK_MEM", 2),
            memory_error_corrected=get("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0),
            memory_error_uncorrected=get("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            volatile_ecc=get("NVML_VOLATILE_ECC", 0),
            aggregate_ecc=get("NVML_AGGREGATE_ECC", 1),
            retired_sbe=get("NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", 0),
            retired_dbe=get("NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", 1),
        )

    def error(self, name: str) -> int | None:
        """The code of NVML_ERROR_<name> (``"GPU_IS_LOST"``), None when the binding lacks it."""
        return self.error_codes.get("NVML_ERROR_" + name)
