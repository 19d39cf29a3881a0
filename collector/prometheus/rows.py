"""A chunk's windows as plain values: every aggregate of a GPU's windows at once.

``RowMaker`` (a part of ``WindowBuilder``, collector/prometheus/windows.py) turns the points
of each GPU in a chunk into one row per window, key by key on the slices of its windows
(means, maxima, the energy counter, the per-step series, the workloads once per chunk where
the GPU's workloads do not change), with the arithmetic of the window-by-window builder it
replaced (tests/unit/collector/prometheus/test_windows_equivalence.py). The rows are cheap to
pickle: ``WindowBuilder.assemble`` makes the records of them, collector/prometheus/sites.py
the detector's aggregate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attestation.chain import ENERGY_RESET_EVENT
from attestation.statement import UNATTRIBUTED, Event, Workload
from collector.prometheus.coverage import Coverage
from collector.prometheus.queries import _FIELD_KEYS, _PRESENCE, METRIC_OF, NOT_EXPORTED, default_power_limit_mw
from core.window import permille_shares

_MIB = 1 << 20
_NO_VISIBLE_PROCESS = (UNATTRIBUTED, "process", "no-visible-process")


class _Gpu:
    __slots__ = ("host", "uuid", "index", "model", "pci", "vals", "atts")

    def __init__(self, host: str, uuid: str, n: int) -> None:
        self.host = host
        self.uuid = uuid
        self.index: int | None = None
        self.model: str | None = None
        self.pci: str | None = None
        self.vals: dict[str, list[float | None]] = {}
        # Per step: the workloads the utilisation series named at that step (None: no series there).
        self.atts: list[tuple[tuple[str, str, str], ...] | None] = [None] * n


# One GPU-window as plain values (cheap to pickle), in this order: samples, mem_total_bytes,
# power_limit_mw, energy_start_mj, energy_end_mj, power_mean_mw, power_max_mw,
# util_mean_permille, mem_used_max_bytes, sm_active_mean_permille, tensor_active_mean_permille,
# the series' util and power tuples (None: no series), split_method, workloads, unavailable, events.
_Row = tuple[Any, ...]
# One GPU of a chunk: index, UUID, model, identity, and its row per window (None: absent).
_GpuRows = tuple[int, str, str, dict[str, str], list[_Row | None]]


class ChunkRows:
    """The windows of one chunk as plain values: what ``WindowBuilder.compute`` gives and
    ``WindowBuilder.assemble`` turns into records. ``hosts``: (host, its GPUs), sorted."""

    __slots__ = ("start_ms", "windows", "hosts")

    def __init__(self, start_ms: int, windows: int, hosts: list[tuple[str, list[_GpuRows]]]) -> None:
        self.start_ms = start_ms
        self.windows = windows
        self.hosts = hosts

    def __reduce__(self) -> tuple[type[ChunkRows], tuple[int, int, list[tuple[str, list[_GpuRows]]]]]:
        return (ChunkRows, (self.start_ms, self.windows, self.hosts))


class RowMaker:
    """The rows of a chunk's GPUs (``WindowBuilder`` is one); the energy counter carries over
    from chunk to chunk."""

    step_ms: int
    per_window: int
    coverage: Coverage
    _energy_carry: dict[tuple[str, str], int]

    def _hosts_rows(self, gpus: Mapping[tuple[str, str], _Gpu]) -> list[tuple[str, list[_GpuRows]]]:
        """Per host (sorted), its GPUs sorted by (index, UUID) as a window lists them, with their rows."""
        cov = self.coverage
        windows_of: dict[str, list[tuple[tuple[int, str], _GpuRows]]] = {}
        for host, uuid in gpus:
            cov.host_gpus.setdefault(host, set()).add(uuid)
        for (host, uuid), g in gpus.items():
            index = g.index if g.index is not None else 0
            reasons, limit, identity = self._constants(g)
            per_window = self._gpu_rows(g, reasons, limit)
            windows_of.setdefault(host, []).append(
                ((index, uuid), (index, uuid, g.model or "unknown", identity, per_window))
            )
        return [(host, [r for _, r in sorted(items)]) for host, items in sorted(windows_of.items())]

    def _constants(self, g: _Gpu) -> tuple[dict[str, str], int | None, dict[str, str]]:
        """What is the same in every window of the chunk for ``g``: reasons for what this
        chunk has no series of at all, the table's power limit, the identity text."""
        reasons: dict[str, str] = {"serial": NOT_EXPORTED}
        for name in ("nvlink_tx_bytes", "nvlink_rx_bytes", "pcie_tx_bytes", "pcie_rx_bytes"):
            reasons[name] = "not read from Prometheus"
        for fieldname, key in _FIELD_KEYS:
            if key not in g.vals:
                reasons[fieldname] = f"{METRIC_OF[key]} not in Prometheus"
        limit = default_power_limit_mw(g.model or "")
        if limit is None and "power_limit" not in g.vals:
            reasons["power_limit_mw"] = (
                f"{METRIC_OF['power_limit']} not exported and model {g.model or 'unknown'!r} not in the "
                "table of default limits (collector/prometheus/queries.py)"
            )
        if self.per_window < 2:
            reasons["series"] = f"the step ({self.step_ms // 1000} s) gives one point per window"
        identity = {"source": "prometheus"}
        if g.pci:
            identity["pci_bus_id"] = g.pci
        if g.index is None:
            identity["index"] = "no gpu label: index 0 is a placeholder"
        return reasons, limit, identity

    def _gpu_rows(self, g: _Gpu, base: dict[str, str], table_limit: int | None) -> list[_Row | None]:
        """The rows of every window of the chunk for ``g`` (None: no point in that window).

        Each aggregate is computed for all windows at once, key by key, on the slices a
        window's points are in, with the same arithmetic as window by window (the values
        are the same to the bit: tests/unit/collector/prometheus/test_windows.py keeps the
        window-by-window builder this replaced and compares the two)."""
        p = self.per_window
        vals = g.vals
        n = len(g.atts) // p * p
        windows = n // p
        starts = range(0, n, p)
        pres = [vals[k] for k in _PRESENCE if k in vals]
        if not pres:
            return [None] * windows
        if all(None not in a for a in pres):
            samples = [p] * windows
        else:
            if len(pres) == 1:
                flags = [v is not None for v in pres[0]]
            else:
                flags = [any(v is not None for v in col) for col in zip(*pres, strict=True)]
            samples = [sum(flags[i : i + p]) for i in starts]
            if not any(samples):
                return [None] * windows
        reads = {k: _reads(arr, starts, p) for k, arr in vals.items()}
        none_w: list[Any] = [None] * windows
        r = reads.get("util")
        util = (
            none_w if r is None else [None if x is None else max(0, min(1000, round(sum(x) / len(x) * 10))) for x in r]
        )
        r = reads.get("power")
        power_mean: list[int | None] = none_w
        power_max: list[int | None] = none_w
        if r is not None:
            power_mean = [None if x is None else max(0, round(sum(x) / len(x) * 1000)) for x in r]
            rmax = reads.get("power_max") or none_w
            power_max = [None if x is None else max(0, round(max(y or x) * 1000)) for x, y in zip(r, rmax, strict=True)]
        r = reads.get("mem_used")
        mem_used = none_w if r is None else [None if x is None else max(0, round(max(x) * _MIB)) for x in r]
        r = reads.get("mem_total")
        mem_total = none_w if r is None else [None if x is None else max(0, round(max(x) * _MIB)) for x in r]
        r = reads.get("sm")
        sm = (
            none_w
            if r is None
            else [None if x is None else max(0, min(1000, round(sum(x) / len(x) * 1000))) for x in r]
        )
        r = reads.get("tensor")
        tensor = (
            none_w
            if r is None
            else [None if x is None else max(0, min(1000, round(sum(x) / len(x) * 1000))) for x in r]
        )
        r = reads.get("power_limit")
        limits: list[int | None] = (
            [table_limit] * windows
            if r is None
            else [round(x[-1] * 1000) if x is not None and x[-1] > 0 else table_limit for x in r]
        )
        e_start, e_end, events = self._energy(g, reads.get("energy"), vals.get("energy"), starts, p)
        # Series: per step, where the step gives >= 2 points a window.
        if p >= 2:
            arr = vals.get("util")
            if arr is None:
                s_util: list[tuple[int | None, ...]] = [p * (None,)] * windows
            else:
                u = [None if v is None else max(0, min(1000, round(v * 10))) for v in arr[:n]]
                s_util = [tuple(u[i : i + p]) for i in starts]
            arr = vals.get("power")
            if arr is None:
                s_power: list[tuple[int | None, ...]] = [p * (None,)] * windows
            else:
                pw = [None if v is None else max(0, round(v * 1000)) for v in arr[:n]]
                s_power = [tuple(pw[i : i + p]) for i in starts]
        else:
            s_util = s_power = [None] * windows  # type: ignore[list-item]
        workloads = self._workloads_by_window(g.atts, vals.get("util"), starts, p)
        # Reasons: the chunk's, and per window what it had no point of.
        field_reads = [(f, key, reads[key]) for f, key in _FIELD_KEYS if key in reads]
        gappy = [x for _, _, x in field_reads if None in x]
        missing = [False] * windows if not gappy else [None in col for col in zip(*gappy, strict=True)]
        clean = dict(base)
        clean.pop("energy_start_mj", None)
        clean.pop("energy_end_mj", None)
        limit_reason = "power_limit_mw" not in base
        rows: list[_Row | None] = []
        for w in range(windows):
            s = samples[w]
            if not s:
                rows.append(None)
                continue
            pl = limits[w]
            es, ee = e_start[w], e_end[w]
            reasons = clean
            if (pl is None and limit_reason) or es is None or ee is None or missing[w]:
                reasons = dict(base)
                for fieldname, key, x in field_reads:
                    if x[w] is None:
                        reasons[fieldname] = f"{METRIC_OF[key]}: no point in window"
                if pl is None and limit_reason:
                    reasons["power_limit_mw"] = (
                        f"{METRIC_OF['power_limit']}: no point in window, and model {g.model or 'unknown'!r} not in "
                        "the table of default limits"
                    )
                if es is None or ee is None:
                    es = ee = None
                    why = reasons.get("energy_start_mj") or f"{METRIC_OF['energy']}: no point yet"
                    reasons["energy_start_mj"] = reasons["energy_end_mj"] = why
                else:
                    reasons.pop("energy_start_mj", None)
                    reasons.pop("energy_end_mj", None)
            split, wl = workloads[w]
            rows.append(
                (
                    s,
                    mem_total[w],
                    pl,
                    es,
                    ee,
                    power_mean[w],
                    power_max[w],
                    util[w],
                    mem_used[w],
                    sm[w],
                    tensor[w],
                    s_util[w],
                    s_power[w],
                    split,
                    wl,
                    reasons,
                    events[w],
                )
            )
        return rows

    def _energy(
        self,
        g: _Gpu,
        reads: list[list[float] | None] | None,
        arr: list[float | None] | None,
        starts: range,
        p: int,
    ) -> tuple[list[int | None], list[int | None], list[tuple[Event, ...]]]:
        """Per window (energy_start_mj, energy_end_mj, events): carried over from the last
        reading before the window, as on the agent; a counter that goes back is an event."""
        windows = len(starts)
        ckey = (g.host, g.uuid)
        carry = self._energy_carry.get(ckey)
        no_events: list[tuple[Event, ...]] = [()] * windows
        if reads is None or arr is None:
            return [carry] * windows, [carry] * windows, no_events
        n = windows * p
        if None not in arr[:n]:
            e = [round(v) for v in arr[:n]]  # type: ignore[arg-type]
            if e and min(e) >= 0 and (carry is None or carry <= e[0]) and e == sorted(e):
                # The common case: a counter that only rises, a reading at every step.
                first = e[0] if carry is None else carry
                e_start: list[int | None] = [first, *(e[i - 1] for i in starts[1:])]
                e_end: list[int | None] = [e[i + p - 1] for i in starts]
                self._energy_carry[ckey] = e[n - 1]
                return e_start, e_end, no_events
        e_start, e_end, events = [], [], []
        for pts in reads:
            es: int | None = carry
            last = carry
            evs: list[Event] = []
            if pts is not None:
                for v in pts:
                    x = round(v)
                    if x < 0:
                        continue
                    if last is not None and x < last:
                        evs.append(Event(ENERGY_RESET_EVENT, f"counter went from {last} to {x} mJ"))
                    if es is None:
                        es = x
                    last = x
                carry = last
            e_start.append(es)
            e_end.append(last)
            events.append(tuple(evs))
        if carry is not None:
            self._energy_carry[ckey] = carry
        return e_start, e_end, events

    def _workloads_by_window(
        self,
        atts: list[tuple[tuple[str, str, str], ...] | None],
        util: list[float | None] | None,
        starts: range,
        p: int,
    ) -> list[tuple[str, tuple[Workload, ...]]]:
        """Per window (split_method, workloads): per step with a utilisation point, who its
        series named (shared equally); busy with no workload label is ``no-visible-process``."""
        windows = len(starts)
        a0 = atts[0] if atts else None
        if atts.count(a0) == len(atts) and (a0 is None or a0):
            # The same workloads at every step (the common case): the same in every window.
            return [self._workloads(atts[:p], None if util is None else util[:p])] * windows
        return [self._workloads(atts[i : i + p], None if util is None else util[i : i + p]) for i in starts]

    def _workloads(
        self, atts: list[tuple[tuple[str, str, str], ...] | None], util_w: list[float | None] | None
    ) -> tuple[str, tuple[Workload, ...]]:
        weights: dict[tuple[str, str, str], float] = {}
        for j, a in enumerate(atts):
            if a is None:
                continue
            if len(a) == 1:
                k3 = a[0]
                weights[k3] = weights.get(k3, 0.0) + 1.0
            elif a:
                share = 1.0 / len(a)
                for k3 in a:
                    weights[k3] = weights.get(k3, 0.0) + share
            elif util_w is not None:
                u = util_w[j]
                if u is not None and u > 0:
                    weights[_NO_VISIBLE_PROCESS] = weights.get(_NO_VISIBLE_PROCESS, 0.0) + 1.0
        if len(weights) == 1:
            ((k3, wt),) = weights.items()
            return "exclusive", (Workload(k3[0], k3[1], k3[2], 0, None, 1000, round(wt * self.step_ms)),)
        if weights:
            shares = permille_shares(weights)
            return "equal", tuple(
                Workload(k3[0], k3[1], k3[2], 0, None, shares[k3], round(wt * self.step_ms))
                for k3, wt in sorted(weights.items())
            )
        return "exclusive", ()


def _reads(arr: list[float | None], starts: range, p: int) -> list[list[float] | None]:
    """Per window, the points read in it (None: none)."""
    if None not in arr:
        return [arr[i : i + p] for i in starts]  # type: ignore[misc]
    out: list[list[float] | None] = []
    for i in starts:
        got = [v for v in arr[i : i + p] if v is not None]
        out.append(got or None)
    return out


__all__ = ["ChunkRows", "RowMaker"]
