"""MIG: a GPU's MIG devices, their memory, processes and activity.

On a GPU with MIG mode on, the MIG devices (one per compute instance) are enumerated with
``nvmlDeviceGetMaxMigDeviceCount`` and ``nvmlDeviceGetMigDeviceHandleByIndex`` (an empty
slot answers NVML_ERROR_NOT_FOUND), again every ``MIG_RESCAN_EVERY`` samples and as soon as
a MIG handle stops answering (instances are created and destroyed while the agent runs).
Each instance gives its GPU and compute instance ids, MIG UUID, slice count
(``nvmlDeviceGetAttributes``: ``gpuInstanceSliceCount``), memory and process list read on
the MIG handle, so membership does not depend on the parent's aggregate list (which needs
privileges); the GPU's slice count is that of its largest GPU instance profile. NVML's
utilisation rates are not supported on MIG GPUs or MIG devices, so per-instance activity
is GPM's, per GPU instance (``nvmlGpmMigSampleGet`` on the parent, Hopper and newer);
elsewhere it is unavailable with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from agent.sources.nvml.api import DeviceHandle
from agent.sources.nvml.common import NA_ULONGLONG, Ctx, text
from agent.sources.nvml.gpm import GPM_METRICS, Gpm, GpmBuffers
from agent.sources.nvml.processes import Listed, Processes
from core.samples import MigInstanceSample, MigSample, ProcessSample

P = ParamSpec("P")
T = TypeVar("T")

# MIG layouts change rarely (an administrator creates or destroys instances): re-enumerate
# every this many samples, and at once when a MIG handle answers as if its instance were gone.
MIG_RESCAN_EVERY = 10
MIG_GONE = ("NVML_ERROR_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT")
_MIG_API = ("nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId")
# GPM metrics read per GPU instance (nvmlGpmMigSampleGet): activity only.
_MIG_GPM_METRICS: tuple[tuple[str, str, float], ...] = GPM_METRICS[:2]


@dataclass
class MigDevice:
    """One MIG device as enumerated: its handle and what does not change while it exists."""

    handle: DeviceHandle
    gi: int
    ci: int | None
    uuid: str | None
    slices: int | None
    reasons: dict[str, str]  # readings above that could not be taken

    @property
    def label(self) -> str:
        return f"mig[{self.gi}.{'?' if self.ci is None else self.ci}]"


@dataclass
class MigLayout:
    """A GPU's MIG mode and instances, as of the last enumeration."""

    enabled: bool
    devices: list[MigDevice]
    slices_total: int | None
    reasons: dict[str, str]  # why the layout or slices_total is incomplete
    tick: int = 0


@dataclass
class MigRead:
    """What one sample read from a MIG GPU's instances, before the process list is final."""

    slices_total: int | None
    reasons: dict[str, str]
    # (process struct, GPU instance id, compute instance id) from each MIG device's list
    listed: list[Listed] = dataclasses.field(default_factory=list)
    partial: bool = False  # some MIG device's process list could not be read
    # (device, memory total, memory used, GPM values by field, reasons) per MIG device
    instances: list[tuple[MigDevice, int | None, int | None, dict[str, float], dict[str, str]]] = dataclasses.field(
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


class Mig:
    """Per GPU: its MIG layout, whether it must be enumerated again now, and the GPM buffers
    of each GPU instance."""

    def __init__(self, c: Ctx, gpm: Gpm, processes: Processes) -> None:
        self._c = c
        self._gpm = gpm
        self._processes = processes
        self._layouts: dict[int, MigLayout] = {}  # GPU -> MIG layout (enabled or not)
        self._stale: set[int] = set()  # GPUs whose MIG layout must be read again now
        self._gpm_buffers: dict[tuple[int, int], GpmBuffers] = {}  # (GPU, GPU instance id) -> GPM buffers

    def read(self, i: int, h: DeviceHandle, un: dict[str, str]) -> MigRead | None:
        """Each MIG device's memory and processes, and each GPU instance's GPM activity;
        None when MIG is off."""
        lay = self._layout(i, h, un)
        if lay is None:
            return None
        c, nvml = self._c, self._c.nvml
        read = MigRead(slices_total=lay.slices_total, reasons=dict(lay.reasons))
        # An instance that could not be enumerated may still run processes: the parent's
        # aggregate list is then read for them.
        read.partial = any(k == "instances" or k.startswith("instance[") for k in lay.reasons)
        gpm_by_gi: dict[int, tuple[dict[str, float], dict[str, str]]] = {}
        for d in lay.devices:
            iu = dict(d.reasons)
            mem = self._try(i, d.label, iu, "mem_used_bytes", nvml.nvmlDeviceGetMemoryInfo, d.handle)
            total: int | None = None
            used: int | None = None
            if mem is None:
                iu["mem_total_bytes"] = iu["mem_used_bytes"]
            else:
                total, used = int(mem.total), int(mem.used)
                for key, v in (("mem_total_bytes", total), ("mem_used_bytes", used)):
                    if v == NA_ULONGLONG:
                        iu[key] = "NVML_VALUE_NOT_AVAILABLE"
                        c.note(i, f"{d.label}.{key}", iu[key])
                total = None if "mem_total_bytes" in iu else total
                used = None if "mem_used_bytes" in iu else used
            procs = self._processes.compute_list(i, d.handle, iu, "procs", f"{d.label}.procs")
            if procs is None:
                read.partial = True
                if iu["procs"] in MIG_GONE:
                    self._stale.add(i)
            else:
                read.listed.extend((p, d.gi, d.ci) for p in procs)
            if d.gi not in gpm_by_gi:
                gu: dict[str, str] = {}
                state = self._gpm_buffers.get((i, d.gi))
                if state is None:
                    reason = self._gpm_reason(i)
                    for _, f, _ in _MIG_GPM_METRICS:
                        gu[f] = reason
                        c.note(i, f"mig[{d.gi}].{f}", reason)
                    values: dict[str, float] = {}
                else:
                    take = functools.partial(nvml.nvmlGpmMigSampleGet, h, d.gi)
                    values = self._gpm.read(i, state, take, _MIG_GPM_METRICS, gu, f"mig[{d.gi}].")
                gpm_by_gi[d.gi] = (values, gu)
            values, gu = gpm_by_gi[d.gi]
            iu.update(gu)
            read.instances.append((d, total, used, values, iu))
        return read

    def close(self) -> None:
        """Free the GPM buffers of every GPU instance."""
        for (i, gi), state in self._gpm_buffers.items():
            self._gpm.free(state.buffers, f"GPU {i} instance {gi}")
        self._gpm_buffers.clear()

    # -- enumeration --------------------------------------------------------------------

    def _layout(self, i: int, h: DeviceHandle, un: dict[str, str]) -> MigLayout | None:
        """GPU ``i``'s MIG layout, enumerated again when due; None when MIG is off."""
        lay = self._layouts.get(i)
        if lay is None or i in self._stale or lay.tick % MIG_RESCAN_EVERY == 0:
            tick = lay.tick if lay is not None else 0
            lay = self._layouts[i] = self._scan(i, h, un, lay)
            lay.tick = tick
            self._stale.discard(i)  # what the enumeration could not read waits for the next
            self._gpm_sync(i, lay)
        elif "mode" in lay.reasons:
            un["mig"] = lay.reasons["mode"]
        lay.tick += 1
        return lay if lay.enabled else None

    def _scan(self, i: int, h: DeviceHandle, un: dict[str, str], old: MigLayout | None) -> MigLayout:
        c, nvml = self._c, self._c.nvml
        off = MigLayout(enabled=False, devices=[], slices_total=None, reasons={})
        if not c.has("nvmlDeviceGetMigMode"):
            return off  # an nvidia-ml-py without MIG: identity.mig_mode says api_absent
        try:
            mode = nvml.nvmlDeviceGetMigMode(h)
        except nvml.NVMLError as e:
            c.raise_if_lost(e)
            if c.is_(e, "NOT_SUPPORTED"):
                return off  # not a MIG-capable GPU: nothing is missing
            off.reasons["mode"] = un["mig"] = c.reason(e)
            c.note(i, "mig", off.reasons["mode"])
            return off
        if int(mode[0]) != c.k.mig_enable:
            return off
        reasons: dict[str, str] = {}
        if old is not None and old.enabled and old.slices_total is not None:
            slices_total: int | None = old.slices_total
        else:
            slices_total = self._slices_total(i, h, reasons)
        devices: list[MigDevice] = []
        if not c.has(*_MIG_API):
            reasons["instances"] = "api_absent"
            c.note(i, "mig.instances", "api_absent")
            return MigLayout(enabled=True, devices=devices, slices_total=slices_total, reasons=reasons)
        count = self._try(i, "mig", reasons, "instances", nvml.nvmlDeviceGetMaxMigDeviceCount, h)
        for slot in range(int(count or 0)):
            try:
                mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except nvml.NVMLError as e:
                if c.is_(e, "NOT_FOUND"):
                    continue  # an empty slot: no MIG device at this index
                c.raise_if_lost(e)
                reasons[f"instance[{slot}]"] = c.reason(e)
                c.note(i, f"mig.instance[{slot}]", reasons[f"instance[{slot}]"])
                continue
            gi = self._try(i, "mig", reasons, f"instance[{slot}]", nvml.nvmlDeviceGetGpuInstanceId, mh)
            if gi is None:
                continue  # an instance that cannot be placed cannot be reported
            dr: dict[str, str] = {}
            label = f"mig[{int(gi)}]"
            ci_fn = nvml.nvmlDeviceGetComputeInstanceId if c.has("nvmlDeviceGetComputeInstanceId") else None
            ci = self._try(i, label, dr, "compute_instance_id", ci_fn, mh)
            uuid = self._try(i, label, dr, "uuid", nvml.nvmlDeviceGetUUID, mh)
            attrs_fn = nvml.nvmlDeviceGetAttributes if c.has("nvmlDeviceGetAttributes") else None
            attrs = self._try(i, label, dr, "slices", attrs_fn, mh)
            slices = int(attrs.gpuInstanceSliceCount) if attrs is not None else None
            if slices is not None and slices <= 0:
                slices, dr["slices"] = None, "NVML_VALUE_NOT_AVAILABLE"
            devices.append(
                MigDevice(
                    handle=mh,
                    gi=int(gi),
                    ci=int(ci) if ci is not None else None,
                    uuid=text(uuid) if uuid is not None else None,
                    slices=slices,
                    reasons=dr,
                )
            )
        devices.sort(key=lambda d: (d.gi, -1 if d.ci is None else d.ci))
        return MigLayout(enabled=True, devices=devices, slices_total=slices_total, reasons=reasons)

    def _try(
        self,
        i: int,
        label: str,
        reasons: dict[str, str],
        key: str,
        fn: Callable[P, T] | None,
        *args: P.args,
        **kw: P.kwargs,
    ) -> T | None:
        """``fn(*args)``, or None with ``reasons[key]`` (``api_absent`` when ``fn`` is None)."""
        c = self._c
        if fn is None:
            reasons[key] = "api_absent"
            c.note(i, f"{label}.{key}", "api_absent")
            return None
        try:
            return fn(*args, **kw)
        except c.nvml.NVMLError as e:
            c.raise_if_lost(e)
            reasons[key] = c.reason(e)
            c.note(i, f"{label}.{key}", reasons[key])
            if reasons[key] in MIG_GONE and label.startswith("mig["):
                self._stale.add(i)
            return None

    def _slices_total(self, i: int, h: DeviceHandle, reasons: dict[str, str]) -> int | None:
        """The GPU's slice count: the largest ``sliceCount`` of the GPU instance profiles it
        supports (its full-GPU profile). None with ``reasons["slices_total"]`` when unknown."""
        c, nvml = self._c, self._c.nvml
        profiles = c.k.gi_profiles
        if not c.has("nvmlDeviceGetGpuInstanceProfileInfo") or not profiles:
            reasons["slices_total"] = "api_absent"
            c.note(i, "mig.slices_total", "api_absent")
            return None
        fn = nvml.nvmlDeviceGetGpuInstanceProfileInfo
        best = 0
        reason = "no_profile_supported"
        version: tuple[int, ...] = ()  # pynvml's default: the v2 call (nvmlDeviceGetGpuInstanceProfileInfoV)
        for profile in profiles:
            try:
                try:
                    info = fn(h, profile, *version)
                except nvml.NVMLError as e:
                    if version or not c.is_(e, "FUNCTION_NOT_FOUND"):
                        raise
                    version = (1,)  # a driver older than the v2 call
                    info = fn(h, profile, *version)
            except nvml.NVMLError as e:
                c.raise_if_lost(e)
                # NOT_SUPPORTED / INVALID_ARGUMENT: this GPU has no such profile, which is no error.
                if not (c.is_(e, "NOT_SUPPORTED") or c.is_(e, "INVALID_ARGUMENT")):
                    reason = c.reason(e)
                continue
            best = max(best, int(info.sliceCount))
        if best <= 0:
            reasons["slices_total"] = reason
            c.note(i, "mig.slices_total", reason)
            return None
        return best

    # -- GPM per GPU instance -----------------------------------------------------------

    def _gpm_sync(self, i: int, lay: MigLayout) -> None:
        """GPM buffers for each GPU instance of ``lay`` (Hopper+); free those of vanished ones."""
        want = {d.gi for d in lay.devices} if lay.enabled and self._gpm.has(i) else set()
        if not self._c.has("nvmlGpmMigSampleGet"):
            want = set()
        for key in [k for k in self._gpm_buffers if k[0] == i and k[1] not in want]:
            self._gpm.free(self._gpm_buffers.pop(key).buffers)
        for gi in sorted(want):
            if (i, gi) in self._gpm_buffers:
                continue
            buffers = self._gpm.alloc_pair()
            if isinstance(buffers, str):
                self._c.note(i, f"mig[{gi}].gpm", buffers)
                continue
            self._gpm_buffers[(i, gi)] = buffers

    def _gpm_reason(self, i: int) -> str:
        if not self._gpm.has(i):
            return self._gpm.reason(i)
        if not self._c.has("nvmlGpmMigSampleGet"):
            return "gpm_api_absent"
        return "gpm_buffers_unavailable"
