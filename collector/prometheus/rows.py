"""A chunk's windows as plain values: every aggregate of a GPU's windows at once.

``RowMaker`` (a part of ``WindowBuilder``, collector/prometheus/windows.py) turns the points
of each GPU in a chunk into its columns: one integer array per aggregate, one value per
window, computed key by key on the slices of its windows (means, maxima, the energy counter,
the per-step series, the workloads once per chunk where the GPU's workloads do not change),
with the arithmetic of the window-by-window builder it replaced
(tests/unit/collector/prometheus/test_windows_equivalence.py). Columns travel between
processes at the cost of a copy (an ``array`` pickles as its bytes, where a row of Python
ints and tuples per GPU-window cost more to unpickle than to aggregate):
``WindowBuilder.assemble`` makes the records of them, collector/prometheus/sites.py the
detector's aggregate.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from attestation.chain import ENERGY_RESET_EVENT
from attestation.statement import UNATTRIBUTED, Event, Workload
from collector.detect.config import DetectConfig
from collector.detect.signals import classify_values
from collector.prometheus.coverage import Coverage
from collector.prometheus.queries import _FIELD_KEYS, _PRESENCE, METRIC_OF, NOT_EXPORTED, default_power_limit_mw
from core.window import permille_shares

_MIB = 1 << 20
_NO_VISIBLE_PROCESS = (UNATTRIBUTED, "process", "no-visible-process")

# A GPU's integer columns (``GpuRows.ints``), each ``windows`` long, in this order; then, where
# the step gives >= 2 points a window, the per-step utilisation and power (``windows *
# per_window`` each). Every value is >= 0, so -1 stands for None (no value), never for 0.
# ``SAMPLES`` 0: no point in the window (the GPU is absent from it). ``CLASS``: the window's
# ``signals.classify_values`` for the ``DetectConfig`` the chunk was computed with (-1: not
# classified, where the window has no workload).
(
    SAMPLES,
    MEM_TOTAL,
    POWER_LIMIT,
    ENERGY_START,
    ENERGY_END,
    POWER_MEAN,
    POWER_MAX,
    UTIL,
    MEM_USED,
    SM,
    TENSOR,
    CLASS,
) = range(12)
COLUMNS = 12
NONE = -1


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


# Per window of a GPU: (split_method, workloads).
Attribution = tuple[str, tuple[Workload, ...]]
# One GPU of a chunk: index, UUID, model, identity; its integer columns (an ``array('q')``, or
# a list where a value does not fit in 64 bits); per window its attribution, its unavailable
# fields and its events (the same objects window after window where they do not change, so
# that they pickle once).
GpuRows = tuple[
    int, str, str, dict[str, str], Sequence[int], list[Attribution], list[dict[str, str]], list[tuple[Event, ...]]
]


class ChunkRows:
    """The windows of one chunk as columns: what ``WindowBuilder.compute`` gives and
    ``WindowBuilder.assemble`` turns into records. ``hosts``: (host, its GPUs with a point in
    the chunk), sorted; ``config``: the ``DetectConfig`` the windows were classified with."""

    __slots__ = ("start_ms", "windows", "per_window", "config", "hosts")

    def __init__(
        self,
        start_ms: int,
        windows: int,
        per_window: int,
        config: DetectConfig | None,
        hosts: list[tuple[str, list[GpuRows]]],
    ) -> None:
        self.start_ms = start_ms
        self.windows = windows
        self.per_window = per_window
        self.config = config
        self.hosts = hosts

    def __reduce__(self) -> tuple[type[ChunkRows], tuple[Any, ...]]:
        return (ChunkRows, (self.start_ms, self.windows, self.per_window, self.config, self.hosts))


def _column(values: list[int | None]) -> list[int]:
    """``values`` with None as ``NONE``."""
    return values if None not in values else [NONE if v is None else v for v in values]  # type: ignore[return-value]


def _packed(values: list[int]) -> Sequence[int]:
    """An ``array('q')`` of ``values`` (memcpy to pickle and unpickle), or the list where one
    does not fit in 64 bits (a reading of 10^13 MiB, say)."""
    try:
        return array("q", values)
    except OverflowError:
        return values


class RowMaker:
    """The columns of a chunk's GPUs (``WindowBuilder`` is one); the energy counter carries
    over from chunk to chunk."""

    step_ms: int
    per_window: int
    coverage: Coverage
    _energy_carry: dict[tuple[str, str], int]

    def _hosts_rows(
        self, gpus: Mapping[tuple[str, str], _Gpu], config: DetectConfig | None
    ) -> list[tuple[str, list[GpuRows]]]:
        """Per host (sorted), its GPUs with a point in the chunk, sorted by (index, UUID) as a
        window lists them, with their columns."""
        cov = self.coverage
        windows_of: dict[str, list[tuple[tuple[int, str], GpuRows]]] = {}
        for host, uuid in gpus:
            cov.host_gpus.setdefault(host, set()).add(uuid)
        for (host, uuid), g in gpus.items():
            index = g.index if g.index is not None else 0
            reasons, limit, identity = self._constants(g)
            cols = self._gpu_rows(g, reasons, limit, config)
            if cols is not None:
                windows_of.setdefault(host, []).append(
                    ((index, uuid), (index, uuid, g.model or "unknown", identity, *cols))
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

    def _gpu_rows(
        self, g: _Gpu, base: dict[str, str], table_limit: int | None, config: DetectConfig | None
    ) -> tuple[Sequence[int], list[Attribution], list[dict[str, str]], list[tuple[Event, ...]]] | None:
        """The columns of every window of the chunk for ``g`` (None: no point in the chunk).

        Each aggregate is computed for all windows at once, key by key, on the slices a
        window's points are in, with the same arithmetic as window by window (the values
        are the same to the bit: tests/unit/collector/prometheus/test_windows_equivalence.py
        keeps the window-by-window builder this replaced and compares the two)."""
        p = self.per_window
        vals = g.vals
        n = len(g.atts) // p * p
        windows = n // p
        starts = range(0, n, p)
        pres = [vals[k] for k in _PRESENCE if k in vals]
        if not pres:
            return None
        if all(None not in a for a in pres):
            samples = [p] * windows
        else:
            if len(pres) == 1:
                flags = [v is not None for v in pres[0]]
            else:
                flags = [any(v is not None for v in col) for col in zip(*pres, strict=True)]
            samples = [sum(flags[i : i + p]) for i in starts]
            if not any(samples):
                return None
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
        # A window carries both energy readings or neither.
        if None in e_start or None in e_end:
            e_start, e_end = (
                [None if s is None or e is None else s for s, e in zip(e_start, e_end, strict=True)],
                [None if s is None or e is None else e for s, e in zip(e_start, e_end, strict=True)],
            )
        # Series: per step, where the step gives >= 2 points a window.
        series: list[int] = []
        if p >= 2:
            for key, scale, top in (("util", 10, 1000), ("power", 1000, None)):
                arr = vals.get(key)
                if arr is None:
                    series += [NONE] * n
                elif top is None:
                    series += [NONE if v is None else max(0, round(v * scale)) for v in arr[:n]]
                else:
                    series += [NONE if v is None else max(0, min(top, round(v * scale))) for v in arr[:n]]
        workloads = self._workloads_by_window(g.atts, vals.get("util"), starts, p)
        classes = [NONE] * windows
        if config is not None:
            su = series[:n] if p >= 2 else None
            for w in range(windows):
                if samples[w] and workloads[w][1]:
                    b = None if su is None else [None if v == NONE else v for v in su[w * p : w * p + p]]
                    classes[w] = classify_values(util[w], power_mean[w], limits[w], sm[w], b, config)
        reasons = self._reasons(g, base, reads, samples, limits, e_start)
        ints = [
            *samples,
            *_column(mem_total),
            *_column(limits),
            *_column(e_start),
            *_column(e_end),
            *_column(power_mean),
            *_column(power_max),
            *_column(util),
            *_column(mem_used),
            *_column(sm),
            *_column(tensor),
            *classes,
            *series,
        ]
        return _packed(ints), workloads, reasons, events

    def _reasons(
        self,
        g: _Gpu,
        base: dict[str, str],
        reads: dict[str, list[list[float] | None]],
        samples: list[int],
        limits: list[int | None],
        e_start: list[int | None],
    ) -> list[dict[str, str]]:
        """Per window, the fields it has no value of and why: the chunk's reasons, and what the
        window had no point of (one dict shared by the windows that lack nothing more)."""
        field_reads = [(f, key, reads[key]) for f, key in _FIELD_KEYS if key in reads]
        gappy = [x for _, _, x in field_reads if None in x]
        missing = [False] * len(samples) if not gappy else [None in col for col in zip(*gappy, strict=True)]
        clean = dict(base)
        clean.pop("energy_start_mj", None)
        clean.pop("energy_end_mj", None)
        limit_reason = "power_limit_mw" not in base
        out = [clean] * len(samples)
        for w, s in enumerate(samples):
            no_limit = limits[w] is None and limit_reason
            no_energy = e_start[w] is None
            if not s or not (no_limit or no_energy or missing[w]):
                continue
            reasons = out[w] = dict(base)
            for fieldname, key, x in field_reads:
                if x[w] is None:
                    reasons[fieldname] = f"{METRIC_OF[key]}: no point in window"
            if no_limit:
                reasons["power_limit_mw"] = (
                    f"{METRIC_OF['power_limit']}: no point in window, and model {g.model or 'unknown'!r} not in "
                    "the table of default limits"
                )
            if no_energy:
                why = reasons.get("energy_start_mj") or f"{METRIC_OF['energy']}: no point yet"
                reasons["energy_start_mj"] = reasons["energy_end_mj"] = why
            else:
                reasons.pop("energy_start_mj", None)
                reasons.pop("energy_end_mj", None)
        return out

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


__all__ = ["COLUMNS", "ChunkRows", "GpuRows", "RowMaker"]
