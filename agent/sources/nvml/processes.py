"""A GPU's processes: the compute list (v3, falling back to older calls), MPS clients, each
process's SM share from NVML's utilisation samples, and, where accounting mode is on,
processes that started and ended between two samples.

A listed PID that the host's /proc does not have, or a process list and utilisation samples
whose PIDs are from different PID namespaces (HAMi-core #112), is reported with a reason,
never attributed to whoever owns that PID number on the host; nor is a PID that the host's
/proc shows as a kernel thread (``suspect="kernel_thread"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeAlias

from agent.sources import procfs
from agent.sources.nvml.api import DeviceHandle, ProcessInfo
from agent.sources.nvml.common import NA_ULONGLONG, NO_INSTANCE, Ctx
from core.samples import ProcessSample

_logger = logging.getLogger(__name__)

_PROCESS_LIST_FUNCTIONS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
MAX_ACCOUNTING_SEEN = 8192  # PIDs remembered per GPU so accounting stats are asked once

Listed: TypeAlias = tuple[ProcessInfo, int | None, int | None]
"""A listed process with the GPU and compute instance whose list showed it (None: unknown)."""


class Processes:
    """Per GPU: the last utilisation-sample timestamp, the PIDs accounting already reported,
    and why accounting is not read; for the driver, the process-list call that works."""

    def __init__(self, c: Ctx, proc_root: str | os.PathLike[str] | None) -> None:
        self._c = c
        self._proc_root = proc_root
        self._list_fn: str | None = None  # the process-list function this driver supports
        self._util_ts: dict[int, int] = {}  # GPU -> last NVML process-sample timestamp (us)
        self._acct_seen: dict[int, dict[int, None]] = {}  # GPU -> PIDs seen (insertion-ordered set)
        self.accounting_off: dict[int, str] = {}  # GPU -> why accounting stats are not read

    def _list_call(self, name: str) -> Callable[[DeviceHandle], Sequence[ProcessInfo]]:
        nvml = self._c.nvml
        if name == "nvmlDeviceGetComputeRunningProcesses_v3":
            return nvml.nvmlDeviceGetComputeRunningProcesses_v3
        if name == "nvmlDeviceGetComputeRunningProcesses_v2":
            return nvml.nvmlDeviceGetComputeRunningProcesses_v2
        return nvml.nvmlDeviceGetComputeRunningProcesses

    def compute_list(
        self, i: int, h: DeviceHandle, un: dict[str, str], key: str = "procs", label: str | None = None
    ) -> list[ProcessInfo] | None:
        """NVML's compute processes on ``h`` (newest API the driver has), or None with the
        reason in ``un[key]`` (logged once as ``label``, default ``key``)."""
        c, nvml = self._c, self._c.nvml
        names: tuple[str, ...] = (
            (self._list_fn,) if self._list_fn is not None else tuple(n for n in _PROCESS_LIST_FUNCTIONS if c.has(n))
        )
        last_reason = "api_absent"
        for name in names:
            try:
                procs = self._list_call(name)(h)
            except nvml.NVMLError as e:
                c.raise_if_lost(e)
                last_reason = c.reason(e)
                if c.is_(e, "FUNCTION_NOT_FOUND"):
                    continue  # an older driver: try the previous version of the call
                break
            except c.k.library_mismatch as e:  # the unversioned call's way
                last_reason = type(e).__name__
                continue
            self._list_fn = name
            return list(procs)
        un[key] = last_reason
        c.note(i, label or key, last_reason)
        return None

    def read(
        self, i: int, h: DeviceHandle, un: dict[str, str], instances: list[Listed] | None = None, partial: bool = False
    ) -> tuple[ProcessSample, ...]:
        """The GPU's processes. On a MIG GPU (``instances`` given) they come from each MIG
        device's own list, tagged with its GPU and compute instance; the parent's aggregate
        list is read only when some instance's list could not be (``partial``), for the
        processes no instance list showed."""
        listed: list[Listed]
        if instances is None:
            listed = [(p, None, None) for p in self.compute_list(i, h, un) or []]
        else:
            listed = list(instances)
            if partial:
                seen = {int(p.pid) for p, _, _ in listed}
                listed += [(p, None, None) for p in self.compute_list(i, h, un) or [] if int(p.pid) not in seen]
        # One PID can appear more than once (MIG instances); sum its memory.
        mem_by_pid: dict[int, int | None] = {}
        via: dict[int, str] = {}
        instance: dict[int, int] = {}
        compute_instance: dict[int, int] = {}
        mps = self._mps(i, h, un)
        entries = [*((p, gi, ci, "compute") for p, gi, ci in listed), *((p, None, None, "mps") for p in mps)]
        for p, known_gi, known_ci, kind in entries:
            pid = int(p.pid)
            if kind == "mps" and via.get(pid) == "compute":
                continue  # already counted from the compute list
            via.setdefault(pid, kind)
            gi = known_gi if known_gi is not None else getattr(p, "gpuInstanceId", NO_INSTANCE)
            if gi is not None and int(gi) != NO_INSTANCE:
                instance.setdefault(pid, int(gi))
            ci = known_ci if known_ci is not None else getattr(p, "computeInstanceId", NO_INSTANCE)
            if ci is not None and int(ci) != NO_INSTANCE:
                compute_instance.setdefault(pid, int(ci))
            used = p.usedGpuMemory
            if used is None or used == NA_ULONGLONG:
                self._c.mark(i, "procs.mem_bytes", un, "NVML_VALUE_NOT_AVAILABLE")
                mem_by_pid[pid] = None
            elif pid not in mem_by_pid:
                mem_by_pid[pid] = int(used)
            elif (prev := mem_by_pid[pid]) is not None:
                mem_by_pid[pid] = prev + int(used)
        sm = self._sm(i, h, un) if mem_by_pid else {}
        if sm and mem_by_pid and not set(sm) & set(mem_by_pid):
            # HAMi-core #112: on some drivers the process list and the utilisation samples
            # give PIDs from different PID namespaces. Neither set can be trusted to match the
            # other, so no per-process SM share is used for this sample.
            self._c.mark(i, "procs.sm_pct", un, "pid_namespace_mismatch")
            sm = {}
        out = [
            self._sample(i, pid, mem_bytes, sm.get(pid), via[pid], instance.get(pid), compute_instance.get(pid), un)
            for pid, mem_bytes in mem_by_pid.items()
        ]
        out.extend(self._accounting_only(i, h, un, set(mem_by_pid)))
        return tuple(out)

    def _sample(
        self,
        i: int,
        pid: int,
        mem_bytes: int | None,
        sm_pct: float | None,
        via: str,
        gi: int | None,
        ci: int | None,
        un: dict[str, str],
    ) -> ProcessSample:
        """One listed process, with its start time from the host's /proc, or why it is suspect."""
        start: int | None = None
        suspect: str | None = None
        if self._proc_root is not None:
            stat = procfs.read_stat(self._proc_root, pid)
            if stat is None:
                # Exited between NVML's list and this read, or not a host PID (NVML gave a
                # container-namespace PID, HAMi-core #112): never attribute it by number.
                self._c.mark(i, "procs.start_time_ticks", un, "proc_unreadable")
                suspect = "pid_not_in_host_proc"
            elif stat.kernel_thread:
                # No GPU process is a kernel thread: the PID is from another namespace.
                start = stat.start_time_ticks
                suspect = "kernel_thread"
                if (i, "procs", "kernel_thread") not in self._c.logged:
                    self._c.logged.add((i, "procs", "kernel_thread"))
                    _logger.warning(
                        "GPU %d: NVML lists PID %d, a kernel thread in the host's /proc: left unattributed "
                        "(a PID from another PID namespace?)",
                        i,
                        pid,
                    )
            else:
                start = stat.start_time_ticks
        return ProcessSample(
            pid=pid,
            mem_bytes=mem_bytes,
            sm_pct=sm_pct,
            start_time_ticks=start,
            via=via,
            gpu_instance_id=gi,
            suspect=suspect,
            compute_instance_id=ci,
        )

    def _mps(self, i: int, h: DeviceHandle, un: dict[str, str]) -> list[ProcessInfo]:
        """MPS clients (nvmlDeviceGetMPSComputeRunningProcesses_v3); [] when MPS is not in use."""
        nvml = self._c.nvml
        procs = self._c.opt(
            i,
            "procs.mps",
            un,
            nvml.nvmlDeviceGetMPSComputeRunningProcesses_v3
            if self._c.has("nvmlDeviceGetMPSComputeRunningProcesses_v3")
            else None,
            h,
        )
        return list(procs) if procs else []

    def _accounting_only(self, i: int, h: DeviceHandle, un: dict[str, str], listed: set[int]) -> list[ProcessSample]:
        """Processes accounting mode saw that ended before this sample could list them.

        Each is reported once, with its peak memory, ``via="accounting"`` and
        ``suspect="exited_before_sample"``: its /proc entry is gone, so it stays unattributed
        (its PID may already belong to someone else).
        """
        c, nvml = self._c, self._c.nvml
        seen = self._acct_seen.setdefault(i, {})
        for pid in listed:
            seen[pid] = None
        mode = c.opt(
            i,
            "procs.accounting",
            un,
            nvml.nvmlDeviceGetAccountingMode if c.has("nvmlDeviceGetAccountingMode") else None,
            h,
        )
        if mode is None:
            self.accounting_off[i] = un.get("procs.accounting", "unknown")
            return []
        if int(mode) != c.k.feature_enabled:
            self.accounting_off[i] = "disabled"
            return []
        self.accounting_off.pop(i, None)
        pids = c.opt(
            i,
            "procs.accounting",
            un,
            nvml.nvmlDeviceGetAccountingPids if c.has("nvmlDeviceGetAccountingPids") else None,
            h,
        )
        out: list[ProcessSample] = []
        stats_fn = nvml.nvmlDeviceGetAccountingStats if c.has("nvmlDeviceGetAccountingStats") else None
        for listed_pid in pids or ():
            pid = int(listed_pid)
            if pid in seen:
                continue
            stats = c.opt(i, "procs.accounting", un, stats_fn, h, pid)
            if stats is None or int(stats.isRunning):
                continue  # still running: the process list will show it
            seen[pid] = None
            peak = stats.maxMemoryUsage
            out.append(
                ProcessSample(
                    pid=pid,
                    mem_bytes=None if peak is None or peak == NA_ULONGLONG else int(peak),
                    via="accounting",
                    suspect="exited_before_sample",
                )
            )
        while len(seen) > MAX_ACCOUNTING_SEEN:
            del seen[next(iter(seen))]
        return out

    def _sm(self, i: int, h: DeviceHandle, un: dict[str, str]) -> dict[int, float]:
        """PID -> mean SM utilisation (%) over NVML's samples since the previous call."""
        c, nvml = self._c, self._c.nvml
        if not c.has("nvmlDeviceGetProcessUtilization"):
            c.mark(i, "procs.sm_pct", un, "api_absent")
            return {}
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(h, self._util_ts.get(i, 0))
        except nvml.NVMLError as e:
            c.raise_if_lost(e)
            if c.is_(e, "NOT_FOUND"):
                return {}  # no samples since the last timestamp: nothing new, not an error
            c.mark(i, "procs.sm_pct", un, c.reason(e))
            return {}
        sums: dict[int, tuple[float, int]] = {}
        last = self._util_ts.get(i, 0)
        for s in samples:
            last = max(last, int(s.timeStamp))
            if s.smUtil > 100:  # sentinel or garbage: not a percentage
                continue
            total, n = sums.get(int(s.pid), (0.0, 0))
            sums[int(s.pid)] = (total + float(s.smUtil), n + 1)
        self._util_ts[i] = last
        return {pid: total / n for pid, (total, n) in sums.items()}
