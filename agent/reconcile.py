"""Reconciling what the node allocated with what the GPUs show, and the agent's blind spots.

After attribution, :class:`Reconciler` adds to each sample

- node-level blind spots in ``NodeSample.unavailable``: ``host_pid_namespace`` (the /proc
  the agent reads is not the host's, so NVML's host PIDs cannot be looked up) and
  ``pod_resources`` (the kubelet's allocation cannot be read: ``socket_missing`` ...);
- per-GPU events, where the kubelet's allocation is known:
  ``unallocated_use``: a process that belongs to no pod the GPU is allocated to, on a GPU
  allocated to no pod, or a process outside any pod (host process, plain container, Slurm
  job) on a kubelet-managed GPU;
  ``foreign_pod_use``: a pod's process on a GPU the kubelet allocated to other pod(s).

A process is matched to its pod through its attribution (cgroup -> pod UID -> namespace/name).
Processes under an active lease and processes with a ``suspect`` PID are not reconciled:
the first are the lease holder's by contract, the second cannot be tied to any pod.

MIG: with the NVIDIA device plugin's ``single`` or ``mixed`` MIG strategy the kubelet hands
out MIG devices (resources ``nvidia.com/gpu`` or ``nvidia.com/mig-<profile>``, device ids
the MIG UUIDs NVML reports), not the GPU. A process on a MIG GPU is placed on its MIG device
by its GPU instance id (and compute instance id, where known) in the sample's MIG layout, and
checked against that MIG UUID's allocation as above ("GPU" read as "MIG device"). Where the
kubelet hands out the MIG-enabled GPU itself (strategy ``none``), the whole GPU is checked.
Where a process cannot be placed on one MIG device of known UUID (no instance id, an
instance the layout does not list, an unreadable UUID, several compute instances it could be
in, or no layout at all), nothing is guessed: the GPU's ``unavailable["mig_allocation"]``
says which check could not be made and why.

DRA: GPUs a pod holds through a ResourceClaim are checked exactly like device-plugin ones.
The kubelet source maps each DRA device to a GPU UUID (joined to ``allocation()``) or to a
MIG device by GPU and instance ids (``mig_allocation()``), whose UUID is looked up here in
the sample's MIG layout; a MIG device created on demand that the layout does not list yet is
named in ``mig_allocation`` like any other check that could not be made. A DRA device that
could not be mapped at all (``unmapped()``) is in the node's ``unavailable["dra_allocation"]``,
and the GPUs it could be on are not checked while it is unmapped (all of them when it could be
any): an allocation that is not known must not produce mismatch events. The kubelet reports no
inventory of DRA devices, so a GPU counts as handed out by the kubelet when the device
plugins list it as allocatable or when some pod holds it.

Details name workloads, never per-sample numbers, so a window lists each mismatch once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from agent.sources import procfs
from agent.sources.kubelet import DeviceOwner, MigPlacement, UnmappedDevice
from core.samples import Attribution, DeviceInfo, GpuSample, MigInstanceSample, MigSample, NodeSample, ProcessSample

UNALLOCATED_USE = "unallocated_use"
FOREIGN_POD_USE = "foreign_pod_use"
# GpuSample.unavailable key: why some process on a MIG GPU could not be checked against the
# allocation. Named under ``mig`` so the window carries it into the statement.
MIG_ALLOCATION = "mig_allocation"
# NodeSample.unavailable key: DRA devices allocated to pods whose GPU could not be told.
DRA_ALLOCATION = "dra_allocation"
_MAX_UNCHECKED = 3  # causes listed in one reason; the rest are counted


class Allocations(Protocol):
    """The kubelet's device allocation (agent.sources.kubelet.PodResourcesResolver)."""

    def status(self) -> str | None: ...

    def allocation(self) -> Mapping[str, tuple[DeviceOwner, ...]]: ...

    def allocatable(self) -> frozenset[str]: ...

    def mig_allocation(self) -> Mapping[MigPlacement, tuple[DeviceOwner, ...]]: ...

    def unmapped(self) -> tuple[UnmappedDevice, ...]: ...


class Reconciler:
    """Adds blind spots and allocation mismatches to samples. ``proc_root``: the /proc whose
    PID namespace is checked (None: not checked); ``allocations``: None on nodes without a
    kubelet (then nothing is reconciled and no ``pod_resources`` blind spot is reported)."""

    def __init__(
        self,
        devices: tuple[DeviceInfo, ...],
        *,
        proc_root: str | os.PathLike[str] | None = None,
        allocations: Allocations | None = None,
        recheck_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._devices = {d.index: d for d in devices}
        self._proc_root = proc_root
        self._allocations = allocations
        self._recheck_s = recheck_s
        self._clock = clock
        self._pidns_next = float("-inf")
        self._pidns_reason: str | None = None

    def set_devices(self, devices: tuple[DeviceInfo, ...]) -> None:
        self._devices = {d.index: d for d in devices}

    def blind_spots(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._proc_root is not None:
            now = self._clock()
            if now >= self._pidns_next:
                self._pidns_next = now + self._recheck_s
                self._pidns_reason = procfs.host_pid_namespace_reason(self._proc_root)
            if self._pidns_reason is not None:
                out["host_pid_namespace"] = self._pidns_reason
        if self._allocations is not None:
            status = self._allocations.status()
            if status is not None:
                out["pod_resources"] = status
            else:
                unmapped = self._allocations.unmapped()
                if unmapped:
                    out[DRA_ALLOCATION] = _listed(
                        f"{u.reason} ({u.owner.resource_name} of pod {u.owner.namespace}/{u.owner.pod}"
                        + (f", claim {u.owner.claim})" if u.owner.claim else ")")
                        for u in unmapped
                    )
        return out

    def apply(self, sample: NodeSample) -> NodeSample:
        spots = self.blind_spots()
        gpus = sample.gpus
        if self._allocations is not None and "pod_resources" not in spots:
            alloc = self._allocations.allocation()
            managed = self._allocations.allocatable()
            migs = self._allocations.mig_allocation()
            scopes = [u.gpus for u in self._allocations.unmapped()]
            if any(s is None for s in scopes):
                return dataclasses.replace(sample, unavailable={**sample.unavailable, **spots})
            suspended = frozenset().union(*(s for s in scopes if s is not None))
            reconciled = tuple(
                g if self._uuid(g) in suspended else self._reconcile(g, alloc, managed, migs) for g in sample.gpus
            )
            if any(a is not b for a, b in zip(reconciled, sample.gpus, strict=True)):
                gpus = reconciled
        if not spots and gpus is sample.gpus:
            return sample
        return dataclasses.replace(sample, gpus=gpus, unavailable={**sample.unavailable, **spots})

    def _uuid(self, g: GpuSample) -> str | None:
        dev = self._devices.get(g.index)
        return None if dev is None else dev.uuid

    def _reconcile(
        self,
        g: GpuSample,
        alloc: Mapping[str, tuple[DeviceOwner, ...]],
        managed: frozenset[str],
        migs: Mapping[MigPlacement, tuple[DeviceOwner, ...]],
    ) -> GpuSample:
        dev = self._devices.get(g.index)
        if dev is None:
            return g
        procs = [(p, a) for p in g.procs if (a := _checked(p)) is not None]
        if not procs:
            return g
        keys = (dev.uuid, str(g.index))
        mig_on = g.mig is not None or dev.identity.get("mig_mode") == "enabled"
        events: list[tuple[str, str]] = []
        unchecked: list[str] = []
        here = {pl: owners for pl, owners in migs.items() if pl.parent_uuid == dev.uuid}
        if here:
            alloc, unplaced = _place_dra_mig(here, g.mig, alloc)
            unchecked.extend(unplaced)
        if not mig_on or any(k in managed or k in alloc for k in keys):
            # The kubelet hands out the GPU itself (MIG off, or MIG strategy "none").
            if managed and not any(k in managed or k in alloc for k in keys):
                return g  # not a device the kubelet hands out (reserved by the operator)
            owners = next((alloc[k] for k in keys if k in alloc), ())
            for _, a in procs:
                _judge(events, a, owners, f"GPU {dev.uuid}")
        elif g.mig is None:
            unchecked.append(f"mig_layout_unknown: {g.unavailable.get('mig', 'not_reported')}")
        else:
            if managed and _layout_complete(g.mig) and not _any_mig_handed_out(g.mig, alloc, managed):
                return g  # none of its MIG devices is handed out by the kubelet
            for p, a in procs:
                x, why = _mig_device(p, g.mig, f"{a.kind} {a.workload}")
                if x is None or x.uuid is None:
                    unchecked.append(why)
                    continue
                if managed and x.uuid not in managed and x.uuid not in alloc:
                    continue  # a MIG device the kubelet does not hand out
                ci = "" if x.compute_instance_id is None else f", compute instance {x.compute_instance_id}"
                where = f"MIG device {x.uuid} (GPU instance {x.gpu_instance_id}{ci} of GPU {dev.uuid})"
                _judge(events, a, alloc.get(x.uuid, ()), where)
        if not events and not unchecked:
            return g
        unavailable = g.unavailable
        if unchecked:
            unavailable = {**g.unavailable, MIG_ALLOCATION: _listed(unchecked)}
        return dataclasses.replace(g, events=(*g.events, *events), unavailable=unavailable)


def _listed(causes: Iterable[str]) -> str:
    """Distinct causes, the first ``_MAX_UNCHECKED`` of them named and the rest counted."""
    distinct = list(dict.fromkeys(causes))
    text = "; ".join(distinct[:_MAX_UNCHECKED])
    if len(distinct) > _MAX_UNCHECKED:
        text += f"; {len(distinct) - _MAX_UNCHECKED} more"
    return text


def _place_dra_mig(
    here: Mapping[MigPlacement, tuple[DeviceOwner, ...]],
    mig: MigSample | None,
    alloc: Mapping[str, tuple[DeviceOwner, ...]],
) -> tuple[Mapping[str, tuple[DeviceOwner, ...]], list[str]]:
    """``alloc`` with the DRA-allocated MIG devices of one GPU added under the MIG UUIDs the
    sample's layout gives their instances, and why any could not be named."""
    out = dict(alloc)
    unplaced: list[str] = []
    for pl, owners in sorted(here.items(), key=lambda kv: (kv[0].gpu_instance_id, kv[0].compute_instance_id)):
        where = f"GPU instance {pl.gpu_instance_id}, compute instance {pl.compute_instance_id}"
        pods = ", ".join(sorted({f"{o.namespace}/{o.pod}" for o in owners}))
        found = (
            []
            if mig is None
            else [
                x
                for x in mig.instances
                if x.gpu_instance_id == pl.gpu_instance_id and x.compute_instance_id == pl.compute_instance_id
            ]
        )
        if len(found) != 1 or found[0].uuid is None:
            why = "no MIG layout" if mig is None else "not in the MIG layout" if not found else "its UUID unknown"
            unplaced.append(f"dra_mig_device_unknown: {where} allocated to {pods} ({why})")
            continue
        uuid = found[0].uuid
        out[uuid] = (*out.get(uuid, ()), *(o for o in owners if o not in out.get(uuid, ())))
    return out, unplaced


def _checked(p: ProcessSample) -> Attribution | None:
    """The attribution of a process that is reconciled (attributed, trusted, not under a
    lease); None for any other."""
    a = p.attribution
    return a if a is not None and p.suspect is None and a.kind != "lease" else None


def _judge(events: list[tuple[str, str]], a: Attribution, owners: tuple[DeviceOwner, ...], device: str) -> None:
    """Adds the event (once) for a process attributed to ``a`` on ``device`` owned by ``owners``."""
    owner_pods = sorted({f"{o.namespace}/{o.pod}" for o in owners})
    where = f"{device} allocated to {', '.join(owner_pods)}" if owner_pods else f"{device} allocated to no pod"
    if a.kind == "k8s_pod":
        if a.workload in owner_pods:
            return
        kind = FOREIGN_POD_USE if owner_pods else UNALLOCATED_USE
        event = (kind, f"pod {a.workload} uses {where}")
    else:
        event = (UNALLOCATED_USE, f"{a.kind} {a.workload}, outside any pod, uses {where}")
    if event not in events:
        events.append(event)


def _mig_device(p: ProcessSample, mig: MigSample, who: str) -> tuple[MigInstanceSample | None, str]:
    """The MIG device (of known UUID) ``p``, attributed to ``who``, runs on, or (None, why it
    cannot be told)."""
    gi = p.gpu_instance_id
    if gi is None:
        return None, f"no_instance_id: {who}"
    here = [x for x in mig.instances if x.gpu_instance_id == gi]
    ci = p.compute_instance_id
    if ci is not None:
        # The compute instance it names; failing that, one whose id could not be read.
        here = [x for x in here if x.compute_instance_id == ci] or [x for x in here if x.compute_instance_id is None]
    where = f"{who} in GPU instance {gi}" + ("" if ci is None else f", compute instance {ci}")
    if not here:
        return None, f"instance_not_enumerated: {where}"
    uuids = {x.uuid for x in here}
    if None in uuids:
        reason = next((x.unavailable.get("uuid") for x in here if x.uuid is None), None) or "not_reported"
        return None, f"mig_uuid_unknown: {where} (uuid: {reason})"
    if len(uuids) > 1:
        return None, f"compute_instance_unknown: {where} ({len(uuids)} MIG devices)"
    return here[0], ""


def _layout_complete(mig: MigSample) -> bool:
    """Whether every MIG device of the GPU was enumerated with its UUID."""
    if any(k == "instances" or k.startswith("instance[") for k in mig.unavailable):
        return False
    return all(x.uuid is not None for x in mig.instances)


def _any_mig_handed_out(mig: MigSample, alloc: Mapping[str, tuple[DeviceOwner, ...]], managed: frozenset[str]) -> bool:
    return any(x.uuid is not None and (x.uuid in managed or x.uuid in alloc) for x in mig.instances)
