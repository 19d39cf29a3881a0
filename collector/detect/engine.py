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
the tenants on it by ``share_permille``. Tenants are then grouped: two accounts whose
tenant-level load series move together, sample by sample, for ``link_confirm_windows``
windows in a row (a Fisher-z test on the zero-lag correlation, so unrelated busy tenants do
not pass by chance) are linked, and a group is a connected set of linked tenants
(``_group_of``). Per group the engine counts training-shaped GPUs and nodes, measures
synchrony across a stable sample of the group's nodes, and keeps a run going across windows
(tolerating ``max_gap_windows`` missing). Runs, synchrony and finding ids are keyed by group;
when accounts are linked their runs merge and the finding names every member.

A run of ``min_gpus`` for ``min_duration_s`` raises a finding when synchrony fires. Where
synchrony could not be measured (the data has no per-bucket series: unknown, not evidence
either way) one workload id across nodes, or ``size_alone_gpus`` strong GPUs, stands in for
it; where it was measured and did not fire, size alone raises nothing. Nothing keys on
tenant or workload names: workload ids are used only as opaque identities.
Everything a finding says was known at its ``detected_at``: there is no look-ahead.

A restarted collector does not start blind: ``warm_start`` prepares the engine for a replay
of the recent stored windows, at least ``history_span_ms`` of them (collector/warmup.py
chooses them), given the findings already stored. A replayed run of a stored finding's group that was going
on while that finding was last recorded continues it (same id, ``started_at`` and
``detected_at``, its totals up to ``updated_at`` taken from it and not counted twice); until
the replay has a full history span behind it, no new finding is raised, since synchrony and
links computed from a partial history are not what the detector decided live. To keep every
stored finding of a run still going within that span of the present, a finding is re-emitted
at least once per history span even when nothing material changed.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import math
import operator
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


@dataclass(slots=True)
class _ClassUse:
    """What one group's GPUs of one class (STRONG or WEAK) did in one window.

    Every GPU counts by its workload's share; ``*_sum`` is a signal x share summed over the
    GPUs that report the signal and ``*_w`` those GPUs' shares. Plain float attributes (with
    slots) rather than per-class lists: ``_aggregate`` updates them for every workload on
    every GPU of the site, and ``use.util_sum += x`` is cheaper than ``gw.util_sum[cls] += x``.
    """

    gpus: float = 0.0
    nodes: dict[str, float] = field(default_factory=dict)  # node -> GPUs
    models: dict[str, list[float]] = field(default_factory=dict)  # model -> [GPUs, activity-weighted GPUs]
    util_sum: float = 0.0
    util_w: float = 0.0
    power_sum: float = 0.0
    power_w: float = 0.0
    sm_sum: float = 0.0
    sm_w: float = 0.0
    tensor_sum: float = 0.0
    tensor_w: float = 0.0

    def merge(self, o: _ClassUse) -> None:
        self.gpus += o.gpus
        for n, v in o.nodes.items():
            self.nodes[n] = self.nodes.get(n, 0.0) + v
        for m, (g, a) in o.models.items():
            cur = self.models.get(m)
            if cur is None:
                self.models[m] = [g, a]
            else:
                cur[0] += g
                cur[1] += a
        self.util_sum += o.util_sum
        self.util_w += o.util_w
        self.power_sum += o.power_sum
        self.power_w += o.power_w
        self.sm_sum += o.sm_sum
        self.sm_w += o.sm_w
        self.tensor_sum += o.tensor_sum
        self.tensor_w += o.tensor_w


def _class_uses() -> tuple[_ClassUse, _ClassUse, _ClassUse]:
    return _ClassUse(), _ClassUse(), _ClassUse()


@dataclass
class _GroupWindow:
    """What one group of tenants did in one window, split by GPU class."""

    # Indexed by class (signals.NOT_TRAINING, WEAK, STRONG); NOT_TRAINING's stays empty.
    by_class: tuple[_ClassUse, _ClassUse, _ClassUse] = field(default_factory=_class_uses)
    by_node: dict[str, list[GpuWindow]] = field(default_factory=dict)  # candidate GPUs per node
    tenants: dict[str, float] = field(default_factory=dict)
    # workload id (opaque) -> node -> strong GPUs: one job spanning nodes is job evidence
    workload_nodes: dict[str, dict[str, float]] = field(default_factory=dict)

    def candidate_gpus(self) -> float:
        """Training-shaped GPUs, strong and weak."""
        return self.by_class[STRONG].gpus + self.by_class[WEAK].gpus

    def merge(self, o: _GroupWindow) -> None:
        """Add another tenant's window (a group is the sum of its members)."""
        for mine_c, theirs_c in zip(self.by_class, o.by_class, strict=True):
            mine_c.merge(theirs_c)
        for n, gl in o.by_node.items():
            mine = self.by_node.get(n)
            if mine is None:
                self.by_node[n] = list(gl)
            else:
                mine.extend(g for g in gl if all(g is not x for x in mine))
        for t, v in o.tenants.items():
            self.tenants[t] = self.tenants.get(t, 0.0) + v
        for wl, nodes in o.workload_nodes.items():
            mine_w = self.workload_nodes.setdefault(wl, {})
            for n, v in nodes.items():
                mine_w[n] = mine_w.get(n, 0.0) + v

    def shared_workload_gpus(self, min_nodes: int) -> float:
        """Strong GPUs of the largest single workload id that spans ``min_nodes`` nodes or more."""
        best = 0.0
        for nodes in self.workload_nodes.values():
            if len(nodes) >= min_nodes:
                best = max(best, sum(nodes.values()))
        return best


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
    last_strong_gpus: float = 0.0
    last_shared_workload_gpus: float = 0.0
    finding_id: str | None = None
    merged_from: list[str] = field(default_factory=list)
    finding: Finding | None = None
    emitted: Finding | None = None
    counted_to_ms: int = 0  # warm start: windows ending by then are in a stored finding's totals

    def absorb(self, o: _Run) -> None:
        """Fold another run of the same (now linked) group into this one."""
        self.start_ms = min(self.start_ms, o.start_ms)
        self.last_hit_end_ms = max(self.last_hit_end_ms, o.last_hit_end_ms)
        for t, v in o.tenants.items():
            self.tenants[t] = self.tenants.get(t, 0.0) + v
        self.windows = max(self.windows, o.windows)
        if o.large_start_ms is not None:
            if self.large_start_ms is None or o.large_start_ms < self.large_start_ms:
                self.large_start_ms = o.large_start_ms
            self.large_last_end_ms = max(self.large_last_end_ms, o.large_last_end_ms)
            self.large_windows = max(self.large_windows, o.large_windows)
        self.gpu_s += o.gpu_s
        for m, mu in o.models.items():
            cur = self.models.setdefault(m, _ModelUse())
            cur.gpu_s += mu.gpu_s
            cur.active_gpu_s += mu.active_gpu_s
        self.peak_gpus = max(self.peak_gpus, o.peak_gpus, self.last_gpus + o.last_gpus)
        self.peak_nodes = max(self.peak_nodes, o.peak_nodes, self.last_nodes + o.last_nodes)
        for name, (a, w) in o.sums.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += a
            acc[1] += w
        if o.sync_max is not None:
            self.sync_max = o.sync_max if self.sync_max is None else max(self.sync_max, o.sync_max)
        self.weak_counted_windows = max(self.weak_counted_windows, o.weak_counted_windows)
        self.counted_to_ms = max(self.counted_to_ms, o.counted_to_ms)
        # The earliest finding survives (its id and detected_at); the other is superseded.
        mine, theirs = self.finding, o.finding
        if theirs is not None and (mine is None or theirs.detected_at_ms < mine.detected_at_ms):
            if mine is not None:
                self.merged_from.append(mine.id)
            self.finding, self.emitted, self.finding_id = theirs, o.emitted, o.finding_id
        elif theirs is not None:
            self.merged_from.append(theirs.id)
        self.merged_from.extend(o.merged_from)


def history_span_ms(config: DetectConfig, window_ms: int) -> int:
    """How far back in event time the detector's decisions reach, for windows of ``window_ms``.

    Synchrony pools ``sync_history_windows`` windows; a link needs ``link_history_windows`` of
    series and then ``link_confirm_windows`` tests in a row; the nodes a window waits for are
    those of the last ``active_node_windows``; a run is raised once it has held its size for
    ``min_duration_s`` (from the start of its first window at size). A detector that has seen
    this span of windows decides as one that has seen everything before it.
    """
    windows = max(
        config.sync_history_windows,
        config.link_history_windows + config.link_confirm_windows,
        config.active_node_windows,
    )
    return max(windows * window_ms, config.min_duration_s * _MS + window_ms)


@dataclass
class EngineStats:
    statements: int = 0
    windows_closed: int = 0
    late_dropped: int = 0
    duplicates_dropped: int = 0
    gpus_processed: int = 0


def _group_of(tenant: str, parent: dict[str, str]) -> str:
    """The representative of ``tenant``'s linked group (union-find root, path-halving)."""
    while True:
        p = parent.get(tenant, tenant)
        if p == tenant:
            return tenant
        gp = parent.get(p, p)
        parent[tenant] = gp
        tenant = gp


def _corr(a: list[float | None], b: list[float | None]) -> tuple[float, int]:
    """Pearson correlation over the positions both have; (0.0, n) when either is flat."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in zip(a, b, strict=False):
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    n = len(xs)
    if n < 3:
        return 0.0, n
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sxy = syy = 0.0
    for x, y in zip(xs, ys, strict=True):
        dx = x - mx
        dy = y - my
        sxx += dx * dx
        syy += dy * dy
        sxy += dx * dy
    if sxx <= 1e-12 or syy <= 1e-12:
        return 0.0, n
    return sxy / math.sqrt(sxx * syy), n


def _fisher_z(r: float, n: int) -> float:
    """atanh(r) * sqrt(n - 3): ~N(0, 1) for unrelated series of n points."""
    if n <= 3:
        return 0.0
    r = min(max(r, -0.999999), 0.999999)
    return math.atanh(r) * math.sqrt(n - 3)


def _unit(vec: list[float | None]) -> tuple[list[float], int] | None:
    """Centre over the present points, missing -> 0, scale to unit length; None if flat."""
    present = [v for v in vec if v is not None]
    if len(present) < 3:
        return None
    m = sum(present) / len(present)
    xs = [0.0 if v is None else v - m for v in vec]
    ss = sum(x * x for x in xs)
    if ss <= 1e-12:
        return None
    k = 1.0 / math.sqrt(ss)
    return [x * k for x in xs], len(present)


@dataclass
class _Cluster:
    members: list[str]
    sums: list[float]
    counts: list[int]
    unit: list[float] | None = None

    def add(self, vec: list[float | None]) -> None:
        for i, v in enumerate(vec):
            if v is not None:
                self.sums[i] += v
                self.counts[i] += 1
        u = _unit(self.mean())
        self.unit = None if u is None else u[0]

    def mean(self) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.sums, self.counts, strict=True)]


class DetectorEngine:
    """Online, event-time detector. Feed ``observe`` with verified windows; call ``finish`` at end."""

    def __init__(self, config: DetectConfig, tenants: TenantDirectory) -> None:
        self.config = config
        self.tenants = tenants
        self._reset()

    def _reset(self) -> None:
        config = self.config
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
        # tenant -> window start -> node -> per-bucket series (the tenant's sampled nodes)
        self._snaps: dict[str, dict[int, dict[str, list[float | None]]]] = {}
        # tenant -> window start -> tenant-level series (mean over its sampled nodes)
        self._tseries: dict[str, dict[int, list[float | None]]] = {}
        self._recent_starts: deque[int] = deque(maxlen=max(1, config.sync_history_windows, config.link_history_windows))
        self._agree: dict[tuple[str, str], int] = {}
        self._links: dict[tuple[str, str], int] = {}  # pair -> last window start it was confirmed
        self._link_evidence: dict[tuple[str, str], tuple[float, int, float]] = {}  # pair -> (r, n, z)
        self._run_key_of: dict[str, str] = {}  # tenant -> key of the run it belongs to
        self._runs: dict[str, _Run] = {}
        self._findings: dict[str, Finding] = {}
        self._opacity_cache: dict[tuple[str, int], Opacity] = {}
        self._warned_late = False
        # Warm start (``warm_start``): stored findings a replayed run may continue, and the
        # event time before which no new finding is raised (the history is still partial).
        self._priors: dict[str, Finding] = {}
        self._hold_new = False
        self._hold_until_ms: int | None = None

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

    def warm_start(self, priors: Iterable[Finding], *, complete: bool) -> None:
        """Start over, before a replay of stored windows (collector/warmup.py).

        ``priors``: stored ``large_training`` findings whose runs may still be going (each with
        ``updated_at_ms`` = the end of the last window it was recorded at). A replayed run of a
        prior's group (the same tenants) that started between the prior's start and its last
        window (within ``max_gap_windows``) continues the prior rather than raising a new finding;
        so does a run of some of its tenants that would otherwise raise one (accounts not yet
        re-linked). ``complete``: the replay starts at the beginning of the store's history;
        otherwise no new finding is raised until the replay has covered ``history_span_ms``.
        """
        self._reset()
        self._priors = {p.id: p for p in priors if p.kind == KIND_LARGE_TRAINING}
        self._hold_new = not complete

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
        if self._hold_new or self._priors:
            self._warm_progress(s, max(w.end_ms for w in windows.values()))
        self._recent_nodes.append(frozenset(windows))
        self._expected = frozenset().union(*self._recent_nodes)
        self._pending_for = None
        tenant_windows = self._aggregate([windows[n] for n in sorted(windows)])
        self._recent_starts.append(s)
        self._snapshot(s, tenant_windows)
        groups = self._group(s, tenant_windows)
        end = max(w.end_ms for w in windows.values())
        return self._update_runs(s, end, groups)

    # ------------------------------------------------------------------ per window

    def _aggregate(self, windows: list[UsageWindow]) -> dict[str, _GroupWindow]:
        # The detector's per-GPU work: every GPU of the site, every window. Attributes read
        # more than once are read into locals; the sums are added to in the same order as
        # ever (GPU by GPU, workload by workload), so they are the same floats to the bit.
        cfg = self.config
        groups: dict[str, _GroupWindow] = {}
        gpus_seen = 0
        for w in windows:
            node = w.node_id
            gpus_seen += len(w.gpus)
            for g in w.gpus:
                workloads = g.workloads
                if not workloads:
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
                model = g.model
                for wl in workloads:
                    share = wl.share_permille / 1000
                    if share <= 0:
                        continue
                    tenant = wl.tenant
                    gw = groups.get(tenant)
                    if gw is None:
                        gw = groups[tenant] = _GroupWindow()
                    use = gw.by_class[cls]
                    use.gpus += share
                    nodes = use.nodes
                    nodes[node] = nodes.get(node, 0.0) + share
                    tenants = gw.tenants
                    tenants[tenant] = tenants.get(tenant, 0.0) + share
                    if cls == STRONG:
                        wn = gw.workload_nodes.get(wl.workload)
                        if wn is None:
                            gw.workload_nodes[wl.workload] = {node: share}
                        else:
                            wn[node] = wn.get(node, 0.0) + share
                    lst = gw.by_node.get(node)
                    if lst is None:
                        gw.by_node[node] = [g]
                    elif lst[-1] is not g:
                        lst.append(g)
                    m = use.models.get(model)
                    if m is None:
                        use.models[model] = [share, share * activity]
                    else:
                        m[0] += share
                        m[1] += share * activity
                    if u is not None:
                        use.util_sum += u * share
                        use.util_w += share
                    if pf is not None:
                        use.power_sum += pf * share
                        use.power_w += share
                    if sm is not None:
                        use.sm_sum += sm * share
                        use.sm_w += share
                    if tc is not None:
                        use.tensor_sum += tc * share
                        use.tensor_w += share
        self.stats.gpus_processed += gpus_seen
        return groups

    def _snapshot(self, s: int, tws: dict[str, _GroupWindow]) -> None:
        """Keep each sizeable tenant's node series for this window (sync and link tests use them)."""
        cfg = self.config
        oldest = self._recent_starts[0]
        # Every tenant big enough for a sync test, and the largest few hundred for link tests.
        sizes = {t: gw.candidate_gpus() for t, gw in tws.items()}
        small = sorted(
            (t for t, g in sizes.items() if cfg.link_min_gpus <= g < cfg.sync_min_gpus), key=lambda t: (-sizes[t], t)
        )
        keep = {t for t, g in sizes.items() if g >= cfg.sync_min_gpus} | set(small[: max(0, cfg.link_max_tenants)])
        for t, gw in tws.items():
            if t not in keep:
                continue
            snap: dict[str, list[float | None]] = {}
            for n in stable_sample(gw.by_node, cfg.sync_sample_nodes):
                ser = node_series(gw.by_node[n])
                if ser is not None:
                    snap[n] = ser
            if not snap:
                continue
            self._snaps.setdefault(t, {})[s] = snap
            length = max(len(v) for v in snap.values())
            sums = [0.0] * length
            counts = [0] * length
            for ser in snap.values():
                for i, v in enumerate(ser):
                    if v is not None:
                        sums[i] += v
                        counts[i] += 1
            self._tseries.setdefault(t, {})[s] = [x / c if c else None for x, c in zip(sums, counts, strict=True)]
        for store in (self._snaps, self._tseries):
            for t in list(store):
                per = store[t]
                for st in [st for st in per if st < oldest]:
                    del per[st]
                if not per:
                    del store[t]

    def _tenant_vector(self, t: str, starts: list[int]) -> list[float | None]:
        per = self._tseries.get(t, {})
        out: list[float | None] = []
        length = 0
        for st in starts:
            v = per.get(st)
            if v is not None:
                length = max(length, len(v))
        for st in starts:
            v = per.get(st)
            if v is None:
                out.extend([None] * length)
            else:
                out.extend(v)
                out.extend([None] * (length - len(v)))
        return out

    def _link(self, s: int, tws: dict[str, _GroupWindow]) -> None:
        """Test which tenants move as one job this window; confirm links that keep testing so."""
        cfg = self.config
        cands = [t for t, gw in tws.items() if gw.candidate_gpus() >= cfg.link_min_gpus]
        cands = [t for t in cands if s in self._tseries.get(t, {})]
        cands.sort(key=lambda t: (-tws[t].candidate_gpus(), t))
        cands = cands[: max(0, cfg.link_max_tenants)]
        together: set[tuple[str, str]] = set()
        if len(cands) >= 2:
            starts = list(self._recent_starts)[-cfg.link_history_windows :]
            clusters: list[_Cluster] = []
            for t in cands:
                vec = self._tenant_vector(t, starts)
                u = _unit(vec)
                if u is None or u[1] < cfg.link_min_points:
                    continue
                tu = u[0]
                best: tuple[float, int, float, _Cluster] | None = None
                for cl in clusters:
                    # Screen with one dot product (missing points as the mean), then test exactly.
                    if cl.unit is None or sum(map(operator.mul, tu, cl.unit)) < cfg.link_min_corr * 0.8:
                        continue
                    r, n = _corr(vec, cl.mean())
                    if n < cfg.link_min_points or r < cfg.link_min_corr:
                        continue
                    z = _fisher_z(r, n - len(starts))  # one mean removed per window
                    if z >= cfg.link_min_z and (best is None or r > best[0]):
                        best = (r, n, z, cl)
                if best is None:
                    cl = _Cluster([t], [0.0] * len(vec), [0] * len(vec))
                    cl.add(vec)
                    clusters.append(cl)
                    continue
                r, n, z, cl = best
                for m in cl.members:
                    pair = (m, t) if m < t else (t, m)
                    together.add(pair)
                    self._link_evidence[pair] = (round(r, 3), n, round(z, 2))
                cl.members.append(t)
                cl.add(vec)
        for pair in list(self._agree):
            if pair not in together:
                del self._agree[pair]
        for pair in together:
            k = self._agree[pair] = self._agree.get(pair, 0) + 1
            if k >= cfg.link_confirm_windows:
                if pair not in self._links:
                    r, n, z = self._link_evidence[pair]
                    _logger.info("linked tenants %s and %s: r=%.2f over %d points (z=%.1f)", *pair, r, n, z)
                self._links[pair] = s
        ttl_ms = cfg.link_ttl_s * _MS
        for pair, last in list(self._links.items()):
            if s - last > ttl_ms:
                key = self._run_key_of.get(pair[0])
                if key is None or key != self._run_key_of.get(pair[1]) or key not in self._runs:
                    del self._links[pair]
                    self._link_evidence.pop(pair, None)

    def _group(self, s: int, tws: dict[str, _GroupWindow]) -> dict[str, tuple[list[str], _GroupWindow]]:
        """Tenant windows -> group key -> (members, summed window)."""
        self._link(s, tws)
        parent: dict[str, str] = {}
        for a, b in self._links:
            ra, rb = _group_of(a, parent), _group_of(b, parent)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        members: dict[str, list[str]] = {}
        for t in set(parent) | set(tws):
            members.setdefault(_group_of(t, parent), []).append(t)
        parts: dict[str, tuple[list[str], list[_GroupWindow]]] = {}
        for t in sorted(tws):
            ms = sorted(members[_group_of(t, parent)])
            key = t if len(ms) == 1 else "+".join(ms)
            parts.setdefault(key, (ms, []))[1].append(tws[t])
        out: dict[str, tuple[list[str], _GroupWindow]] = {}
        for key, (ms, gws) in parts.items():
            if len(gws) == 1:
                out[key] = (ms, gws[0])
                continue
            merged = _GroupWindow()
            for gw in gws:
                merged.merge(gw)
            out[key] = (ms, merged)
        return out

    def _sync(self, s: int, members: list[str], gw: _GroupWindow | None) -> tuple[float | None, int, int]:
        """Synchrony of a group's nodes over recent windows: (correlation, pairs, nodes sampled)."""
        cfg = self.config
        if gw is None or gw.candidate_gpus() < cfg.sync_min_gpus or len(gw.by_node) < 2:
            return None, 0, 0
        now: set[str] = set()
        for m in members:
            snap = self._snaps.get(m, {}).get(s)
            if snap is not None:
                now.update(snap)
        sample = stable_sample(now, cfg.sync_sample_nodes)
        history: list[dict[str, list[float | None]]] = []
        for st in list(self._recent_starts)[-cfg.sync_history_windows :]:
            merged: dict[str, list[float | None]] = {}
            for m in members:
                snap = self._snaps.get(m, {}).get(st)
                if snap is not None:
                    for n, ser in snap.items():
                        merged.setdefault(n, ser)
            history.append(merged)
        corr, pairs = pooled_correlation(history, sample, cfg.sync_min_points)
        return corr, pairs, len(sample)

    def _merge_runs(self, key: str, members: list[str]) -> _Run | None:
        """Fold the runs of a newly linked group's members into one run under ``key``."""
        keys = {self._run_key_of.get(m) for m in members}
        keys.discard(None)
        run = self._runs.get(key)
        for k in sorted(k for k in keys if k is not None and k != key):
            other = self._runs.pop(k, None)
            if other is None:
                continue
            if run is None:
                other.group = key
                run = other
            else:
                run.absorb(other)
            for fid in run.merged_from:
                self._findings.pop(fid, None)  # superseded by the group's finding
        if run is not None:
            self._runs[key] = run
            for m in members:
                self._run_key_of[m] = key
        return run

    def _update_runs(self, s: int, end: int, groups: dict[str, tuple[list[str], _GroupWindow]]) -> list[Finding]:
        cfg = self.config
        out: list[Finding] = []
        window_s = (end - s) / _MS
        gap_ms = (cfg.max_gap_windows + 1) * (end - s)
        for key in sorted(groups):
            members = groups[key][0]
            if len(members) > 1:
                self._merge_runs(key, members)
        keys = sorted(set(groups) | set(self._runs))
        for key in keys:
            members, gw_ = groups.get(key, ([key], None))
            gw = gw_
            corr, pairs, sampled = self._sync(s, members, gw)
            run = self._runs.get(key)
            if gw is None:
                if run is not None and s - run.last_hit_end_ms >= gap_ms:
                    self._end_run(key)
                continue
            # Throttled GPUs count when the group is in sync and is itself mostly throttled; beside
            # a strong training majority, weak GPUs are other work (inference on the same nodes).
            strong, weak = gw.by_class[STRONG], gw.by_class[WEAK]
            weak_counts = corr is not None and corr >= cfg.weak_sync_corr and weak.gpus >= strong.gpus
            classes = (STRONG, WEAK) if weak_counts else (STRONG,)
            gpus = sum(gw.by_class[c].gpus for c in classes)
            node_set: set[str] = set(strong.nodes)
            if weak_counts:
                node_set.update(weak.nodes)
            if gpus < cfg.run_floor_gpus:
                if run is not None and s - run.last_hit_end_ms >= gap_ms:
                    self._end_run(key)
                continue
            if run is not None and s - run.last_hit_end_ms >= gap_ms:
                self._end_run(key)
                run = None
            if run is None:
                run = self._runs[key] = _Run(group=key, start_ms=s, last_hit_end_ms=end)
                for m in members:
                    self._run_key_of[m] = key
            if self._priors:
                self._resume(run, members, gap_ms)
            counted = end > run.counted_to_ms  # else already in the totals of the stored finding it continues
            self._account(run, gw, classes, gpus, len(node_set), window_s, corr, pairs, sampled, weak_counts, counted)
            run.last_strong_gpus = strong.gpus
            run.last_shared_workload_gpus = gw.shared_workload_gpus(cfg.shared_workload_min_nodes)
            run.last_hit_end_ms = end
            if gpus >= cfg.min_gpus:
                if run.large_start_ms is None or s - run.large_last_end_ms >= gap_ms:
                    run.large_start_ms = s
                    run.large_windows = 0
                run.large_last_end_ms = max(run.large_last_end_ms, end)
                if counted:
                    run.large_windows += 1
            f = self._evaluate(run, end, gap_ms)
            if f is not None:
                out.append(f)
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
        counted: bool = True,
    ) -> None:
        """Add one window to ``run``; its totals only where ``counted`` (its state always)."""
        for t, share in gw.tenants.items():
            run.tenants[t] = run.tenants.get(t, 0.0) + (share * window_s if counted else 0.0)
        rate = 0.0
        rate_known = True
        for c in classes:
            use = gw.by_class[c]
            for model, (g, active) in use.models.items():
                peak = flops.lookup(model)
                if peak is None:
                    rate_known = False
                else:
                    rate += peak.bf16_dense_flops * active
                if not counted:
                    continue
                mu = run.models.get(model)
                if mu is None:
                    mu = run.models[model] = _ModelUse()
                mu.gpu_s += g * window_s
                mu.active_gpu_s += active * window_s
            if not counted:
                continue
            for name, total, weight in (
                ("util", use.util_sum, use.util_w),
                ("power", use.power_sum, use.power_w),
                ("sm", use.sm_sum, use.sm_w),
                ("tensor", use.tensor_sum, use.tensor_w),
            ):
                acc = run.sums.setdefault(name, [0.0, 0.0])
                acc[0] += total * window_s
                acc[1] += weight * window_s
        if counted:
            run.windows += 1
            run.gpu_s += gpus * window_s
            if weak_counts:
                run.weak_counted_windows += 1
        run.last_rate_active_flops = rate if rate_known else None
        run.last_gpus = gpus
        run.last_nodes = nodes
        run.last_window_s = window_s
        run.peak_gpus = max(run.peak_gpus, gpus)
        run.peak_nodes = max(run.peak_nodes, nodes)
        if corr is not None:
            run.sync = corr
            run.sync_pairs = pairs
            run.sync_nodes = sampled
            run.sync_max = corr if run.sync_max is None else max(run.sync_max, corr)

    def _end_run(self, key: str) -> None:
        run = self._runs.pop(key, None)
        for t in [t for t, k in self._run_key_of.items() if k == key]:
            del self._run_key_of[t]
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

    def _evaluate(self, run: _Run, end_ms: int, gap_ms: int) -> Finding | None:
        cfg = self.config
        if run.finding is None:
            if run.large_start_ms is None or run.large_last_end_ms != end_ms:
                return None
            if run.large_last_end_ms - run.large_start_ms < cfg.min_duration_s * _MS:
                return None
            if not self._job_evidence(run):
                return None
            prior = self._prior_for(run, gap_ms) if self._priors else None
            if prior is not None:
                self._seed(run, prior)  # some of a stored finding's accounts, not yet re-linked
            elif self._holding(end_ms):
                return None
        detected_at = end_ms if run.finding is None else run.finding.detected_at_ms
        f = self._build(run, detected_at, end_ms)
        run.finding = f
        self._findings[f.id] = f
        prev = run.emitted
        window_ms = int(run.last_window_s * _MS)
        if (
            prev is None
            or self._material(prev, f)
            or f.updated_at_ms - prev.updated_at_ms >= history_span_ms(cfg, window_ms)
        ):
            run.emitted = f
            return f
        return None

    # ------------------------------------------------------------------ warm start

    def _warm_progress(self, s: int, end: int) -> None:
        """After ``warm_start``: where the hold on new findings ends; drop priors no run can continue."""
        span = history_span_ms(self.config, end - s)
        if self._hold_new and self._hold_until_ms is None:
            self._hold_until_ms = s + span
        gap_ms = (self.config.max_gap_windows + 1) * (end - s)
        for pid in [pid for pid, p in self._priors.items() if s > p.updated_at_ms + gap_ms + span]:
            del self._priors[pid]

    def _holding(self, end_ms: int) -> bool:
        """No new finding yet: the replay after a warm start has less than a history span behind it."""
        if not self._hold_new:
            return False
        if self._hold_until_ms is not None and end_ms >= self._hold_until_ms:
            self._hold_new = False
            return False
        return True

    @staticmethod
    def _continues(p: Finding, run: _Run, gap_ms: int) -> bool:
        """Did ``run`` start while ``p`` was being recorded (within the gap a run may have)?"""
        return p.started_at_ms - gap_ms <= run.start_ms <= p.updated_at_ms + gap_ms

    def _resume(self, run: _Run, members: list[str], gap_ms: int) -> None:
        """A replayed run of a stored finding's group continues it; runs of some of its tenants
        do not count again what its totals hold."""
        tenants = set(members)
        exact: Finding | None = None
        for p in self._priors.values():
            if tenants.isdisjoint(p.tenants) or not self._continues(p, run, gap_ms):
                continue
            run.counted_to_ms = max(run.counted_to_ms, p.updated_at_ms)
            if set(p.tenants) == tenants and (exact is None or p.started_at_ms > exact.started_at_ms):
                exact = p
        if exact is not None and run.finding is None:
            self._seed(run, exact)

    def _prior_for(self, run: _Run, gap_ms: int) -> Finding | None:
        """The stored finding sharing most tenants with ``run`` that ``run`` continues, if any."""
        tenants = set(run.tenants)
        best: tuple[int, int, str] | None = None
        for p in self._priors.values():
            shared = len(tenants.intersection(p.tenants))
            if shared and self._continues(p, run, gap_ms):
                rank = (shared, p.started_at_ms, p.id)
                if best is None or rank > best:
                    best = rank
        return None if best is None else self._priors[best[2]]

    def _seed(self, run: _Run, p: Finding) -> None:
        """Make ``run`` the continuation of stored finding ``p``: its id, start and detection
        time, and its totals up to ``p.updated_at_ms`` (windows the run does not count again).

        The totals are read back from the finding's evidence (what ``_build`` wrote); shares
        that the evidence gives only rounded (GPUs per model, each tenant's part) are
        apportioned, so sums and means continue, not restart."""
        del self._priors[p.id]
        ev = p.evidence
        sig = ev.get("signals", {})
        gpu_s = float(ev.get("gpu_seconds", p.gpu_hours * _SECONDS_PER_HOUR))
        run.start_ms = min(run.start_ms, p.started_at_ms)
        run.finding_id = p.id
        run.finding = run.emitted = p
        self._findings[p.id] = p
        run.counted_to_ms = max(run.counted_to_ms, p.updated_at_ms)
        run.gpu_s += gpu_s
        run.windows += int(ev.get("windows_counted", 0))
        run.weak_counted_windows += int(ev.get("throttled_gpus_counted_windows", 0))
        at_size = int(ev.get("windows_at_size", 0))
        if at_size:
            duration_s = sig.get("duration_at_size_s", {}).get("value")
            large_start = p.started_at_ms if duration_s is None else p.updated_at_ms - int(duration_s * _MS)
            run.large_start_ms = large_start if run.large_start_ms is None else min(run.large_start_ms, large_start)
            run.large_last_end_ms = max(run.large_last_end_ms, p.updated_at_ms)
            run.large_windows += at_size
        run.peak_gpus = max(run.peak_gpus, float(p.gpus))
        run.peak_nodes = max(run.peak_nodes, p.nodes)
        for t in p.tenants:
            run.tenants.setdefault(t, 0.0)
        run.tenants[p.tenant] = run.tenants.get(p.tenant, 0.0) + gpu_s
        sync_max = sig.get("synchrony_corr", {}).get("max")
        if sync_max is not None:
            run.sync_max = sync_max if run.sync_max is None else max(run.sync_max, sync_max)
        run.merged_from.extend(ev.get("supersedes", ()))
        # Per model: GPU-seconds by the model's share of the run's GPUs; activity-weighted
        # GPU-seconds so that the FLOP estimate continues from the stored one.
        shares = {str(m): float(n) for m, n in ev.get("gpu_models", {}).items()}
        total = sum(shares.values())
        if shares and total <= 0:
            shares = dict.fromkeys(shares, 1.0)
            total = float(len(shares))
        known = 0.0
        for m, n in shares.items():
            peak = flops.lookup(m)
            if peak is not None:
                known += peak.bf16_dense_flops * gpu_s * n / total
        estimate = ev.get("flop", {}).get("estimate")
        if estimate and known > 0:
            activity = float(estimate[0]) / self.config.mfu_low / known
        else:
            busy = sig.get("sm_active_mean", {}).get("value") or sig.get("util_mean", {}).get("value")
            activity = 1.0 if busy is None else float(busy)
        for m, n in shares.items():
            mu = run.models.setdefault(m, _ModelUse())
            mu.gpu_s += gpu_s * n / total
            mu.active_gpu_s += gpu_s * n / total * activity
        for name, key, scale in (
            ("util", "util_mean", 1000.0),
            ("power", "power_fraction_of_limit", 1.0),
            ("sm", "sm_active_mean", 1000.0),
            ("tensor", "tensor_active_mean", 1000.0),
        ):
            value = sig.get(key, {}).get("value")
            if value is not None:
                acc = run.sums.setdefault(name, [0.0, 0.0])
                acc[0] += float(value) * scale * gpu_s
                acc[1] += gpu_s

    def _job_evidence(self, run: _Run) -> bool:
        """Are the run's GPUs one job? Synchrony where measured; else one workload id or size."""
        cfg = self.config
        if run.sync is not None:
            return run.sync >= cfg.sync_min_corr
        return run.last_shared_workload_gpus >= cfg.min_gpus or run.last_strong_gpus >= cfg.size_alone_gpus

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
            "size_alone": {
                **signal(float(run.last_strong_gpus), cfg.size_alone_gpus, "strong training-shaped GPUs"),
                "note": "counts only where synchrony could not be measured",
            },
            "shared_workload_gpus": {
                **signal(float(run.last_shared_workload_gpus), cfg.min_gpus, "GPUs under one workload id"),
                "note": "one workload id on several nodes; counts only where synchrony could not be measured",
            },
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
        if len(tenants) > 1:
            evidence["linked_tenants"] = {
                "tenants": list(tenants),
                "how": "tenant-level load series correlated sample by sample (zero lag) for "
                f"{cfg.link_confirm_windows}+ windows in a row, Fisher z >= {cfg.link_min_z}",
                "pairs": [
                    {"tenants": list(p), "corr": e[0], "points": e[1], "z": e[2]}
                    for p, e in sorted(self._link_evidence.items())
                    if p[0] in run.tenants and p[1] in run.tenants
                ],
            }
        if run.merged_from:
            evidence["supersedes"] = sorted(set(run.merged_from))
        if run.finding_id is None:
            run.finding_id = finding_id(KIND_LARGE_TRAINING, (run.group,), run.start_ms)
        return Finding(
            id=run.finding_id,
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
