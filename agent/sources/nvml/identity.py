"""Identity and limits of a GPU: UUID, serial, model, memory, power limit, and the identity
text (PCI bus id, board part number, VBIOS, architecture, MIG mode, driver and CUDA driver
versions, confidential-computing mode). Read when the device list is asked for, not every
sample.
"""

from __future__ import annotations

from agent.sources.nvml.api import DeviceHandle
from agent.sources.nvml.common import Ctx, text
from core.samples import DeviceInfo


def device_info(c: Ctx, i: int, h: DeviceHandle) -> DeviceInfo:
    """GPU ``i``'s identity and limits (power limit in mW, memory in bytes). Raises
    :class:`~agent.sources.nvml.common.GpuLostError` when the GPU is lost."""
    nvml = c.nvml
    un: dict[str, str] = {}
    uuid = c.call(i, "uuid", un, nvml.nvmlDeviceGetUUID, h)
    serial = c.call(i, "serial", un, nvml.nvmlDeviceGetSerial, h)
    model = c.call(i, "model", un, nvml.nvmlDeviceGetName, h)
    mem = c.call(i, "mem_total_bytes", un, nvml.nvmlDeviceGetMemoryInfo, h)
    limit = power_limit(c, i, h, un)
    ident = {**identity(c, i, h, un), **system_identity(c, i, un)}
    reserved = mem_reserved(c, i, h, un)
    return DeviceInfo(
        index=i,
        uuid=text(uuid),
        serial=text(serial) if serial is not None else None,
        model=text(model),
        mem_total_bytes=int(mem.total) if mem is not None else None,
        power_limit_mw=limit,
        unavailable=un,
        identity=ident,
        mem_reserved_bytes=reserved,
    )


def identity(c: Ctx, i: int, h: DeviceHandle, un: dict[str, str]) -> dict[str, str]:
    """Per-GPU identity text; a key that cannot be read is named in ``un`` as ``identity.<key>``."""
    nvml = c.nvml
    out: dict[str, str] = {}
    pci = c.opt(i, "identity.pci_bus_id", un, nvml.nvmlDeviceGetPciInfo if c.has("nvmlDeviceGetPciInfo") else None, h)
    if pci is not None:
        out["pci_bus_id"] = text(pci.busId)
    part = c.opt(
        i,
        "identity.board_part_number",
        un,
        nvml.nvmlDeviceGetBoardPartNumber if c.has("nvmlDeviceGetBoardPartNumber") else None,
        h,
    )
    if part is not None:
        out["board_part_number"] = text(part)
    vbios = c.opt(
        i,
        "identity.vbios_version",
        un,
        nvml.nvmlDeviceGetVbiosVersion if c.has("nvmlDeviceGetVbiosVersion") else None,
        h,
    )
    if vbios is not None:
        out["vbios_version"] = text(vbios)
    arch = c.opt(
        i,
        "identity.architecture",
        un,
        nvml.nvmlDeviceGetArchitecture if c.has("nvmlDeviceGetArchitecture") else None,
        h,
    )
    if arch is not None:
        out["architecture"] = c.k.arch_names.get(int(arch), f"arch_{int(arch)}")
    mig = c.opt(i, "identity.mig_mode", un, nvml.nvmlDeviceGetMigMode if c.has("nvmlDeviceGetMigMode") else None, h)
    if mig is not None:
        out["mig_mode"] = "enabled" if int(mig[0]) == c.k.mig_enable else "disabled"
    return out


def system_identity(c: Ctx, i: int, un: dict[str, str]) -> dict[str, str]:
    """Driver-wide identity (the same for every GPU): driver, CUDA driver, CC mode."""
    nvml = c.nvml
    out: dict[str, str] = {}
    driver = c.opt(
        i,
        "identity.driver_version",
        un,
        nvml.nvmlSystemGetDriverVersion if c.has("nvmlSystemGetDriverVersion") else None,
    )
    if driver is not None:
        out["driver_version"] = text(driver)
    cuda = c.opt(
        i,
        "identity.cuda_driver_version",
        un,
        nvml.nvmlSystemGetCudaDriverVersion if c.has("nvmlSystemGetCudaDriverVersion") else None,
    )
    if cuda is not None:
        out["cuda_driver_version"] = f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
    cc = c.opt(
        i,
        "identity.cc_mode",
        un,
        nvml.nvmlSystemGetConfComputeState if c.has("nvmlSystemGetConfComputeState") else None,
    )
    if cc is not None:
        out["cc_mode"] = "on" if int(cc.ccFeature) == c.k.cc_feature_enabled else "off"
    return out


def mem_reserved(c: Ctx, i: int, h: DeviceHandle, un: dict[str, str]) -> int | None:
    """Memory the driver reserves (nvmlDeviceGetMemoryInfo_v2), in bytes."""
    version = c.k.memory_v2
    if version is None:
        c.mark(i, "mem_reserved_bytes", un, "api_absent")
        return None
    mem = c.call(i, "mem_reserved_bytes", un, c.nvml.nvmlDeviceGetMemoryInfo, h, version)
    return int(mem.reserved) if mem is not None else None


def power_limit(c: Ctx, i: int, h: DeviceHandle, un: dict[str, str]) -> int | None:
    """The enforced power limit in mW; the management limit when the former cannot be read.

    When neither can be read, the reason recorded is the enforced limit's.
    """
    nvml = c.nvml
    first_reason: str | None = None
    for fn in (nvml.nvmlDeviceGetEnforcedPowerLimit, nvml.nvmlDeviceGetPowerManagementLimit):
        try:
            return int(fn(h))
        except nvml.NVMLError as e:
            c.raise_if_lost(e)
            first_reason = first_reason or c.reason(e)
    c.mark(i, "power_limit_mw", un, first_reason or "unknown")
    return None
