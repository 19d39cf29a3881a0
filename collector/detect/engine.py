"""The event-time detector: usage windows in, ``large_training`` findings out.

Windows arrive per node in order, interleaved arbitrarily across nodes. The engine buffers
them by window start and processes whole windows in event-time order. A window closes

* when every node seen in the last ``active_node_windows`` closed windows has reported it
  (or a later window, which means it skipped this one), or
* when the newest event time seen is ``allowed_lateness_s`` past the window's end.

Before any window has closed nothing is known about which nodes exist, so the first window
closes by lateness only. A statement for a window that already closed is late: it is
counted and dropped, never folded into the past.

Per closed window: each GPU is classified (``signals.classify``); its use is attributed to
the tenants on it by ``share_permille``; per group of tenants (today a group is one tenant;
``_group_of`` is the seam for linking accounts) the engine counts training-shaped GPUs and
nodes, measures synchrony across a stable sample of the group's nodes, and keeps a run going
across windows (tolerating ``max_gap_windows`` missing). A run of ``min_gpus`` for
``min_duration_s`` with synchrony evidence, or of ``size_alone_gpus``, raises a finding.
Everything a finding says was known at its ``detected_at``: there is no look-ahead.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from attestation.statement import GpuWindow, UsageWindow
from collector.detect import flops
from collector.detect.config import DetectConfig
from collector.detect.findings import KIND_LARGE_TRAINING, SEVERITIES, Finding, finding_id, rfc3339_ms
from collector.detect.opacity import Opacity, opacity
from collector.detect.signals import STRONG, WEAK, classify, node_series, pooled_correlation, stable_sample
from collector.tenants import TenantDirectory

_logger = logging.getLogger(__name__)

_MS = 1000
_SECONDS_PER_HOUR = 3600.0
_SECONDS_PER_DAY = 86400.0


@dataclass
class _ModelUse:
    """GPU-seconds and activity-weighted GPU-seconds on one GPU model."""

    gpu_s: float = 0.0
    active_gpu_s: float = 0.0


@dataclass
class _GroupWindow:
    """What one group of tenants did in one window, split by GPU class."""

    gpus: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # by class
    nodes: list[dict[str, float]] = field(default_factory=lambda: [{}, {}, {}])  # class -> node -> gpus
    by_node: dict[str, list[GpuWindow]] = field(default_factory=dict)  # candidate GPUs per node
    tenants: dict[str, float] = field(default_factory=dict)
    # class -> model -> [gpus, activity-weighted gpus]
    models: list[dict[str, list[float]]] = field(default_factory=lambda: [{}, {}, {}])
    util_sum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    util_w: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    power_sum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    power_w: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    sm_sum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    sm_w: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    tensor_sum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    tensor_w: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


@dataclass
class _Run:
    group: str
    start_ms: int
    last_hit_end_ms: int
    tenants: dict[str, float] = field(default_factory=dict)  # tenant -> GPU-seconds
    windows: int = 0
    large_start_ms: int | None = None
    large_last_end_ms: int = 0
    large_windows: int = 0
    gpu_s: float = 0.0
    models: dict[str, _ModelUse] = field(default_factory=dict)
    peak_gpus: float = 0.0
    peak_nodes: int = 0
    last_gpus: float = 0.0
    last_nodes: int = 0
    last_window_s: float = 0.0
    last_rate_active_flops: float | None = None  # activity-weighted peak FLOP/s in the last window
    sums: dict[str, list[float]] = field(default_factory=dict)  # signal -> [sum, weight]
    sync: float | None = None
    sync_pairs: int = 0
    sync_nodes: int = 0
    sync_max: float | None = None
    weak_counted_windows: int = 0
    finding: Finding | None = None
    emitted: Finding | None = None


@dataclass
class EngineStats:
    statements: int = 0
    windows_closed: int = 0
    late_dropped: int = 0
    duplicates_dropped: int = 0
    gpus_processed: int = 0


def _group_of(tenant: str) -> str:
    """The group a tenant's use counts towards. Linking accounts into groups plugs in here."""
    return tenant


class DetectorEngine:
    """Online, event-time detector. Feed ``observe`` with verified windows; call ``finish`` at end."""

    def __init__(self, config: DetectConfig, tenants: TenantDirectory) -> None:
        self.config = config
        self.tenants = tenants
        self.stats = EngineStats()
        self._open: dict[int, dict[str, UsageWindow]] = {}
        self._open_end: dict[int, int] = {}
        self._heap: list[int] = []
        self._last_closed_start: int | None = None
        self._max_event_ms = 0
        self._node_latest: dict[str, int] = {}
        self._recent_nodes: deque[frozenset[str]] = deque(maxlen=max(1, config.active_node_windows))
        self._expected: frozenset[str] = frozenset()
        self._pending: set[str] = set()
        self._pending_for: int | None = None
        self._history: dict[str, deque[dict[str, list[float | None]]]] = {}
        self._history_start: dict[str, int] = {}
        self._runs: dict[str, _Run] = {}
        self._findings: dict[str, Finding] = {}
        self._opacity_cache: dict[tuple[str, int], Opacity] = {}
        self._warned_late = False

    # ------------------------------------------------------------------ intake

    def observe(self, w: UsageWindow) -> list[Finding]:
        """Take one verified window; return findings newly raised or materially updated."""
        self.stats.statements += 1
        s = w.start_ms
        if self._last_closed_start is not None and s <= self._last_closed_start:
            self.stats.late_dropped += 1
            if not self._warned_late:
                _logger.warning(
                    "late window from %s at %s dropped: that window already closed (counted in stats)",
                    w.node_id,
                    rfc3339_ms(s),
                )
                self._warned_late = True
            return []
        bucket = self._open.get(s)
        if bucket is None:
            bucket = self._open[s] = {}
            self._open_end[s] = w.end_ms
            heapq.heappush(self._heap, s)
        elif w.node_id in bucket:
            self.stats.duplicates_dropped += 1
            return []
        bucket[w.node_id] = w
        if w.end_ms > self._open_end[s]:
            self._open_end[s] = w.end_ms
        if s > self._node_latest.get(w.node_id, -1):
            self._node_latest[w.node_id] = s
        if w.end_ms > self._max_event_ms:
            self._max_event_ms = w.end_ms
        if self._pending_for is not None and s >= self._pending_for:
            self._pending.discard(w.node_id)
        return self._drain(final=False)

    def finish(self) -> list[Finding]:
        """End of input: close every buffered window; return what was raised or updated."""
        out = self._drain(final=True)
        seen = {f.id for f in out}
        for run in self._runs.values():
            if run.finding is not None and run.finding is not run.emitted and run.finding.id not in seen:
                run.emitted = run.finding
                out.append(run.finding)
        return out

    def findings(self) -> list[Finding]:
        """Every finding raised so far, in its latest state, ordered by detection."""
        return sorted(self._findings.values(), key=lambda f: (f.detected_at_ms, f.id))

    # ------------------------------------------------------------------ window closing

    def _drain(self, final: bool) -> list[Finding]:
        out: list[Finding] = []
        lateness_ms = self.config.allowed_lateness_s * _MS
        while self._heap:
            s = self._heap[0]
            if not final and not (self._max_event_ms >= self._open_end[s] + lateness_ms or self._complete(s)):
                break
            heapq.heappop(self._heap)
            windows = self._open.pop(s)
            self._open_end.pop(s)
            out.extend(self._close(s, windows))
        return out

    def _complete(self, s: int) -> bool:
        if not self._expected:
            return False  # cold start: nodes not yet known; close by lateness only
        if self._pending_for != s:
            self._pending_for = s
            latest = self._node_latest
            self._pending = {n for n in self._expected if latest.get(n, -1) < s}
        return not self._pending

    def _close(self, s: int, windows: dict[str, UsageWindow]) -> list[Finding]:
        self._last_closed_start = s
        self.stats.windows_closed += 1
        self._recent_nodes.append(frozenset(windows))
        self._expected = frozenset().union(*self._recent_nodes)
        self._pending_for = None
        groups = self._aggregate([windows[n] for n in sorted(windows)])
        end = max(w.end_ms for w in windows.values())
        return self._update_runs(s, end, groups)

    # ------------------------------------------------------------------ per window

    def _aggregate(self, windows: list[UsageWindow]) -> dict[str, _GroupWindow]:
        cfg = self.config
        groups: dict[str, _GroupWindow] = {}
        gpus_seen = 0
        for w in windows:
            node = w.node_id
            for g in w.gpus:
                gpus_seen += 1
                if not g.workloads:
                    continue
                cls = classify(g, cfg)
                if not cls:
                    continue
                u = g.util_mean_permille
                lim = g.power_limit_mw
                pf = g.power_mean_mw / lim if (g.power_mean_mw is not None and lim) else None
                sm = g.sm_active_mean_permille
                tc = g.tensor_active_mean_permille
                activity = sm / 1000 if sm is not None else (u / 1000 if u is not None else 1.0)
                for wl in g.workloads:
                    share = wl.share_permille / 1000
                    if share <= 0:
                        continue
                    key = _group_of(wl.tenant)
                    gw = groups.get(key)
                    if gw is None:
                        gw = groups[key] = _GroupWindow()
                    gw.gpus[cls] += share
                    nodes = gw.nodes[cls]
                    nodes[node] = nodes.get(node, 0.0) + share
                    gw.tenants[wl.tenant] = gw.tenants.get(wl.tenant, 0.0) + share
                    lst = gw.by_node.get(node)
                    if lst is None:
                        gw.by_node[node] = [g]
                    elif lst[-1] is not g:
                        lst.append(g)
                    m = gw.models[cls].get(g.model)
                    if m is None:
                        gw.models[cls][g.model] = [share, share * activity]
                    else:
                        m[0] += share
                        m[1] += share * activity
                    if u is not None:
                        gw.util_sum[cls] += u * share
                        gw.util_w[cls] += share
                    if pf is not None:
                        gw.power_sum[cls] += pf * share
                        gw.power_w[cls] += share
                    if sm is not None:
                        gw.sm_sum[cls] += sm * share
                        gw.sm_w[cls] += share
                    if tc is not None:
                        gw.tensor_sum[cls] += tc * share
                        gw.tensor_w[cls] += share
        self.stats.gpus_processed += gpus_seen
        return groups

    def _sync(self, key: str, s: int, gw: _GroupWindow | None) -> tuple[float | None, int, int]:
        """Record this window's node series for ``key`` and return (correlation, pairs, nodes)."""
        cfg = self.config
        hist = self._history.get(key)
        if gw is None or gw.gpus[STRONG] + gw.gpus[WEAK] < cfg.sync_min_gpus or len(gw.by_node) < 2:
            if hist is not None:
                hist.append({})
            return None, 0, 0
        if hist is None:
            hist = self._history[key] = deque(maxlen=max(1, cfg.sync_history_windows))
        sample = stable_sample(gw.by_node, cfg.sync_sample_nodes)
        snap: dict[str, list[float | None]] = {}
        for n in sample:
            ser = node_series(gw.by_node[n])
            if ser is not None:
                snap[n] = ser
        hist.append(snap)
        corr, pairs = pooled_correlation(list(hist), sample, cfg.sync_min_points)
        return corr, pairs, len(sample)

    def _update_runs(self, s: int, end: int, groups: dict[str, _GroupWindow]) -> list[Finding]:
        cfg = self.config
        out: list[Finding] = []
        window_s = (end - s) / _MS
        gap_ms = (cfg.max_gap_windows + 1) * (end - s)
        keys = sorted(set(groups) | set(self._history) | set(self._runs))
        for key in keys:
            gw = groups.get(key)
            corr, pairs, sampled = self._sync(key, s, gw)
            run = self._runs.get(key)
            if gw is None:
                if run is not None and s - run.last_hit_end_ms >= gap_ms:
                    self._end_run(key)
                continue
            weak_counts = corr is not None and corr >= cfg.weak_sync_corr
            classes = (STRONG, WEAK) if weak_counts else (STRONG,)
            gpus = sum(gw.gpus[c] for c in classes)
            node_set: set[str] = set(gw.nodes[STRONG])
            if weak_counts:
                node_set.update(gw.nodes[WEAK])
            if gpus < cfg.run_floor_gpus:
                if run is not None and s - run.last_hit_end_ms >= gap_ms:
                    self._end_run(key)
                continue
            if run is not None and s - run.last_hit_end_ms >= gap_ms:
                self._end_run(key)
                run = None
            if run is None:
                run = self._runs[key] = _Run(group=key, start_ms=s, last_hit_end_ms=end)
            self._account(run, gw, classes, gpus, len(node_set), window_s, corr, pairs, sampled, weak_counts)
            run.last_hit_end_ms = end
            if gpus >= cfg.min_gpus:
                if run.large_start_ms is None or s - run.large_last_end_ms >= gap_ms:
                    run.large_start_ms = s
                    run.large_windows = 0
                run.large_last_end_ms = end
                run.large_windows += 1
            f = self._evaluate(run, end)
            if f is not None:
                out.append(f)
        # Histories of groups with nothing left to say are dropped to bound memory.
        for key in [k for k, h in self._history.items() if k not in self._runs and not any(h)]:
            del self._history[key]
        return out

    def _account(
        self,
        run: _Run,
        gw: _GroupWindow,
        classes: tuple[int, ...],
        gpus: float,
        nodes: int,
        window_s: float,
        corr: float | None,
        pairs: int,
        sampled: int,
        weak_counts: bool,
    ) -> None:
        run.windows += 1
        run.gpu_s += gpus * window_s
        for t, share in gw.tenants.items():
            run.tenants[t] = run.tenants.get(t, 0.0) + share * window_s
        rate = 0.0
        rate_known = True
        for c in classes:
            for model, (g, active) in gw.models[c].items():
                mu = run.models.get(model)
                if mu is None:
                    mu = run.models[model] = _ModelUse()
                mu.gpu_s += g * window_s
                mu.active_gpu_s += active * window_s
                peak = flops.lookup(model)
                if peak is None:
                    rate_known = False
                else:
                    rate += peak.bf16_dense_flops * active
            for name, sums, ws in (
                ("util", gw.util_sum, gw.util_w),
                ("power", gw.power_sum, gw.power_w),
                ("sm", gw.sm_sum, gw.sm_w),
                ("tensor", gw.tensor_sum, gw.tensor_w),
            ):
                acc = run.sums.setdefault(name, [0.0, 0.0])
                acc[0] += sums[c] * window_s
                acc[1] += ws[c] * window_s
        run.last_rate_active_flops = rate if rate_known else None
        run.last_gpus = gpus
        run.last_nodes = nodes
        run.last_window_s = window_s
        run.peak_gpus = max(run.peak_gpus, gpus)
        run.peak_nodes = max(run.peak_nodes, nodes)
        if weak_counts:
            run.weak_counted_windows += 1
        if corr is not None:
            run.sync = corr
            run.sync_pairs = pairs
            run.sync_nodes = sampled
            run.sync_max = corr if run.sync_max is None else max(run.sync_max, corr)

    def _end_run(self, key: str) -> None:
        run = self._runs.pop(key, None)
        if run is not None and run.finding is not None:
            _logger.info("run %s of %s ended at %s", run.finding.id, key, rfc3339_ms(run.last_hit_end_ms))

    # ------------------------------------------------------------------ findings

    def _opacity(self, tenant: str, start_ms: int) -> Opacity:
        day = start_ms // (_MS * int(_SECONDS_PER_DAY))
        k = (tenant, day)
        o = self._opacity_cache.get(k)
        if o is None:
            start_date = dt.datetime.fromtimestamp(start_ms / _MS, tz=dt.UTC).date()
            o = opacity(self.tenants.get(tenant), True, start_date, self.config.opacity)
            self._opacity_cache[k] = o
        return o

    def _evaluate(self, run: _Run, end_ms: int) -> Finding | None:
        cfg = self.config
        if run.finding is None:
            if run.large_start_ms is None or run.large_last_end_ms != end_ms:
                return None
            if run.large_last_end_ms - run.large_start_ms < cfg.min_duration_s * _MS:
                return None
            synced = run.sync is not None and run.sync >= cfg.sync_min_corr
            if not (synced or run.last_gpus >= cfg.size_alone_gpus):
                return None
            detected_at = end_ms
        else:
            detected_at = run.finding.detected_at_ms
        f = self._build(run, detected_at, end_ms)
        run.finding = f
        self._findings[f.id] = f
        prev = run.emitted
        if prev is None or self._material(prev, f):
            run.emitted = f
            return f
        return None

    def _material(self, prev: Finding, f: Finding) -> bool:
        cfg = self.config
        if prev.severity != f.severity or prev.tenants != f.tenants or prev.nodes != f.nodes:
            return True
        if abs(f.gpus - prev.gpus) > cfg.update_gpus_fraction * max(prev.gpus, 1):
            return True
        return f.gpu_hours >= prev.gpu_hours * (1.0 + cfg.update_gpu_hours_fraction)

    def _build(self, run: _Run, detected_at_ms: int, end_ms: int) -> Finding:
        cfg = self.config
        tenants = tuple(sorted(run.tenants))
        primary = max(run.tenants.items(), key=lambda kv: (kv[1], kv[0]))[0]
        ops = [self._opacity(t, run.start_ms) for t in tenants]
        op = max(ops, key=lambda o: o.score)
        if len(tenants) > 1:
            reasons = tuple(f"{t}: {r}" for t, o in zip(tenants, ops, strict=True) for r in o.reasons)
            op = Opacity(op.score, reasons)
        gpus = int(round(run.peak_gpus))
        gpu_hours = run.gpu_s / _SECONDS_PER_HOUR

        # FLOP: peak dense BF16 x activity-weighted GPU-seconds x MFU band; upper: FP8 peak x GPU-seconds.
        known_active = 0.0
        upper = 0.0
        unknown_models: list[str] = []
        peaks: dict[str, dict[str, Any]] = {}
        for model, mu in sorted(run.models.items()):
            peak = flops.lookup(model)
            if peak is None:
                unknown_models.append(model)
                continue
            known_active += peak.bf16_dense_flops * mu.active_gpu_s
            upper += peak.upper_flops * mu.gpu_s
            peaks[model] = {
                "table_key": peak.key,
                "bf16_dense_flops": peak.bf16_dense_flops,
                "fp8_dense_flops": peak.fp8_dense_flops,
                "source": peak.source,
            }
        flop_estimate: tuple[float, float] | None
        flop_upper: float | None
        if unknown_models:
            flop_estimate = None
            flop_upper = None
            flop_reason: str | None = f"peak throughput unknown for GPU model(s): {', '.join(unknown_models)}"
        else:
            flop_estimate = (cfg.mfu_low * known_active, cfg.mfu_high * known_active)
            flop_upper = upper
            flop_reason = None

        projection: dict[str, Any]
        if run.last_rate_active_flops is None:
            projection = {"note": "unavailable: the rate needs every GPU model's peak", "per_day": None}
        else:
            lo_day = cfg.mfu_low * run.last_rate_active_flops * _SECONDS_PER_DAY
            hi_day = cfg.mfu_high * run.last_rate_active_flops * _SECONDS_PER_DAY
            mid_day = (lo_day + hi_day) / 2
            done_mid = 0.0 if flop_estimate is None else (flop_estimate[0] + flop_estimate[1]) / 2
            to_threshold: dict[str, float | None] = {}
            for name, th in (
                ("watch", cfg.flop_watch),
                ("flag", cfg.flop_flag),
                ("report", cfg.flop_report),
                ("report_high", cfg.flop_report_high),
            ):
                to_threshold[f"{name} {th:.0e}"] = (
                    0.0 if done_mid >= th else (round((th - done_mid) / mid_day, 2) if mid_day > 0 else None)
                )
            projection = {
                "per_day": [lo_day, hi_day],
                f"total_after_{cfg.projection_days}_days": [
                    (flop_estimate[0] if flop_estimate else 0.0) + lo_day * cfg.projection_days,
                    (flop_estimate[1] if flop_estimate else 0.0) + hi_day * cfg.projection_days,
                ],
                "days_to_threshold_at_current_rate": to_threshold,
                "note": (
                    f"if the run keeps its last window's rate ({run.last_gpus:.0f} GPUs): "
                    "a projection, not a measurement"
                ),
            }

        def mean(name: str, scale: float) -> float | None:
            acc = run.sums.get(name)
            if acc is None or acc[1] <= 0:
                return None
            return round(acc[0] / acc[1] / scale, 3)

        util = mean("util", 1000.0)
        power = mean("power", 1.0)
        sm = mean("sm", 1000.0)
        tensor = mean("tensor", 1000.0)
        duration_s = (run.large_last_end_ms - (run.large_start_ms or run.start_ms)) / _MS
        synced = run.sync is not None and run.sync >= cfg.sync_min_corr

        def signal(value: float | None, threshold: float, unit: str) -> dict[str, Any]:
            return {
                "value": value,
                "threshold": threshold,
                "unit": unit,
                "fired": None if value is None else value >= threshold,
            }

        signals = {
            "concurrent_training_gpus": signal(float(gpus), cfg.min_gpus, "GPUs"),
            "size_alone": signal(float(run.last_gpus), cfg.size_alone_gpus, "GPUs"),
            "duration_at_size_s": signal(duration_s, cfg.min_duration_s, "s"),
            "util_mean": signal(util, cfg.strong_util_permille / 1000, "fraction of time busy"),
            "power_fraction_of_limit": signal(power, cfg.strong_power_permille / 1000, "mean power / limit"),
            "sm_active_mean": signal(sm, cfg.min_sm_active_permille / 1000, "fraction"),
            "tensor_active_mean": {"value": tensor, "unit": "fraction", "fired": None},
            "synchrony_corr": {
                **signal(None if run.sync is None else round(run.sync, 3), cfg.sync_min_corr, "mean pair correlation"),
                "max": None if run.sync_max is None else round(run.sync_max, 3),
                "pairs": run.sync_pairs,
                "nodes_sampled": run.sync_nodes,
                "history_windows": cfg.sync_history_windows,
            },
        }
        if tensor is None:
            signals["tensor_active_mean"]["note"] = "not reported: unknown"
        if sm is None:
            signals["sm_active_mean"]["note"] = "not reported: unknown"
        if run.sync is None:
            signals["synchrony_corr"]["note"] = "no node series with enough points: unknown"

        # Severity: magnitude from size and FLOP, shifted by opacity, capped for transparent tenants.
        size_level = sum(1 for th in (cfg.min_gpus, cfg.size_alone_gpus, cfg.large_gpus) if gpus >= th)
        flop_lo = flop_estimate[0] if flop_estimate else 0.0
        flop_ths = (cfg.flop_watch, cfg.flop_flag, cfg.flop_report, cfg.flop_report_high)
        flop_level = sum(1 for th in flop_ths if flop_lo >= th)
        magnitude = max(size_level, flop_level)
        if op.score < cfg.transparent_opacity_max:
            sev = 0
        elif op.score >= cfg.opaque_opacity_min:
            sev = min(3, magnitude)
        else:
            sev = max(0, min(3, magnitude - 1))
        size_s = min(1.0, max(0.0, math.log2(max(gpus, 1) / 32) / 7))
        flop_mid = 0.0 if flop_estimate is None else (flop_estimate[0] + flop_estimate[1]) / 2
        flop_s = min(1.0, max(0.0, (math.log10(flop_mid) - 22) / 4)) if flop_mid > 0 else 0.0
        evidence_s = 1.0 if synced else 0.8
        score = (0.4 + 0.6 * max(size_s, flop_s)) * evidence_s * (0.3 + 0.7 * op.score)
        if sev == 0:
            score = min(score, 0.3)

        models = {m: round(mu.gpu_s / max(run.gpu_s, 1e-9) * run.peak_gpus) for m, mu in sorted(run.models.items())}
        evidence: dict[str, Any] = {
            "signals": signals,
            "nodes": run.peak_nodes,
            "nodes_last_window": run.last_nodes,
            "gpus_last_window": round(run.last_gpus, 1),
            "gpu_models": models,
            "windows_counted": run.windows,
            "windows_at_size": run.large_windows,
            "throttled_gpus_counted_windows": run.weak_counted_windows,
            "last_window_end": rfc3339_ms(end_ms),
            "gpu_seconds": round(run.gpu_s, 1),
            "flop": {
                "estimate": None if flop_estimate is None else list(flop_estimate),
                "upper_bound": flop_upper,
                "method": (
                    f"peak dense BF16 x activity-weighted GPU-seconds x MFU {cfg.mfu_low}..{cfg.mfu_high}; "
                    "upper bound: peak dense FP8 (BF16 where no FP8) x GPU-seconds"
                ),
                "unavailable": flop_reason,
                "peaks": peaks,
            },
            "projection": projection,
            "opacity_by_tenant": {t: o.to_json() for t, o in zip(tenants, ops, strict=True)},
            "memory_note": "memory use is not evidence: inference servers preallocate ~90% of GPU memory",
        }
        return Finding(
            id=finding_id(KIND_LARGE_TRAINING, (run.group,), run.start_ms),
            kind=KIND_LARGE_TRAINING,
            tenant=primary,
            tenants=tenants,
            severity=SEVERITIES[sev],
            started_at_ms=run.start_ms,
            detected_at_ms=detected_at_ms,
            updated_at_ms=end_ms,
            gpus=gpus,
            nodes=run.peak_nodes,
            gpu_hours=gpu_hours,
            flop_estimate=flop_estimate,
            score=round(min(1.0, max(0.0, score)), 4),
            opacity=op,
            evidence=evidence,
        )


def run_offline(windows: Iterable[UsageWindow], config: DetectConfig, tenants: TenantDirectory) -> list[Finding]:
    """Feed every window and finish; return every finding in its final state."""
    engine = DetectorEngine(config, tenants)
    for w in windows:
        engine.observe(w)
    engine.finish()
    return engine.findings()


__all__ = ["DetectorEngine", "EngineStats", "run_offline"]
