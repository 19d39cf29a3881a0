"""A GPU's activity now: utilisation (%), memory used (bytes), power (mW) and the energy
counter (mJ since the driver was loaded). NVML's "value not available" sentinels become
None with the reason ``NVML_VALUE_NOT_AVAILABLE``, never a number.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.sources.nvml.api import DeviceHandle
from agent.sources.nvml.common import NA_UINT, NA_ULONGLONG, Ctx


@dataclass(frozen=True)
class Activity:
    util_pct: float | None
    mem_used_bytes: int | None
    power_mw: int | None
    energy_mj: int | None


def read_activity(c: Ctx, i: int, h: DeviceHandle, un: dict[str, str]) -> Activity:
    """Utilisation, memory used, power and energy of GPU ``i``; each that cannot be read is
    None with its reason in ``un``."""
    nvml = c.nvml
    util = c.call(i, "util_pct", un, nvml.nvmlDeviceGetUtilizationRates, h)
    util_pct = c.not_na(i, "util_pct", un, util.gpu if util is not None else None, NA_UINT)
    mem = c.call(i, "mem_used_bytes", un, nvml.nvmlDeviceGetMemoryInfo, h)
    mem_used = c.not_na(i, "mem_used_bytes", un, mem.used if mem is not None else None, NA_ULONGLONG)
    power = c.call(i, "power_mw", un, nvml.nvmlDeviceGetPowerUsage, h)
    power = c.not_na(i, "power_mw", un, power, NA_UINT)
    energy = c.call(i, "energy_mj", un, nvml.nvmlDeviceGetTotalEnergyConsumption, h)
    energy = c.not_na(i, "energy_mj", un, energy, NA_ULONGLONG)
    return Activity(
        util_pct=float(util_pct) if util_pct is not None else None,
        mem_used_bytes=int(mem_used) if mem_used is not None else None,
        power_mw=int(power) if power is not None else None,
        energy_mj=int(energy) if energy is not None else None,
    )
