"""Windowing: a node's samples in, one ``UsageWindow`` per window out.

Windows are aligned to multiples of ``window_s`` since the Unix epoch, so that every node's
window ``[k*W, (k+1)*W)`` covers the same interval and the collector can compare nodes
window by window. Within a window the aggregator keeps running sums, never the samples.

Rules (docs/formats.md):
- means and maxima are over the samples in which the reading was available; a reading
  available in no sample is ``None`` with the reason in ``unavailable``;
- the energy counter at a window's start is the last reading before the window (carried
  over), so consecutive windows account for every millijoule; a counter that goes back is
  recorded as an ``energy_counter_reset`` event;
- a GPU known to the node but read in no sample of the window is still reported, with
  ``samples: 0`` and the reason;
- each workload's ``share_permille`` of a GPU comes from per-process SM utilisation when the
  driver reports it for every process (``process_sm``), else from GPU memory
  (``memory``), else equal per sample (``equal``); a single workload is ``exclusive``.
  Shares add up to 1000. Busy GPU time with no visible process is ``unattributed``;
- on a MIG GPU the split is ``mig_slices``: in each sample a workload gets the slices of the
  GPU instance its processes ran in over the GPU's slices (workloads sharing one GPU
  instance split its slices equally), and a GPU instance busy by GPM with no visible process
  is ``unattributed``. Shares are the mean over the samples and add up to the part of the
  GPU in use (at most 1000); ``gpu_ms`` is the same fraction of the sampled time. When a
  process cannot be placed in an instance of known size, or the GPU's slice count is
  unknown, the window falls back to the rules above and ``unavailable["mig_slices"]`` says
  why. Each MIG instance is reported in ``mig`` with its memory, GPM activity, processes and
  workloads;
- ``sharing`` says how the GPU was shared: ``mig``, ``mps`` (an MPS client was seen),
  ``time_slice`` (several workloads otherwise) or ``exclusive``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from attestation.chain import ENERGY_RESET_EVENT
from attestation.statement import (
    UNATTRIBUTED,
    Chain,
    Event,
    GpuWindow,
    Mig,
    MigInstance,
    NodeIo,
    Series,
    UsageWindow,
    Workload,
)
from core.samples import Attribution, DeviceInfo, GpuSample, MigSample, NodeSample

NO_SAMPLE = "no_sample_in_window"
# Sample-level reasons copied into the statement as they are (the rest explain a null field).
_PASSED_REASONS = ("health.", "xid_events", "procs", "mig")
_NO_VISIBLE_PROCESS = (UNATTRIBUTED, "process", "no-visible-process")
# MigInstance field -> the MigInstanceSample reading it comes from (whose reason it inherits).
_MIG_FIELD_SOURCES = {
    "compute_instance_id": "compute_instance_id",
    "uuid": "uuid",
    "slices": "slices",
    "mem_total_bytes": "mem_total_bytes",
    "mem_used_max_bytes": "mem_used_bytes",
    "sm_active_mean_permille": "sm_active_pct",
    "tensor_active_mean_permille": "tensor_active_pct",
}
MAX_GPU_EVENTS = 64  # distinct events kept per GPU per window; more are counted, not listed
# Statement field -> the source field it is computed from (whose reason it inherits).
_FIELD_SOURCES = {
    "energy_start_mj": "energy_mj",
    "energy_end_mj": "energy_mj",
    "power_mean_mw": "power_mw",
    "power_max_mw": "power_mw",
    "util_mean_permille": "util_pct",
    "mem_used_max_bytes": "mem_used_bytes",
    "sm_active_mean_permille": "sm_active_pct",
    "tensor_active_mean_permille": "tensor_active_pct",
    "nvlink_tx_bytes": "nvlink_tx_bytes_per_s",
    "nvlink_rx_bytes": "nvlink_rx_bytes_per_s",
    "pcie_tx_bytes": "pcie_tx_bytes_per_s",
    "pcie_rx_bytes": "pcie_rx_bytes_per_s",
}
_UNSIGNED_CHAIN = Chain(key_id="", seq=0, prev=None)


class _Mean:
    __slots__ = ("total", "n")

    def __init__(self) -> None:
        self.total = 0.0
        self.n = 0

    def add(self, v: float | None) -> None:
        if v is not None:
            self.total += v
            self.n += 1

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass
class _WorkloadAcc:
    attribution: Attribution
    pids: set[int] = field(default_factory=set)
    mem_max_bytes: int | None = None
    # Sums over samples of this workload's fraction of the GPU, by split method.
    sm_weight: float = 0.0
    mem_weight: float = 0.0
    equal_weight: float = 0.0
    mig_weight: float = 0.0  # fraction of the GPU's MIG slices, summed over samples


class _MigAcc:
    """Running sums for one MIG instance in one window."""

    def __init__(self, gi: int, ci: int | None, uuid: str | None) -> None:
        self.gi = gi
        self.ci = ci
        self.uuid = uuid
        self.slices: int | None = None
        self.samples = 0
        self.mem_total: int | None = None
        self.mem_used_max: int | None = None
        self.sm = _Mean()
        self.tensor = _Mean()
        self.pids: set[int] = set()
        self.workloads: set[tuple[str, str, str]] = set()
        self.reasons: dict[str, str] = {}


class _GpuAcc:
    """Running sums for one GPU in one window."""

    def __init__(self, n_buckets: int, energy_carry: int | None) -> None:
        self.samples = 0
        self.util = _Mean()
        self.power = _Mean()
        self.power_max: int | None = None
        self.mem_max: int | None = None
        self.sm = _Mean()
        self.tensor = _Mean()
        self.nvlink_tx = _Mean()
        self.nvlink_rx = _Mean()
        self.pcie_tx = _Mean()
        self.pcie_rx = _Mean()
        self.energy_start = energy_carry
        self.energy_last = energy_carry
        self.events: list[Event] = []
        self.b_util = [0.0] * n_buckets
        self.b_util_n = [0] * n_buckets
        self.b_power = [0.0] * n_buckets
        self.b_power_n = [0] * n_buckets
        self.workloads: dict[tuple[str, str, str], _WorkloadAcc] = {}
        self.all_sm = True  # every process of every sample reported sm_pct
        self.all_mem = True
        self.unattributed_busy = 0
        self.reasons: dict[str, str] = {}
        self.health: dict[str, int] = {}  # max over samples; bitwise OR for *_mask
        self.event_keys: set[tuple[str, str]] = set()
        self.events_dropped = 0
        self.mps = False  # an MPS client was seen
        self.mig: dict[tuple[int, int | None, str | None], _MigAcc] = {}  # by (GI, CI, MIG UUID)
        self.mig_seen = False
        self.mig_total: int | None = None
        self.mig_reasons: dict[str, str] = {}
        self.mig_split_off: str | None = None  # why the window cannot be split by MIG slices


def _permille(pct: float | None) -> int | None:
    return None if pct is None else max(0, min(1000, round(pct * 10)))


def _fractions(weights: Mapping[tuple[str, str, str], float], n: int) -> dict[tuple[str, str, str], int]:
    """Each weight's mean over ``n`` samples as permille of the GPU (fractions of at most 1
    per sample), rounded by largest remainder so that the sum is the rounded total."""
    raw = {k: w * 1000.0 / n for k, w in weights.items()}
    target = min(1000, round(sum(raw.values())))
    out = {k: min(1000, math.floor(v + 1e-9)) for k, v in raw.items()}
    rest = max(0, target - sum(out.values()))
    for k in sorted(raw, key=lambda k: (raw[k] - out[k], k), reverse=True)[:rest]:
        out[k] += 1
    return out


def permille_shares(weights: Mapping[tuple[str, str, str], float]) -> dict[tuple[str, str, str], int]:
    """Largest-remainder rounding of weights to permille summing to exactly 1000 (equal shares
    where every weight is zero): the workloads' ``share_permille`` of a GPU window, here and on
    the Prometheus path (collector/prometheus/rows.py)."""
    total = sum(weights.values())
    if total <= 0:
        n = len(weights)
        weights = {k: 1.0 for k in weights}
        total = float(n)
    raw = {k: w * 1000.0 / total for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    rest = 1000 - sum(out.values())
    for k in sorted(raw, key=lambda k: (raw[k] - out[k], k), reverse=True)[:rest]:
        out[k] += 1
    return out


class WindowAggregator:
    """Aggregates one node's samples into windows.

    ``add(sample)`` returns the windows that the sample closed (usually none, one at a
    boundary); ``flush()`` closes the open window. Returned windows carry an empty chain:
    the signer fills it in.
    """

    def __init__(
        self,
        node_id: str,
        boot_id: str,
        agent_version: str,
        devices: tuple[DeviceInfo, ...],
        *,
        window_s: int = 60,
        bucket_s: int = 10,
        sample_interval_s: float = 1.0,
    ) -> None:
        if window_s <= 0 or bucket_s <= 0 or window_s % bucket_s:
            raise ValueError(f"window_s ({window_s}) must be a positive multiple of bucket_s ({bucket_s})")
        self.node_id = node_id
        self.boot_id = boot_id
        self.agent_version = agent_version
        self.devices = {d.index: d for d in devices}
        self.window_ms = window_s * 1000
        self.bucket_ms = bucket_s * 1000
        self.n_buckets = window_s // bucket_s
        self.sample_interval_ms = round(sample_interval_s * 1000)
        self._start_ms: int | None = None
        self._gpus: dict[int, _GpuAcc] = {}
        self._energy_carry: dict[int, int] = {}
        self._io: dict[str, _Mean] = {}
        self._io_samples = 0
        self._node_reasons: dict[str, str] = {}

    def set_devices(self, devices: tuple[DeviceInfo, ...]) -> None:
        self.devices = {d.index: d for d in devices}

    # -- input --------------------------------------------------------------

    def add(self, sample: NodeSample) -> list[UsageWindow]:
        t_ms = int(sample.t * 1000)
        start = t_ms - t_ms % self.window_ms
        closed: list[UsageWindow] = []
        if self._start_ms is not None and start != self._start_ms:
            if start < self._start_ms:
                raise ValueError(f"sample at {sample.t} is before the open window starting {self._start_ms / 1000}")
            w = self._close()
            if w is not None:
                closed.append(w)
        if self._start_ms is None:
            self._open(start)
        bucket = (t_ms - start) // self.bucket_ms
        for k, v in sample.unavailable.items():
            self._node_reasons.setdefault(k, v)
        for g in sample.gpus:
            acc = self._gpus.get(g.index)
            if acc is None:
                acc = self._gpus[g.index] = _GpuAcc(self.n_buckets, self._energy_carry.get(g.index))
            self._add_gpu(acc, g, bucket)
        if sample.node_io is not None:
            self._io_samples += 1
            io = sample.node_io
            for name in NodeIo.__struct_fields__:
                rate = getattr(io, name + "_per_s")
                m = self._io.get(name)
                if m is None:
                    m = self._io[name] = _Mean()
                m.add(rate)
        return closed

    def _add_gpu(self, acc: _GpuAcc, g: GpuSample, bucket: int) -> None:
        acc.samples += 1
        if g.unavailable:
            for k, v in g.unavailable.items():
                if k not in acc.reasons:
                    acc.reasons[k] = v
        for hk, hv in g.health.items():
            old = acc.health.get(hk)
            acc.health[hk] = hv if old is None else (old | hv if hk.endswith("_mask") else max(old, hv))
        for kind, detail in g.events:
            if (kind, detail) in acc.event_keys:
                continue
            if len(acc.event_keys) >= MAX_GPU_EVENTS:
                acc.events_dropped += 1
                continue
            acc.event_keys.add((kind, detail))
            acc.events.append(Event(kind, detail))
        if g.util_pct is not None:
            acc.util.add(g.util_pct)
            acc.b_util[bucket] += g.util_pct
            acc.b_util_n[bucket] += 1
        if g.power_mw is not None:
            acc.power.add(g.power_mw)
            acc.b_power[bucket] += g.power_mw
            acc.b_power_n[bucket] += 1
            if acc.power_max is None or g.power_mw > acc.power_max:
                acc.power_max = g.power_mw
        if g.mem_used_bytes is not None and (acc.mem_max is None or g.mem_used_bytes > acc.mem_max):
            acc.mem_max = g.mem_used_bytes
        if g.sm_active_pct is not None:
            acc.sm.add(g.sm_active_pct)
        if g.tensor_active_pct is not None:
            acc.tensor.add(g.tensor_active_pct)
        if g.nvlink_tx_bytes_per_s is not None or g.nvlink_rx_bytes_per_s is not None:
            acc.nvlink_tx.add(g.nvlink_tx_bytes_per_s)
            acc.nvlink_rx.add(g.nvlink_rx_bytes_per_s)
        if g.pcie_tx_bytes_per_s is not None or g.pcie_rx_bytes_per_s is not None:
            acc.pcie_tx.add(g.pcie_tx_bytes_per_s)
            acc.pcie_rx.add(g.pcie_rx_bytes_per_s)
        if g.energy_mj is not None:
            if acc.energy_last is not None and g.energy_mj < acc.energy_last:
                acc.events.append(Event(ENERGY_RESET_EVENT, f"counter went from {acc.energy_last} to {g.energy_mj} mJ"))
            if acc.energy_start is None:
                acc.energy_start = g.energy_mj
            acc.energy_last = g.energy_mj
        if g.mig is not None:
            self._add_mig(acc, g, g.mig)
        elif g.procs and acc.mig_split_off is None:
            acc.mig_split_off = "mig_mode_changed"  # processes in a sample without MIG: no slices for them
        if not g.procs:
            if g.util_pct is not None and g.util_pct > 0:
                acc.unattributed_busy += 1
            return
        # Per-workload use in this sample.
        per: dict[tuple[str, str, str], list[float]] = {}
        mem_seen: set[tuple[str, str, str]] = set()  # workloads with a process whose memory was read
        for p in g.procs:
            a = p.attribution or Attribution(UNATTRIBUTED, "process", f"pid:{p.pid}")
            key = (a.tenant, a.kind, a.workload)
            w = acc.workloads.get(key)
            if w is None:
                w = acc.workloads[key] = _WorkloadAcc(a)
            w.pids.add(p.pid)
            if p.via == "mps":
                acc.mps = True
            s = per.setdefault(key, [0.0, 0.0])
            if p.mem_bytes is None:
                acc.all_mem = False
            else:
                s[1] += p.mem_bytes
                mem_seen.add(key)
            if p.sm_pct is None:
                acc.all_sm = False
            else:
                s[0] += p.sm_pct
        sm_total = sum(v[0] for v in per.values())
        mem_total = sum(v[1] for v in per.values())
        equal = 1.0 / len(per)
        for key, (sm, mem) in per.items():
            w = acc.workloads[key]
            w.sm_weight += sm / sm_total if sm_total > 0 else equal
            w.mem_weight += mem / mem_total if mem_total > 0 else equal
            w.equal_weight += equal
            if key in mem_seen and (w.mem_max_bytes is None or mem > w.mem_max_bytes):
                w.mem_max_bytes = int(mem)

    def _add_mig(self, acc: _GpuAcc, g: GpuSample, m: MigSample) -> None:
        """One sample of a MIG GPU: per-instance readings, and each workload's slices."""
        acc.mig_seen = True
        if m.slices_total is not None:
            acc.mig_total = m.slices_total
        for k, v in m.unavailable.items():
            acc.mig_reasons.setdefault(k, v)
        gi_slices: dict[int, int] = {}
        gi_busy: set[int] = set()
        here: list[_MigAcc] = []
        for x in m.instances:
            key = (x.gpu_instance_id, x.compute_instance_id, x.uuid)
            ma = acc.mig.get(key)
            if ma is None:
                ma = acc.mig[key] = _MigAcc(*key)
            here.append(ma)
            ma.samples += 1
            for k, v in x.unavailable.items():
                ma.reasons.setdefault(k, v)
            if x.slices is not None:
                ma.slices = gi_slices[x.gpu_instance_id] = x.slices
            if x.mem_total_bytes is not None:
                ma.mem_total = x.mem_total_bytes
            if x.mem_used_bytes is not None and (ma.mem_used_max is None or x.mem_used_bytes > ma.mem_used_max):
                ma.mem_used_max = x.mem_used_bytes
            ma.sm.add(x.sm_active_pct)
            ma.tensor.add(x.tensor_active_pct)
            if x.sm_active_pct is not None and x.sm_active_pct > 0:
                gi_busy.add(x.gpu_instance_id)
        # Which workloads ran in which GPU instance in this sample.
        per_gi: dict[int, set[tuple[str, str, str]]] = {}
        for p in g.procs:
            a = p.attribution or Attribution(UNATTRIBUTED, "process", f"pid:{p.pid}")
            key3 = (a.tenant, a.kind, a.workload)
            if p.gpu_instance_id is None:
                acc.mig_split_off = acc.mig_split_off or f"process_without_instance: pid {p.pid}"
                continue
            per_gi.setdefault(p.gpu_instance_id, set()).add(key3)
            for ma in here:
                if ma.gi == p.gpu_instance_id and (
                    ma.ci is None or p.compute_instance_id is None or ma.ci == p.compute_instance_id
                ):
                    ma.pids.add(p.pid)
                    ma.workloads.add(key3)
        for gi in gi_busy - set(per_gi):
            per_gi[gi] = {_NO_VISIBLE_PROCESS}
        if not per_gi:
            return
        if m.slices_total is None:
            acc.mig_split_off = (
                acc.mig_split_off or f"slices_total: {m.unavailable.get('slices_total', 'not_reported')}"
            )
            return
        for gi, keys in sorted(per_gi.items()):
            slices = gi_slices.get(gi)
            if slices is None:
                acc.mig_split_off = acc.mig_split_off or f"slices_unknown: GPU instance {gi}"
                continue
            for key3 in keys:
                w = acc.workloads.get(key3)
                if w is None:
                    w = acc.workloads[key3] = _WorkloadAcc(Attribution(*key3))
                w.mig_weight += slices / m.slices_total / len(keys)

    # -- output -------------------------------------------------------------

    def _open(self, start_ms: int) -> None:
        self._start_ms = start_ms
        self._gpus = {}
        self._io = {}
        self._io_samples = 0
        self._node_reasons = {}

    def flush(self) -> UsageWindow | None:
        return self._close()

    def _close(self) -> UsageWindow | None:
        if self._start_ms is None:
            return None
        start = self._start_ms
        gpus = []
        for index in sorted(set(self.devices) | set(self._gpus)):
            gpus.append(self._gpu_window(index, self._gpus.get(index)))
        node_io = None
        if self._io_samples:
            secs = self.window_ms / 1000.0
            vals = {k: (None if m.mean() is None else round(m.mean() * secs)) for k, m in self._io.items()}  # type: ignore[operator]
            node_io = NodeIo(**vals)
        w = UsageWindow(
            node_id=self.node_id,
            boot_id=self.boot_id,
            agent_version=self.agent_version,
            start_ms=start,
            end_ms=start + self.window_ms,
            sample_interval_ms=self.sample_interval_ms,
            chain=_UNSIGNED_CHAIN,
            gpus=tuple(gpus),
            node_io=node_io,
            unavailable=dict(self._node_reasons),
        )
        self._start_ms = None
        return w

    def _gpu_window(self, index: int, acc: _GpuAcc | None) -> GpuWindow:
        dev = self.devices.get(index)
        uuid = dev.uuid if dev else f"unknown-gpu-{index}"
        model = dev.model if dev else "unknown"
        dev_reasons = dict(dev.unavailable) if dev else {"identity": "device_not_enumerated"}
        if acc is None or acc.samples == 0:
            reason = self._node_reasons.get(f"gpu[{index}]", NO_SAMPLE)
            carry = self._energy_carry.get(index)
            return GpuWindow(
                index=index,
                uuid=uuid,
                serial=dev.serial if dev else None,
                model=model,
                mem_total_bytes=dev.mem_total_bytes if dev else None,
                power_limit_mw=dev.power_limit_mw if dev else None,
                samples=0,
                energy_start_mj=carry,
                energy_end_mj=carry,
                power_mean_mw=None,
                power_max_mw=None,
                util_mean_permille=None,
                mem_used_max_bytes=None,
                workloads=(),
                unavailable={**dev_reasons, "readings": reason},
                identity=dict(dev.identity) if dev else {},
                mem_reserved_bytes=dev.mem_reserved_bytes if dev else None,
            )
        if acc.energy_last is not None:
            self._energy_carry[index] = acc.energy_last
        secs = acc.samples * self.sample_interval_ms / 1000.0

        def total(m: _Mean) -> int | None:
            mean = m.mean()
            return None if mean is None else round(mean * secs)

        series = Series(
            bucket_ms=self.bucket_ms,
            util_permille=tuple(
                _permille(acc.b_util[b] / acc.b_util_n[b]) if acc.b_util_n[b] else None for b in range(self.n_buckets)
            ),
            power_mw=tuple(
                round(acc.b_power[b] / acc.b_power_n[b]) if acc.b_power_n[b] else None for b in range(self.n_buckets)
            ),
        )
        workloads, method = self._workloads(acc)
        sharing: str | None = None
        if acc.mig_seen:
            sharing = "mig"
        elif acc.mps:
            sharing = "mps"
        elif workloads:
            sharing = "time_slice" if len(workloads) > 1 else "exclusive"
        power_mean = acc.power.mean()
        values: dict[str, int | None] = {
            "energy_start_mj": acc.energy_start,
            "energy_end_mj": acc.energy_last,
            "power_mean_mw": None if power_mean is None else round(power_mean),
            "power_max_mw": acc.power_max,
            "util_mean_permille": _permille(acc.util.mean()),
            "mem_used_max_bytes": acc.mem_max,
            "sm_active_mean_permille": _permille(acc.sm.mean()),
            "tensor_active_mean_permille": _permille(acc.tensor.mean()),
            "nvlink_tx_bytes": total(acc.nvlink_tx),
            "nvlink_rx_bytes": total(acc.nvlink_rx),
            "pcie_tx_bytes": total(acc.pcie_tx),
            "pcie_rx_bytes": total(acc.pcie_rx),
        }
        reasons = {k: v for k, v in dev_reasons.items()}
        reasons.update({k: v for k, v in acc.reasons.items() if k.startswith(_PASSED_REASONS) and k not in reasons})
        for k in acc.health:
            reasons.pop(f"health.{k}", None)  # read in some sample of the window after all
        if acc.events_dropped:
            reasons["events"] = f"{acc.events_dropped} more distinct event(s) than the {MAX_GPU_EVENTS} listed"
        for name, value in values.items():
            if value is None:
                reasons[name] = acc.reasons.get(_FIELD_SOURCES[name], "not_reported")
        if acc.mig_seen and method != "mig_slices" and workloads:
            reasons["mig_slices"] = acc.mig_split_off or "not_reported"
        return GpuWindow(
            index=index,
            uuid=uuid,
            serial=dev.serial if dev else None,
            model=model,
            mem_total_bytes=dev.mem_total_bytes if dev else None,
            power_limit_mw=dev.power_limit_mw if dev else None,
            samples=acc.samples,
            series=series,
            split_method=method,
            workloads=workloads,
            unavailable=reasons,
            events=tuple(acc.events),
            identity=dict(dev.identity) if dev else {},
            health=dict(acc.health),
            mem_reserved_bytes=dev.mem_reserved_bytes if dev else None,
            sharing=sharing,
            mig=self._mig_window(acc) if acc.mig_seen else None,
            **values,
        )

    @staticmethod
    def _mig_window(acc: _GpuAcc) -> Mig:
        instances = []
        for ma in sorted(acc.mig.values(), key=lambda m: (m.gi, -1 if m.ci is None else m.ci, m.uuid or "")):
            sm, tensor = ma.sm.mean(), ma.tensor.mean()
            values: dict[str, object] = {
                "compute_instance_id": ma.ci,
                "uuid": ma.uuid,
                "slices": ma.slices,
                "mem_total_bytes": ma.mem_total,
                "mem_used_max_bytes": ma.mem_used_max,
                "sm_active_mean_permille": _permille(sm),
                "tensor_active_mean_permille": _permille(tensor),
            }
            reasons = {
                k: ma.reasons.get(src, "not_reported") for k, src in _MIG_FIELD_SOURCES.items() if values[k] is None
            }
            if "procs" in ma.reasons:
                reasons["procs"] = ma.reasons["procs"]
            instances.append(
                MigInstance(
                    gpu_instance_id=ma.gi,
                    compute_instance_id=ma.ci,
                    uuid=ma.uuid,
                    slices=ma.slices,
                    samples=ma.samples,
                    mem_total_bytes=ma.mem_total,
                    mem_used_max_bytes=ma.mem_used_max,
                    sm_active_mean_permille=_permille(sm),
                    tensor_active_mean_permille=_permille(tensor),
                    processes=len(ma.pids),
                    workloads=tuple(sorted(ma.workloads)),
                    unavailable=reasons,
                )
            )
        mig_reasons = dict(acc.mig_reasons)
        if acc.mig_total is None:
            mig_reasons.setdefault("slices_total", "not_reported")
        else:
            mig_reasons.pop("slices_total", None)  # read in some sample of the window after all
        return Mig(slices_total=acc.mig_total, instances=tuple(instances), unavailable=mig_reasons)

    def _workloads(self, acc: _GpuAcc) -> tuple[tuple[Workload, ...], str]:
        weights: dict[tuple[str, str, str], float]
        if acc.unattributed_busy:
            key = (UNATTRIBUTED, "process", "no-visible-process")
            w = acc.workloads.setdefault(key, _WorkloadAcc(Attribution(*key)))
            w.equal_weight += acc.unattributed_busy
            acc.all_sm = acc.all_mem = False
        if not acc.workloads:
            return (), "exclusive"
        if acc.mig_seen and acc.mig_split_off is None and acc.mig_total is not None:
            mig = {k: w.mig_weight for k, w in acc.workloads.items()}
            mig_shares = _fractions(mig, acc.samples)
            return tuple(
                Workload(
                    tenant=k[0],
                    kind=k[1],
                    workload=k[2],
                    processes=len(w.pids),
                    mem_max_bytes=w.mem_max_bytes,
                    share_permille=mig_shares[k],
                    gpu_ms=round(mig[k] * self.sample_interval_ms),
                )
                for k, w in sorted(acc.workloads.items())
            ), "mig_slices"
        if len(acc.workloads) == 1:
            method = "exclusive"
            weights = {k: w.equal_weight for k, w in acc.workloads.items()}
        elif acc.all_sm:
            method = "process_sm"
            weights = {k: w.sm_weight for k, w in acc.workloads.items()}
        elif acc.all_mem:
            method = "memory"
            weights = {k: w.mem_weight for k, w in acc.workloads.items()}
        else:
            method = "equal"
            weights = {k: w.equal_weight for k, w in acc.workloads.items()}
        shares = permille_shares(weights)
        out = tuple(
            Workload(
                tenant=k[0],
                kind=k[1],
                workload=k[2],
                processes=len(w.pids),
                mem_max_bytes=w.mem_max_bytes,
                share_permille=shares[k],
                gpu_ms=round(weights[k] * self.sample_interval_ms),
            )
            for k, w in sorted(acc.workloads.items())
        )
        return out, method
