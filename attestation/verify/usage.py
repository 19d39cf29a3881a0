"""Step 8: usage per GPU serial and tenant (GPU time, energy shared by ``share_permille``),
counted from each statement as it is read, before it is slimmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attestation.statement import UNATTRIBUTED
from attestation.verify.report import GpuUsage, Report, TenantUsage
from attestation.verify.signatures import VerifiedStatement


@dataclass
class UsageTally:
    """What is counted from each statement as it is read (before it is slimmed)."""

    done: set[str] = field(default_factory=set)
    key_tenants: dict[str, set[str]] = field(default_factory=dict)


def count_usage(s: VerifiedStatement, report: Report, usage: UsageTally) -> None:
    """8. Usage per GPU serial and tenant, from a statement whose signature verified (each
    distinct statement once)."""
    if s.digest in usage.done:
        return
    usage.done.add(s.digest)
    w = s.window
    tenants = usage.key_tenants.setdefault(s.key_id, set())
    for g in w.gpus:
        name = g.serial if g.serial else f"uuid:{g.uuid}"
        gpu = report.gpus.setdefault(name, GpuUsage(serial=name))
        gpu.node_ids.add(w.node_id)
        gpu.key_ids.add(s.key_id)
        gpu.models.add(g.model)
        gpu.windows.append((w.start_ms, w.end_ms))
        energy = None
        if g.energy_start_mj is not None and g.energy_end_mj is not None and g.energy_end_mj >= g.energy_start_mj:
            energy = g.energy_end_mj - g.energy_start_mj
        else:
            gpu.windows_without_energy += 1
        shared = 0
        for wl in g.workloads:
            tenants.add(wl.tenant)
            u = gpu.tenants.setdefault(wl.tenant, TenantUsage())
            u.gpu_ms += wl.gpu_ms
            if energy is not None:
                part = energy * wl.share_permille // 1000
                u.energy_mj += part
                shared += part
        if energy is not None and energy > shared:
            gpu.tenants.setdefault(UNATTRIBUTED, TenantUsage()).energy_mj += energy - shared
