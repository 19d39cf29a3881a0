"""What the detector remembers of recent windows, per tenant, for the coupling tests.

Two time scales (collector/detect/coupling.py):

* **across windows**: each sizeable tenant's load per sampled node and window (the window
  mean of power / limit, else utilisation, over the GPUs the tenant occupies there), and the
  tenant's own level (the mean over all its nodes), for ``coupling_history_windows``. A node
  read once a window ends its window at its own sampling phase (``signals.sample_lag``): its
  point is moved to the window's end, interpolating towards its next reading, and so waits
  one window; the tenant's level waits with it;
* **within windows**: the per-bucket node series, each window's mean removed, for
  ``max(sync_history_windows, link_history_windows)`` windows; only where windows carry
  buckets (samples 10 s apart or closer).

The common component of a test is built here from the other tenants' levels: what most
tenants of the site share in a window (a storage stall, power capping, aligned
checkpoints, a fabric event) is not evidence that any two of them are one job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from collector.detect.config import DetectConfig
from collector.detect.coupling import (
    MIN_COMMON_TENANTS,
    Coupling,
    changes,
    common_component,
    measure,
    median,
    typical_move,
)
from collector.detect.signals import node_series, sample_lag, stable_sample
from collector.detect.usage import TenantWindow

SCALE_WITHIN = "within_windows"
SCALE_ACROSS = "across_windows"
_EXACT_COMMON_SHARE = 0.10
"""Leave the tested tenants out of the common component exactly when they are at least this
share of the reference tenants; below it the site-wide median is the same to within a rank."""


@dataclass(frozen=True)
class GroupCoupling:
    """Coupling of a group's nodes at both scales, and what it amounts to."""

    within: Coupling | None
    across: Coupling | None
    state: str
    """"coupled"; "uncoupled"; "flat" (measured, not coupled, and the series barely move between
    a few excursions: nothing to measure, ``DetectConfig.coupling_flat_change``); "pending"
    (history too short yet); or "unknown" (no series to measure: the data cannot tell)."""
    weak_ok: bool = True
    """Coupled enough for throttled (weak) GPUs to count as the run's: where the levels are
    exact window means, across windows only at ``coupling_exact_min_corr``."""

    @property
    def best(self) -> Coupling | None:
        """The scale that fired (the stronger if both), else the one with more support."""
        cands = [c for c in (self.within, self.across) if c is not None]
        if not cands:
            return None
        return max(cands, key=lambda c: (c.z, c.points))


_LAG_WINDOWS = 5
"""A node's sampling lag is the median of this many windows' (see ``History._lag``)."""
_LAGS_KEPT = 4096
"""Above this many nodes, the lags of nodes not seen within the history are dropped."""


def _raw(n: str, now: dict[str, float], waiting: dict[str, tuple[float, float]]) -> float | None:
    v = now.get(n)
    if v is not None:
        return v
    w = waiting.get(n)
    return None if w is None else w[0]


class History:
    def __init__(self, config: DetectConfig) -> None:
        self.config = config
        span = max(
            config.coupling_history_windows,
            config.link_coarse_history_windows,
            config.sync_history_windows,
            config.link_history_windows,
            1,
        )
        self.starts: deque[int] = deque(maxlen=span)
        self.levels: dict[str, dict[int, dict[str, float]]] = {}  # tenant -> start -> node -> load
        self.tlevel: dict[str, dict[int, float]] = {}  # tenant -> start -> mean load over its nodes
        self.snaps: dict[str, dict[int, dict[str, list[float | None]]]] = {}  # tenant -> start -> node -> buckets
        self.tseries: dict[str, dict[int, list[float | None]]] = {}  # tenant -> start -> tenant buckets
        # tenant -> share of its sampled nodes whose level was an exact window mean (energy
        # counters), in the last window it was recorded.
        self.exact: dict[str, float] = {}
        self.reference: list[str] = []  # tenants that make the common component this window
        self._common_cache: dict[tuple[str, frozenset[str]], list[float | None] | None] = {}
        # Sampling phase per node: its last ``_LAG_WINDOWS`` lags (seconds) and the last window seen.
        self._lags: dict[str, tuple[deque[float], int]] = {}
        # Per tenant, last window's node points that wait for this one: (start, node -> (level, share)).
        self._pending: dict[str, tuple[int, dict[str, tuple[float, float]]]] = {}

    # ------------------------------------------------------------------ intake

    def record(self, s: int, tws: dict[str, TenantWindow]) -> None:
        """Keep this window's levels and series of every sizeable tenant; forget old ones."""
        cfg = self.config
        self.starts.append(s)
        self._common_cache = {}
        sized = [t for t, tw in tws.items() if tw.occupied >= tw.sizeable(cfg.link_min_gpus)]
        sized.sort(key=lambda t: (-tws[t].occupied, t))
        keep = set(sized[: max(0, cfg.link_max_tenants)])
        keep.update(t for t, tw in tws.items() if tw.candidate_gpus() >= cfg.sync_min_gpus)
        self.reference = [t for t in sized[: max(0, cfg.link_max_tenants)]]
        prev_start = self.starts[-2] if len(self.starts) >= 2 else None
        pending = self._pending
        self._pending = {}
        for t in keep:
            tw = tws[t]
            # The tenant's level is the mean over its sampled nodes (the same stable sample
            # window after window), so a big tenant costs what a small one does.
            sample = stable_sample(tw.by_node, cfg.sync_sample_nodes)
            now: dict[str, float] = {}
            waiting: dict[str, tuple[float, float]] = {}
            exact = levelled = 0
            for n in sample:
                lv, is_exact = tw.node_level_exact(n)
                if lv is None:
                    continue
                levelled += 1
                exact += is_exact
                lag = self._lag(n, sample_lag(tw.by_node[n], tw.window_s), s)
                if lag is None or lag <= 0.0:
                    now[n] = lv
                else:
                    waiting[n] = (lv, lag / tw.window_s)
            if levelled:
                self.exact[t] = exact / levelled
            # A node read once a window, early in it, has its point moved to the window's end:
            # linearly towards its next reading, so last window's such points are done now.
            before = pending.get(t)
            if before is not None and before[0] == prev_start:
                done = {
                    n: v0 + f * (now_v - v0)
                    for n, (v0, f) in before[1].items()
                    if (now_v := _raw(n, now, waiting)) is not None
                }
                lv_prev = self.levels.get(t, {}).get(before[0])
                if done:
                    lv_prev = self.levels.setdefault(t, {}).setdefault(before[0], {})
                    lv_prev.update(done)
                if lv_prev:
                    self.tlevel.setdefault(t, {})[before[0]] = sum(lv_prev.values()) / len(lv_prev)
            if waiting:
                self._pending[t] = (s, waiting)
            if now:
                self.levels.setdefault(t, {})[s] = now
                if not waiting:
                    # With points still waiting, the tenant's level waits too: a mean over some
                    # of its nodes now and all of them a window later would be a change of its own.
                    self.tlevel.setdefault(t, {})[s] = sum(now.values()) / len(now)
            snap: dict[str, list[float | None]] = {}
            for n in sample:
                ser = node_series(tw.by_node[n])
                if ser is not None:
                    snap[n] = ser
            if not snap:
                continue
            self.snaps.setdefault(t, {})[s] = snap
            length = max(len(v) for v in snap.values())
            sums = [0.0] * length
            counts = [0] * length
            for ser in snap.values():
                for i, v in enumerate(ser):
                    if v is not None:
                        sums[i] += v
                        counts[i] += 1
            self.tseries.setdefault(t, {})[s] = [x / c if c else None for x, c in zip(sums, counts, strict=True)]
        # Each tenant's windows are in the order they closed: the expired ones come first. The
        # bucket series are kept for the within-windows histories only.
        oldest = self.starts[0]
        within_span = max(cfg.sync_history_windows, cfg.link_history_windows, 1)
        oldest_within = self.starts[-within_span] if len(self.starts) >= within_span else oldest
        if len(self._lags) > _LAGS_KEPT:
            self._lags = {n: v for n, v in self._lags.items() if v[1] >= oldest}
        for store, since in (
            (self.levels, oldest),
            (self.tlevel, oldest),
            (self.snaps, oldest_within),
            (self.tseries, oldest_within),
        ):
            for t in list(store):
                per = store[t]
                while per and (first := next(iter(per))) < since:
                    del per[first]
                if not per:
                    del store[t]
        for t in [t for t in self.exact if t not in self.levels]:
            del self.exact[t]

    def _lag(self, node: str, lag: float | None, s: int) -> float | None:
        """The node's sampling lag: the median of its last ``_LAG_WINDOWS`` (a sample that
        jitters across a bucket's edge does not move the node back and forth). One reading per
        window, however many tenants share the node."""
        entry = self._lags.get(node)
        if lag is not None and (entry is None or entry[1] != s):
            lags = entry[0] if entry is not None else deque(maxlen=_LAG_WINDOWS)
            lags.append(lag)
            entry = self._lags[node] = (lags, s)
        if entry is None or not entry[0]:
            return None
        return median(list(entry[0]))

    # ------------------------------------------------------------------ series

    def across_starts(self, windows: int | None = None) -> list[int]:
        """The last ``windows`` (default ``coupling_history_windows``) window starts."""
        return list(self.starts)[-(windows or self.config.coupling_history_windows) :]

    def within_starts(self, windows: int) -> list[int]:
        return list(self.starts)[-windows:]

    def episodes_across(self, starts: Sequence[int]) -> list[int]:
        k = max(1, self.config.coupling_episode_windows)
        return [i // k for i in range(len(starts))]

    def tenant_levels(self, t: str, starts: Sequence[int]) -> list[float | None]:
        per = self.tlevel.get(t, {})
        return [per.get(st) for st in starts]

    def tenant_buckets(self, t: str, starts: Sequence[int], lengths: Sequence[int]) -> list[float | None]:
        """The tenant's bucket series over ``starts``, window ``i`` padded or cut to ``lengths[i]``."""
        per = self.tseries.get(t, {})
        out: list[float | None] = []
        for st, length in zip(starts, lengths, strict=True):
            v = per.get(st)
            if v is None:
                out.extend([None] * length)
            else:
                out.extend(v[:length])
                out.extend([None] * (length - len(v)))
        return out

    def _reference_without(self, exclude: Collection[str]) -> frozenset[str]:
        """The tenants left out of a test's common component.

        The tested tenants (and those that move with them) are left out, so that a job split
        over several accounts does not mask itself. Where that would leave fewer than
        ``MIN_COMMON_TENANTS`` others, or fewer others than tested ones, nothing is left out:
        what moves most of the site at once is then the site's, and masking the points where
        it makes an excursion keeps a real job's steady co-movement (below those excursions)
        while it removes shocks that would otherwise link every tenant together.
        """
        ref = self.reference
        excluded = [t for t in ref if t in exclude]
        others = len(ref) - len(excluded)
        if others < MIN_COMMON_TENANTS or others < len(excluded):
            return frozenset()
        if len(excluded) >= _EXACT_COMMON_SHARE * len(ref) or len(ref) < 20:
            return frozenset(excluded)
        return frozenset()

    def common_across(self, starts: Sequence[int], exclude: Collection[str]) -> list[float | None] | None:
        """Per window, the median change of the other reference tenants' levels."""
        key = (SCALE_ACROSS + repr(tuple(starts)), self._reference_without(exclude))
        if key in self._common_cache:
            return self._common_cache[key]
        others = [t for t in self.reference if t not in key[1]]
        series = [changes(self.tenant_levels(t, starts)) for t in others]
        out = common_component(series, len(starts)) if len(others) >= MIN_COMMON_TENANTS else None
        self._common_cache[key] = out
        return out

    def common_within(
        self, starts: Sequence[int], lengths: Sequence[int], exclude: Collection[str]
    ) -> list[float | None] | None:
        """Per bucket, the median of the other reference tenants' bucket series."""
        key = (SCALE_WITHIN + repr(tuple(starts)) + repr(tuple(lengths)), self._reference_without(exclude))
        if key in self._common_cache:
            return self._common_cache[key]
        others = [t for t in self.reference if t not in key[1]]
        series = [self.tenant_buckets(t, starts, lengths) for t in others]
        out = common_component(series, sum(lengths)) if len(others) >= MIN_COMMON_TENANTS else None
        self._common_cache[key] = out
        return out

    # ------------------------------------------------------------------ a group's coupling

    def sample_nodes(self, s: int, members: Sequence[str], k: int) -> list[str]:
        """A stable sample of ``k`` of the nodes the members occupy in window ``s``."""
        now: set[str] = set()
        for m in members:
            now.update(self.levels.get(m, {}).get(s, {}))
            now.update(self.snaps.get(m, {}).get(s, {}))
            waiting = self._pending.get(m)
            if waiting is not None and waiting[0] == s:
                now.update(waiting[1])  # occupied now, their point waits for the next window
        return stable_sample(now, k)

    def node_changes(
        self, members: Sequence[str], nodes: Sequence[str], starts: Sequence[int]
    ) -> dict[str, list[float | None]]:
        """Across windows: per node, the window-to-window change of the members' load there."""
        # Per window, the members' level maps in member order (looked up once, not per node).
        empty: dict[str, float] = {}
        per_member = [self.levels.get(m, {}) for m in members]
        columns = [[lv.get(st, empty) for lv in per_member] for st in starts]
        units: dict[str, list[float | None]] = {}
        for n in nodes:
            row: list[float | None] = []
            for maps in columns:
                v: float | None = None
                for lv_map in maps:
                    v = lv_map.get(n)
                    if v is not None:
                        break
                row.append(v)
            units[n] = changes(row)
        return units

    def bucket_lengths(self, members: Sequence[str], starts: Sequence[int]) -> list[int]:
        lengths = []
        for st in starts:
            length = 0
            for m in members:
                for series in self.snaps.get(m, {}).get(st, {}).values():
                    length = max(length, len(series))
            lengths.append(length)
        return lengths

    def node_buckets(
        self, members: Sequence[str], nodes: Sequence[str], starts: Sequence[int], lengths: Sequence[int]
    ) -> dict[str, list[float | None]]:
        """Within windows: per node, the members' per-bucket series, each window's mean removed."""
        units: dict[str, list[float | None]] = {}
        for n in nodes:
            row: list[float | None] = []
            for st, length in zip(starts, lengths, strict=True):
                ser: list[float | None] | None = None
                for m in members:
                    ser = self.snaps.get(m, {}).get(st, {}).get(n)
                    if ser is not None:
                        break
                if ser is None:
                    row.extend([None] * length)
                else:
                    row.extend(ser[:length])
                    row.extend([None] * (length - len(ser)))
            units[n] = row
        return units

    def group_coupling(
        self, s: int, members: Sequence[str], exclude: Collection[str], mostly_weak: bool = False
    ) -> GroupCoupling:
        """Coupling of the group's sampled nodes, at both scales; ``exclude``: tenants kept out of
        the common component (the group and the tenants that move with it). ``mostly_weak``:
        most of the group's candidate GPUs are throttled (weak), as a serving fleet's are: where
        its nodes fall into tight clusters, the tests between clusters decide (coupling.py,
        "Clusters are not independent units"); a group of busy GPUs keeps the tests over every
        pair (one job's nodes in tight groups still agree across them)."""
        cfg = self.config
        sample = self.sample_nodes(s, members, cfg.sync_sample_nodes)
        if len(sample) < 2:
            return GroupCoupling(None, None, "pending" if len(self.starts) < cfg.coupling_min_windows else "unknown")

        # Across windows: one point per window per node (its change since the window before).
        starts = self.across_starts()
        units = self.node_changes(members, sample, starts)
        episodes = self.episodes_across(starts)
        common = self.common_across(starts, exclude)
        across = measure(units, episodes, scale=SCALE_ACROSS, min_points=cfg.coupling_min_windows, common=common)
        if (
            across is None
            and cfg.coupling_early_min_windows < cfg.coupling_min_windows
            and len(starts) > cfg.coupling_early_min_windows  # a change needs two windows
        ):
            # Before the history holds ``coupling_min_windows`` points, only a test far past
            # the bars counts (``coupling_early_min_windows``, as strong as a test that
            # confirms on its own); anything less is still "pending", not "uncoupled". Its
            # episodes are two windows, so that it too has four or more and leaves out two
            # (a shared dip across an episode's edge is left out whole).
            early = measure(
                units,
                [i // 2 for i in range(len(starts))],
                scale=SCALE_ACROSS,
                min_points=cfg.coupling_early_min_windows,
                common=common,
            )
            if early is not None and early.fired(cfg.coupling_strong_corr, 2 * cfg.coupling_min_z):
                across = early

        # Within windows: the buckets of each window, mean-removed, over a shorter history.
        # Where the history holds fewer buckets than a node needs (``sync_min_points``: at a
        # 30 s step, 2 buckets a window over 10 windows), no node can count and ``measure``
        # would give None: the series are not built.
        wstarts = self.within_starts(cfg.sync_history_windows)
        lengths = self.bucket_lengths(members, wstarts)
        within = None
        bunits: dict[str, list[float | None]] = {}
        if lengths and sum(lengths) >= max(1, cfg.sync_min_points):
            bunits = self.node_buckets(members, sample, wstarts, lengths)
            eps = [i for i, length in enumerate(lengths) for _ in range(length)]
            common = self.common_within(wstarts, lengths, exclude)
            within = measure(bunits, eps, scale=SCALE_WITHIN, min_points=cfg.sync_min_points, common=common)

        if mostly_weak:
            within = None if within is None else (within.between_clusters or within)
            across = None if across is None else (across.between_clusters or across)
        within_fired = within is not None and within.fired(cfg.sync_min_corr, cfg.coupling_min_z)
        fired = within_fired or (across is not None and across.fired(cfg.coupling_min_corr, cfg.coupling_min_z))
        # Weak GPUs count for a run only where its nodes are coupled as one job's are. Across
        # windows that bar depends on what the points are: exact window means (energy counters
        # over windows of two readings or more) of one synchronous job's nodes agree closely,
        # while point readings alias the step and agree far less; a weak agreement of exact
        # means over GPUs that are all weak is a serving fleet following shared demand
        # (``coupling_exact_min_corr``). Strong GPUs keep the low bar: a group whose coupled
        # nodes are only some of its nodes (a tenant's training beside its serving, or every
        # unattributed GPU of a site) has a low median however coupled the job in it is.
        weak_min = cfg.coupling_min_corr
        if self.exact_share(members) >= 0.5:
            weak_min = max(weak_min, cfg.coupling_exact_min_corr)
        weak_ok = within_fired or (across is not None and across.fired(weak_min, cfg.coupling_min_z))
        if across is not None:
            across = replace(across, weak_min_corr=weak_min)
        if within is not None:
            within = replace(within, weak_min_corr=cfg.sync_min_corr)
        if fired:
            state = "coupled"
        elif within or across:
            # Not coupled: evidence of independent nodes only where their series move. Pinned
            # GPUs read the same value window after window, one job's and a fleet's alike.
            moves = [typical_move(u) for u, c in ((units, across), (bunits, within)) if c is not None]
            flat = all(m is not None and m < cfg.coupling_flat_change for m in moves)
            state = "flat" if flat else "uncoupled"
        else:
            # Nothing measured: "pending" while the history is still too short for the
            # across-windows scale (it will be measurable), "unknown" when it is long enough and
            # the series are flat or missing (the data cannot tell).
            longest = max((sum(1 for v in row if v is not None) for row in units.values()), default=0)
            state = "pending" if longest < cfg.coupling_min_windows else "unknown"
        return GroupCoupling(within, across, state, weak_ok)

    def exact_share(self, members: Sequence[str]) -> float:
        """Mean over the members recorded lately of the share of their sampled nodes whose
        level was an exact window mean (energy counters); 0 where none was recorded."""
        shares = [v for m in members if (v := self.exact.get(m)) is not None]
        return sum(shares) / len(shares) if shares else 0.0


__all__ = ["GroupCoupling", "History", "SCALE_ACROSS", "SCALE_WITHIN"]
