"""What each account's training-shaped GPUs were in recent windows, for accounts linked late.

Accounts of one job are linked only once their nodes have moved together for a while (the
link test stands on ``link_history_windows`` windows, then ``link_confirm_windows`` tests).
Until then each account is its own group, and one below ``min_gpus`` has no run at size, or
none at all below ``run_floor_gpus``. The link test established that they were one job over
the history it used, so the group's run is the sum of its accounts over that history: this
module keeps each account's training-shaped GPUs per window for that span, and ``backfill``
rebuilds the group's run from them when a link is made, so that a run split over small
accounts is held to the same ``min_duration_s`` from its true start as one account's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collector.detect.config import DetectConfig
from collector.detect.runs import ModelUse, Run
from collector.detect.usage import TenantWindow


@dataclass(frozen=True, slots=True)
class _Slot:
    end_ms: int
    strong: float
    weak: float
    models: tuple[tuple[str, float, float], ...]  # (model, GPUs, activity-weighted GPUs)


class Trail:
    def __init__(self, config: DetectConfig) -> None:
        self.config = config
        self._by_tenant: dict[str, dict[int, _Slot]] = {}

    def record(self, s: int, end_ms: int, tws: dict[str, TenantWindow], tenants: Sequence[str], keep_ms: int) -> None:
        """Keep window ``s`` of ``tenants`` (the accounts the linker compared this window: no
        other can be linked); forget what is older than ``keep_ms``."""
        for t in tenants:
            tw = tws[t]
            models: dict[str, list[float]] = {}
            for use in tw.workloads.values():
                if use.strong <= 0 and use.weak <= 0:
                    continue
                for model, (g, a) in use.models.items():
                    m = models.setdefault(model, [0.0, 0.0])
                    m[0] += g
                    m[1] += a
            slots = self._by_tenant.setdefault(t, {})
            slots[s] = _Slot(end_ms, tw.strong, tw.weak, tuple((k, v[0], v[1]) for k, v in sorted(models.items())))
        # A tenant's slots are in the order its windows closed (``s`` only grows): the expired
        # ones are the first few, so each tenant costs a look at its oldest slot.
        oldest = s - keep_ms
        for t in list(self._by_tenant):
            slots = self._by_tenant[t]
            while slots and (first := next(iter(slots))) < oldest:
                del slots[first]
            if not slots:
                del self._by_tenant[t]

    def backfill(
        self, run: Run | None, key: str, members: Sequence[str], fresh: set[str], before_ms: int, gap_ms: int
    ) -> Run | None:
        """The group's run rebuilt over the recorded windows before ``before_ms``.

        ``run``: the group's run after its accounts' runs were folded in (None if none had
        one); ``fresh``: accounts that had no run, whose GPU-seconds are added here (the others'
        are in ``run`` already). The span at size starts where the summed accounts first held
        ``min_gpus`` without a gap of ``gap_ms``; it only ever moves earlier. A weak GPU counts
        where the group's weak GPUs are at least its strong ones, as in a coupled group's window
        (a link is coupling between accounts).
        """
        cfg = self.config
        starts = sorted({st for m in members for st in self._by_tenant.get(m, {}) if st < before_ms})
        run_start: int | None = None
        last_hit = 0
        large_start: int | None = None
        large_end = 0
        large_windows = 0
        at_size: list[float] = []
        peak = 0.0
        per_window: list[tuple[int, int, float]] = []
        for st in starts:
            slots = [sl for m in members if (sl := self._by_tenant.get(m, {}).get(st)) is not None]
            strong = sum(sl.strong for sl in slots)
            weak = sum(sl.weak for sl in slots)
            gpus = strong + (weak if weak >= strong else 0.0)
            end = max(sl.end_ms for sl in slots)
            if gpus < cfg.run_floor_gpus:
                continue
            if run_start is None or st - last_hit >= gap_ms:
                run_start, large_start, large_windows, at_size = st, None, 0, []
            last_hit = end
            per_window.append((st, end, gpus))
            peak = max(peak, gpus)
            if gpus >= cfg.min_gpus:
                if large_start is None or st - large_end >= gap_ms:
                    large_start, large_windows, at_size = st, 0, []
                large_end = end
                large_windows += 1
                at_size.append(gpus)
        if run_start is None or before_ms - last_hit >= gap_ms:
            return run
        if run is None:
            run = Run(group=key, start_ms=run_start, last_hit_end_ms=last_hit)
        else:
            run.start_ms = min(run.start_ms, run_start)
            run.last_hit_end_ms = max(run.last_hit_end_ms, last_hit)
        if large_start is not None and (run.large_start_ms is None or large_start < run.large_start_ms):
            run.large_start_ms = large_start
            run.large_last_end_ms = max(run.large_last_end_ms, large_end)
            run.large_windows = max(run.large_windows, large_windows)
            if len(at_size) > len(run.at_size_gpus):
                run.at_size_gpus = at_size
        run.peak_gpus = max(run.peak_gpus, peak)
        # GPU-seconds of the accounts that had no run of their own, over the run's windows.
        for st, end, _ in per_window:
            if st < run_start:
                continue
            window_s = (end - st) / 1000.0
            for m in fresh:
                sl = self._by_tenant.get(m, {}).get(st)
                if sl is None:
                    continue
                g_m = sum(g for _, g, _ in sl.models)
                run.tenants[m] = run.tenants.get(m, 0.0) + g_m * window_s
                run.gpu_s += g_m * window_s
                for model, g, a in sl.models:
                    mu = run.models.get(model)
                    if mu is None:
                        mu = run.models[model] = ModelUse()
                    mu.gpu_s += g * window_s
                    mu.active_gpu_s += a * window_s
        return run


__all__ = ["Trail"]
