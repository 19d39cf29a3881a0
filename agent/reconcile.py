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
the first are the lease holder's by contract, the second cannot be tied to any pod. MIG GPUs
are not reconciled yet (the allocation names MIG devices, the process list GPU instances).
Details name workloads, never per-sample numbers, so a window lists each mismatch once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from agent.sources import procfs
from agent.sources.base import DeviceInfo, GpuSample, NodeSample
from agent.sources.kubelet import DeviceOwner

UNALLOCATED_USE = "unallocated_use"
FOREIGN_POD_USE = "foreign_pod_use"


class Allocations(Protocol):
    """The kubelet's device allocation (agent.sources.kubelet.PodResourcesResolver)."""

    def status(self) -> str | None: ...

    def allocation(self) -> Mapping[str, tuple[DeviceOwner, ...]]: ...

    def allocatable(self) -> frozenset[str]: ...


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
        return out

    def apply(self, sample: NodeSample) -> NodeSample:
        spots = self.blind_spots()
        gpus = sample.gpus
        if self._allocations is not None and "pod_resources" not in spots:
            alloc = self._allocations.allocation()
            managed = self._allocations.allocatable()
            gpus = tuple(self._reconcile(g, alloc, managed) for g in sample.gpus)
        if not spots and gpus is sample.gpus:
            return sample
        return dataclasses.replace(sample, gpus=gpus, unavailable={**sample.unavailable, **spots})

    def _reconcile(
        self, g: GpuSample, alloc: Mapping[str, tuple[DeviceOwner, ...]], managed: frozenset[str]
    ) -> GpuSample:
        dev = self._devices.get(g.index)
        if dev is None or dev.identity.get("mig_mode") == "enabled" or not g.procs:
            return g
        keys = (dev.uuid, str(g.index))
        if managed and not any(k in managed for k in keys):
            return g  # not a device the kubelet hands out (reserved by the operator)
        owners = next((alloc[k] for k in keys if k in alloc), ())
        owner_pods = sorted({f"{o.namespace}/{o.pod}" for o in owners})
        where = (
            f"GPU {dev.uuid} allocated to {', '.join(owner_pods)}"
            if owner_pods
            else f"GPU {dev.uuid} allocated to no pod"
        )
        events: list[tuple[str, str]] = []
        for p in g.procs:
            a = p.attribution
            if a is None or p.suspect is not None or a.kind == "lease":
                continue
            if a.kind == "k8s_pod":
                if a.workload in owner_pods:
                    continue
                kind = FOREIGN_POD_USE if owner_pods else UNALLOCATED_USE
                event = (kind, f"pod {a.workload} uses {where}")
            else:
                event = (UNALLOCATED_USE, f"{a.kind} {a.workload}, outside any pod, uses {where}")
            if event not in events:
                events.append(event)
        if not events:
            return g
        return dataclasses.replace(g, events=(*g.events, *events))
