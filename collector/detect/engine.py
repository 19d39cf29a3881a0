"""The event-time detector: usage windows in, ``large_training`` findings out.

Windows arrive per node in order, interleaved arbitrarily across nodes. The engine buffers
them by window start and processes whole windows in event-time order. A window closes

* when every node seen in the last ``active_node_windows`` closed windows has reported it
  (or a later window, which means it skipped this one), or
* when the newest event time seen is ``straggler_grace_s`` past the window's end and the nodes
  still missing are few (``straggler_max_share`` of those expected, one at least) and silent:
  nothing heard from them for two windows and ``straggler_grace_s`` (an agent that is down
  writes nothing, and a large fleet always has one restarting; one that is only behind keeps
  sending), or
* when the newest event time seen is ``allowed_lateness_s`` past the window's end.

Before any window has closed nothing is known about which nodes exist, so the first window
closes by lateness only. A statement for a window that already closed is late: it is
counted and dropped, never folded into the past.

Per closed window (the modules named do the work):

1. ``usage.aggregate``: every GPU is classified (``signals.classify``) and its use attributed
   to the workloads on it, per tenant and workload id.
2. ``history.History.record``: each sizeable tenant's per-node load is kept, as window means
   (any sample interval) and per-bucket series (where samples are 10 s apart or closer).
3. ``linking.Linker``: accounts whose load is coupled (``coupling``: common component of the
   other tenants removed, robust to any one episode left out) for ``link_confirm_windows``
   windows in a row are linked; a group is a connected set of linked tenants.
4. Per group: coupling of its nodes at both scales; its *training workloads* (workload ids
   seen strong training-shaped, or weak where the group is coupled, within
   ``workload_memory_s``) and the GPUs they occupy, which is the run's size; the run goes on
   across pauses, phases and restarts within ``run_gap_s`` (``runs``).
5. A run of ``min_gpus`` whose span at size reaches ``min_duration_s`` at a duty cycle of at
   least ``min_duty_cycle`` raises a finding when its nodes are coupled (and, once
   ``coupling_history_windows`` tests stand behind it, were in ``coupling_min_share`` of
   them). Where coupling could
   not be measured at all (unknown, not evidence either way) one workload id across nodes, or
   ``size_alone_gpus`` strong GPUs on nodes whose InfiniBand is not idle, stands in for it;
   where it was measured and did not fire, nothing is raised. ``build`` writes the finding.

Nothing keys on tenant or workload names: workload ids are used only as opaque identities.
Everything a finding says was known at its ``detected_at``: there is no look-ahead.

A restarted collector does not start blind: ``warm_start`` prepares the engine for a replay
of the recent stored windows, at least ``history_span_ms`` of them (collector/warmup.py
chooses them), given the findings already stored. A replayed run of a stored finding's group
that was going on while that finding was last recorded continues it (same id, ``started_at``
and ``detected_at``, its totals up to ``updated_at`` taken from it and not counted twice);
until the replay has a full history span behind it, no new finding is raised, since coupling
and links computed from a partial history are not what the detector decided live. To keep
every stored finding of a run still going within that span of the present, a finding is
re-emitted at least once per history span even when nothing material changed.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import math
import statistics
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from attestation.statement import UsageWindow
from collector.detect import flops, priors
from collector.detect.build import build_finding
from collector.detect.config import DetectConfig
from collector.detect.enduse import EndUseRiskOf
from collector.detect.findings import KIND_LARGE_TRAINING, Finding, rfc3339_ms
from collector.detect.history import GroupCoupling, History
from collector.detect.linking import Linker
from collector.detect.opacity import Opacity, opacity
from collector.detect.runs import GroupUse, ModelUse, Run, history_span_ms, run_gap_ms
from collector.detect.trail import Trail
from collector.detect.usage import SiteWindow, aggregate
from collector.tenants import TenantDirectory
from core.nogc import no_gc

_logger = logging.getLogger(__name__)

_MS = 1000
_SECONDS_PER_DAY = 86400.0


@dataclass
class EngineStats:
    statements: int = 0
    windows_closed: int = 0
    late_dropped: int = 0
    duplicates_dropped: int = 0
    gpus_processed: int = 0


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
        self._node_heard: dict[str, int] = {}  # node -> event time when its last window arrived
        self._recent_nodes: deque[frozenset[str]] = deque(maxlen=max(1, config.active_node_windows))
        self._expected: frozenset[str] = frozenset()
        self._pending: set[str] = set()
        self._pending_for: int | None = None
        self._history = History(config)
        self._linker = Linker(config)
        self._trail = Trail(config)
        # tenant -> training workload id -> start of the last window it was training-shaped
        self._train_wl: dict[str, dict[str, int]] = {}
        self._run_key_of: dict[str, str] = {}  # tenant -> key of the run it belongs to
        self._runs: dict[str, Run] = {}
        self._findings: dict[str, Finding] = {}
        self._opacity_cache: dict[tuple[str, int], Opacity] = {}
        self._risk_of = EndUseRiskOf(self.tenants, config.end_use)
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
        self._node_heard[w.node_id] = self._max_event_ms
        if self._pending_for is not None and s >= self._pending_for:
            self._pending.discard(w.node_id)
        return self._drain(final=False)

    def observe_site(self, start_ms: int, end_ms: int, nodes: Collection[str], site: SiteWindow) -> list[Finding]:
        """Take one whole window already aggregated (``usage.aggregate`` over every node's
        window of it, sorted by node): for a source that holds complete windows in event-time
        order (Prometheus history, collector/prometheus/sites.py). The window closes at once;
        one that starts at or before the last closed window is late and dropped."""
        out = self._drain(final=True)  # windows buffered by ``observe`` close first
        self.stats.statements += len(nodes)
        if self._last_closed_start is not None and start_ms <= self._last_closed_start:
            self.stats.late_dropped += len(nodes)
            return out
        for n in nodes:
            self._node_latest[n] = start_ms
        self._max_event_ms = max(self._max_event_ms, end_ms)
        with no_gc():
            out.extend(self._close_site(start_ms, end_ms, nodes, site))
        return out

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
        grace_ms = self.config.straggler_grace_s * _MS
        while self._heap:
            s = self._heap[0]
            past = self._max_event_ms - self._open_end[s]
            if not final and not (
                past >= lateness_ms
                or self._complete(s)
                or (past >= grace_ms and self._stragglers_silent(self._open_end[s] - s))
            ):
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

    def _stragglers_silent(self, window_ms: int) -> bool:
        """After ``_complete`` (which computed them): are the nodes still missing few
        (``straggler_max_share`` of those expected, one at least) and silent, nothing heard from
        them for two windows and ``straggler_grace_s`` more of event time? An agent that is down
        sends nothing; one that is only behind (a slow link, a spool being resent, a replayed
        trace whose windows end only at the node's next sample) keeps sending a window a
        window, and is waited for, up to ``allowed_lateness_s``."""
        if not self._expected:
            return False
        pending = self._pending
        if len(pending) > max(1, int(self.config.straggler_max_share * len(self._expected))):
            return False
        quiet_before = self._max_event_ms - 2 * window_ms - self.config.straggler_grace_s * _MS
        heard = self._node_heard
        return all(heard.get(n, -1) <= quiet_before for n in pending)

    def _close(self, s: int, windows: dict[str, UsageWindow]) -> list[Finding]:
        with no_gc():  # a window's aggregate and tests make many objects and no cycles
            site = aggregate([windows[n] for n in sorted(windows)], self.config)
            return self._close_site(s, max(w.end_ms for w in windows.values()), windows, site)

    def _close_site(self, s: int, end: int, nodes: Collection[str], site: SiteWindow) -> list[Finding]:
        """Close window ``s`` (ending at ``end``) of ``nodes``, aggregated into ``site``."""
        self._last_closed_start = s
        self.stats.windows_closed += 1
        if self._hold_new or self._priors:
            self._warm_progress(s, end)
        reported = frozenset(nodes)
        self._recent_nodes.append(reported)
        self._expected = frozenset().union(*self._recent_nodes)
        self._pending_for = None
        self.stats.gpus_processed += site.gpus_seen
        self._history.record(s, site.tenants)
        self._linker.update(s, site.tenants, self._history, self._same_live_run)
        self._trail.record(s, end, site.tenants, self._linker.candidates, history_span_ms(self.config, end - s))
        groups = self._linker.groups(list(site.tenants))
        return self._update_runs(s, end, groups, site, reported)

    # ------------------------------------------------------------------ per window

    def _same_live_run(self, a: str, b: str) -> bool:
        key = self._run_key_of.get(a)
        return key is not None and key == self._run_key_of.get(b) and key in self._runs

    def _merge_runs(self, key: str, members: list[str], s: int, gap_ms: int) -> Run | None:
        """Fold the runs of a newly linked group's members into one run under ``key``; where the
        group has no finding yet, rebuild its span at size from its accounts' recent windows
        (collector/detect/trail.py)."""
        fresh = [m for m in members if self._run_key_of.get(m) != key]
        no_run = {m for m in members if self._run_key_of.get(m) not in self._runs}
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
        if fresh and (run is None or run.finding is None):
            run = self._trail.backfill(run, key, members, no_run, s, gap_ms)
        if run is not None:
            self._runs[key] = run
            for m in members:
                self._run_key_of[m] = key
        return run

    def _group_use(self, s: int, members: list[str], site: SiteWindow, coupled: bool, mostly_weak: bool) -> GroupUse:
        """The group's training workloads this window and the GPUs they occupy; ``mostly_weak``:
        its weak candidate GPUs are at least its strong ones (``_update_runs``)."""
        cfg = self.config
        memory_ms = cfg.workload_memory_s * _MS
        gu = GroupUse()
        tws = [(t, tw) for t in members if (tw := site.tenants.get(t)) is not None]
        strong = sum(tw.strong for _, tw in tws)
        weak = sum(tw.weak for _, tw in tws)
        gu.candidate = strong + weak
        # Weak (throttled, input-bound) GPUs make workloads training ones where the group is
        # coupled and mostly weak: beside a strong training majority they are other work
        # (serving on the same nodes), and a serving fleet is not coupled.
        weak_counts = coupled and mostly_weak
        gu.weak_counted = weak_counts and weak > 0
        # Sums in locals (a workload without a signal adds 0.0 to it: the same floats); a
        # signal's entry exists where some workload carried it (its weight is then above 0).
        util_s = util_w = power_s = power_w = sm_s = sm_w = tensor_s = tensor_w = 0.0
        mem_sum = mem_sq = 0.0
        mem_n = 0
        strong_gpus = 0.0
        node_gpus = gu.node_gpus
        models = gu.models
        shared_min = cfg.shared_workload_min_nodes
        for t, tw in tws:
            known = self._train_wl.get(t)
            if not known and tw.strong <= 0 and not (weak_counts and tw.weak > 0):
                continue  # no workload of this tenant is, or was recently, training-shaped
            if known is None:
                known = self._train_wl[t] = {}
            counted = 0.0
            for wl, use in tw.workloads.items():
                if use.strong > 0 or (weak_counts and use.weak > 0):
                    known[wl] = s
                else:
                    last = known.get(wl)
                    if last is None:
                        continue
                    if s - last > memory_ms:
                        del known[wl]
                        continue
                g_use = use.gpus
                counted += g_use
                strong_gpus += use.strong
                use_nodes = use.nodes
                if use.slurm:
                    gu.slurm_gpus += g_use
                    gu.slurm_max_nodes = max(gu.slurm_max_nodes, len(use_nodes))
                for n, g_n in use_nodes.items():
                    node_gpus[n] = node_gpus.get(n, 0.0) + g_n
                if len(use_nodes) >= shared_min and g_use > gu.shared_workload_gpus:
                    gu.shared_workload_gpus = g_use
                    gu.shared_workload_nodes = len(use_nodes)
                for model, (g, a) in use.models.items():
                    m = models.get(model)
                    if m is None:
                        models[model] = [g, a]
                    else:
                        m[0] += g
                        m[1] += a
                util_s += use.util_sum
                util_w += use.util_w
                power_s += use.power_sum
                power_w += use.power_w
                sm_s += use.sm_sum
                sm_w += use.sm_w
                tensor_s += use.tensor_sum
                tensor_w += use.tensor_w
                mem_sum += use.mem_sum
                mem_sq += use.mem_sq
                mem_n += use.mem_n
            if counted:
                gu.tenants[t] = counted
                gu.gpus += counted
        gu.strong += strong_gpus
        for name, total, weight in (
            ("util", util_s, util_w),
            ("power", power_s, power_w),
            ("sm", sm_s, sm_w),
            ("tensor", tensor_s, tensor_w),
        ):
            if weight > 0:
                gu.sums[name] = [total, weight]
        if mem_n >= 2 and mem_sum > 0:
            mean = mem_sum / mem_n
            gu.mem_cv = math.sqrt(max(0.0, mem_sq / mem_n - mean * mean)) / mean
        rates = [r for n in gu.nodes if (r := site.ib_bytes_per_s.get(n)) is not None]
        if rates:
            gu.ib_bytes_per_s = statistics.median(rates)
            gu.ib_nodes = len(rates)
        return gu

    def _update_runs(
        self, s: int, end: int, groups: dict[str, list[str]], site: SiteWindow, reported: frozenset[str]
    ) -> list[Finding]:
        cfg = self.config
        out: list[Finding] = []
        window_ms = end - s
        window_s = window_ms / _MS
        gap_ms = run_gap_ms(cfg, window_ms)
        memory_ms = cfg.workload_memory_s * _MS
        # Forget training workloads not seen training-shaped for ``workload_memory_s`` (every
        # tenant's, once in ten windows: workloads that left keep no memory).
        prune = [t for t in self._train_wl if t not in site.tenants or (s // window_ms) % 10 == 0]
        for t in prune:
            known = self._train_wl[t]
            for wl in [wl for wl, last in known.items() if s - last > memory_ms]:
                del known[wl]
            if not known:
                del self._train_wl[t]
        for key in sorted(groups):
            members = groups[key]
            if len(members) > 1:
                self._merge_runs(key, members, s, gap_ms)
        for key in sorted(set(groups) | set(self._runs)):
            members = groups.get(key, [key])
            run = self._runs.get(key)
            present = [m for m in members if m in site.tenants]
            candidate = sum(site.tenants[m].candidate_gpus() for m in present)
            if run is None and candidate < cfg.run_floor_gpus:
                continue  # not training-shaped and no run to continue: skip the costly part
            occupied = sum(site.tenants[m].occupied for m in present)
            exclude = set(members)
            for m in members:
                exclude.update(self._linker.cluster_of.get(m, ()))
            # Coupling decides findings (runs of ``min_gpus``) and whether weak GPUs count; a group
            # that occupies fewer GPUs than a finding needs, with no run going, is not measured.
            measured = occupied >= cfg.sync_min_gpus and (occupied >= cfg.min_gpus or run is not None)
            # Mostly weak (throttled) GPUs are what serving looks like: such a group's weak GPUs
            # count only where it is coupled, and its coupling is the test between tight
            # clusters of its nodes where they form some (``History.group_coupling``).
            mostly_weak = sum(site.tenants[m].weak for m in present) >= sum(site.tenants[m].strong for m in present)
            coupling = (
                self._history.group_coupling(s, members, exclude, mostly_weak=mostly_weak)
                if measured
                else GroupCoupling(None, None, "unknown")
            )
            gu = self._group_use(s, members, site, coupling.state == "coupled" and coupling.weak_ok, mostly_weak)
            if gu.weak_counted and gu.gpus >= cfg.run_floor_gpus:
                run = self._backfill_weak(key, members, run, s, gap_ms)
            if gu.gpus < cfg.run_floor_gpus:
                if run is not None and s - run.last_hit_end_ms >= gap_ms:
                    out.extend(self._end_run(key))
                continue
            if run is not None and s - run.last_hit_end_ms >= gap_ms:
                out.extend(self._end_run(key))
                run = None
            if run is None:
                run = self._runs[key] = Run(group=key, start_ms=s, last_hit_end_ms=end)
                for m in members:
                    self._run_key_of[m] = key
            if self._priors:
                self._resume(run, members, gap_ms)
            gu.unreported = self._unreported(run, gu, site, reported, s)
            counted = end > run.counted_to_ms  # else already in the totals of the stored finding it continues
            self._account(run, gu, coupling, window_s, counted)
            run.last_hit_end_ms = end
            if gu.gpus + gu.unreported >= cfg.min_gpus:
                if run.large_start_ms is None or s - run.large_last_end_ms >= gap_ms:
                    run.large_start_ms = s
                    run.large_windows = 0
                    run.at_size_gpus = []
                run.large_last_end_ms = max(run.large_last_end_ms, end)
                if counted:
                    run.large_windows += 1
                    run.at_size_gpus.append(gu.gpus)
            f = self._evaluate(run, end, gap_ms)
            if f is not None:
                out.append(f)
        return out

    def _unreported(self, run: Run, gu: GroupUse, site: SiteWindow, reported: frozenset[str], s: int) -> float:
        """GPUs that the run's nodes held when last counted and that this window cannot show:
        the node sent no statement (its agent was down), or GPUs of it went unread (no sample).
        Carried for ``unreported_carry_s`` after the node was last fully counted; a node that
        reports readings without the run's workloads has left the run and carries nothing."""
        carry_ms = self.config.unreported_carry_s * _MS
        seen = run.node_seen
        unread = site.unread_gpus
        out = 0.0
        for n, g in gu.node_gpus.items():
            prev = seen.get(n)
            lost, read = unread.get(n, (0, 0))
            if lost and prev is not None and s - prev[0] <= carry_ms and prev[1] > g:
                out += min(prev[1] - g, lost)  # keep the full count and its time
                continue
            if lost and g >= read:
                # The run holds every GPU of the node that could be read: the unread ones are
                # taken as its too (a job's ranks fill their nodes), counted apart as unreported.
                out += lost
            seen[n] = (s, g)
        for n in [n for n in seen if n not in gu.node_gpus]:
            last, g = seen[n]
            if s - last > carry_ms:
                del seen[n]
            elif n not in reported:
                out += g
            elif n in unread:
                out += min(g, unread[n][0])
            else:
                del seen[n]
        return out

    def _backfill_weak(self, key: str, members: list[str], run: Run | None, s: int, gap_ms: int) -> Run | None:
        """The group's weak GPUs count from this window (it tested coupled, mostly weak): where
        it has no finding yet, rebuild its span from its accounts' recent windows, once.

        The coupling test stood on the history before this window, so the weak GPUs of those
        windows were the same job's (as for accounts linked late: collector/detect/trail.py);
        without this, an input-bound or power-capped run starts its ``min_duration_s`` only
        when the test first has enough points, minutes after it reached size.
        """
        if run is not None and (run.finding is not None or run.weak_backfilled):
            return run
        fresh = set(members) if run is None else set()
        run = self._trail.backfill(run, key, members, fresh, s, gap_ms)
        if run is not None:
            run.weak_backfilled = True
            self._runs[key] = run
            for m in members:
                self._run_key_of[m] = key
        return run

    def _account(self, run: Run, gu: GroupUse, coupling: GroupCoupling, window_s: float, counted: bool) -> None:
        """Add one window to ``run``; its totals only where ``counted`` (its state always)."""
        rate = 0.0
        rate_known = True
        for model, (g, active) in gu.models.items():
            peak = flops.lookup(model)
            if peak is None:
                rate_known = False
            else:
                rate += peak.bf16_dense_flops * active
            if counted:
                mu = run.models.get(model)
                if mu is None:
                    mu = run.models[model] = ModelUse()
                mu.gpu_s += g * window_s
                mu.active_gpu_s += active * window_s
        if counted:
            for t, g in gu.tenants.items():
                run.tenants[t] = run.tenants.get(t, 0.0) + g * window_s
            for name, (total, weight) in gu.sums.items():
                acc = run.sums.setdefault(name, [0.0, 0.0])
                acc[0] += total * window_s
                acc[1] += weight * window_s
            run.windows += 1
            run.gpu_s += gu.gpus * window_s
            if gu.weak_counted:
                run.weak_counted_windows += 1
        else:
            for t in gu.tenants:
                run.tenants.setdefault(t, 0.0)
        run.last = gu
        run.last_rate_active_flops = rate if rate_known else None
        run.last_gpus = gu.gpus
        run.last_nodes = len(gu.nodes)
        run.last_window_s = window_s
        run.peak_gpus = max(run.peak_gpus, gu.gpus)
        run.peak_nodes = max(run.peak_nodes, len(gu.nodes))
        best = coupling.best
        if best is not None:
            run.coupling = {
                "scales": {c.scale: c.to_json() for c in (coupling.within, coupling.across) if c is not None},
                "decided_by": best.scale,
            }
            run.coupling_state = coupling.state
            run.sync = best.corr
            run.sync_max = best.corr if run.sync_max is None else max(run.sync_max, best.corr)
            # A flat test counts against the run's coupling as an uncoupled one does: what
            # it cannot say is left to the other evidence (``_job_evidence``).
            if coupling.state == "coupled":
                run.coupled_windows += 1
            elif coupling.state in ("uncoupled", "flat"):
                run.uncoupled_windows += 1
            if coupling.state in ("coupled", "uncoupled", "flat"):
                run.recent_tests.append(coupling.state == "coupled")
                del run.recent_tests[: -max(1, self.config.coupling_history_windows)]
        else:
            run.coupling_state = coupling.state
        if coupling.state == "coupled":
            cfg = self.config
            strong = best is not None and best.corr >= cfg.coupling_strong_corr and best.z >= 2 * cfg.coupling_min_z
            step = cfg.coupling_confirm_windows if strong else 1
            run.coupling_votes = min(run.coupling_votes + step, 2 * cfg.coupling_confirm_windows)
        elif coupling.state in ("uncoupled", "flat"):
            run.coupling_votes = max(run.coupling_votes - 1, 0)

    def _end_run(self, key: str) -> list[Finding]:
        """Forget the run of ``key``; its finding's final state if that was not reported yet
        (an update too small to report while the run went on is reported when it ends)."""
        run = self._runs.pop(key, None)
        for t in [t for t, k in self._run_key_of.items() if k == key]:
            del self._run_key_of[t]
        if run is None or run.finding is None:
            return []
        _logger.info("run %s of %s ended at %s", run.finding.id, key, rfc3339_ms(run.last_hit_end_ms))
        if run.finding is run.emitted:
            return []
        run.emitted = run.finding
        return [run.finding]

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

    def _evaluate(self, run: Run, end_ms: int, gap_ms: int) -> Finding | None:
        cfg = self.config
        if run.finding is None:
            if run.large_start_ms is None or run.large_last_end_ms != end_ms:
                return None
            if run.large_last_end_ms - run.large_start_ms < cfg.min_duration_s * _MS:
                return None
            duty = run.duty_cycle(int(run.last_window_s * _MS))
            if duty is None or duty < cfg.min_duty_cycle:
                return None
            if not self._job_evidence(run):
                return None
            # A link of one of its accounts with an account that has a run of its own is being
            # confirmed: wait for it (at most the windows a confirmation takes), so that one
            # finding names both instead of two being raised and one superseded a minute later.
            # An account without a run of its own (a node or two of the job) joins this
            # finding when its link is confirmed: the same finding, updated.
            if run.link_waits < cfg.link_confirm_windows and any(
                (k := self._run_key_of.get(p)) is not None and k != run.group and k in self._runs
                for p in self._linker.pending(list(run.tenants))
            ):
                run.link_waits += 1
                return None
            prior = self._prior_for(run, gap_ms) if self._priors else None
            if prior is not None:
                self._seed(run, prior)  # some of a stored finding's accounts, not yet re-linked
            elif self._holding(end_ms):
                return None
        detected_at = end_ms if run.finding is None else run.finding.detected_at_ms
        f = build_finding(run, cfg, self._opacity, self._linker.evidence, detected_at, end_ms, risk_of=self._risk_of)
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
        gap_ms = run_gap_ms(self.config, end - s)
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

    def _resume(self, run: Run, members: list[str], gap_ms: int) -> None:
        """A replayed run of a stored finding's group continues it; runs of some of its tenants
        do not count again what its totals hold."""
        exact = priors.resume(self._priors.values(), run, members, gap_ms)
        if exact is not None and run.finding is None:
            self._seed(run, exact)

    def _prior_for(self, run: Run, gap_ms: int) -> Finding | None:
        return priors.prior_for(self._priors.values(), run, gap_ms)

    def _seed(self, run: Run, p: Finding) -> None:
        """Make ``run`` the continuation of stored finding ``p`` (``priors.seed``)."""
        del self._priors[p.id]
        self._findings[p.id] = p
        priors.seed(run, p, self.config)

    def _job_evidence(self, run: Run) -> bool:
        """Are the run's GPUs one job? Coupling where measured; else one workload id (where
        coupling is unknown, or its series were flat: nothing to measure), or, only where it
        is unknown, size on a fabric that is not idle."""
        cfg = self.config
        last = run.last
        if last is not None and self._fabric_idle(last):
            return False  # no east-west traffic: each node works alone, whatever moves together
        if run.coupling_votes >= cfg.coupling_confirm_windows:
            # Coupled in more windows than not, lately; and, once a whole history of tests
            # stands behind the run, in ``coupling_min_share`` of them (``build._job_basis``):
            # a fleet whose nodes moved together for a few windows after half an hour of
            # testing apart (a shared event, a burst of load) has no job evidence.
            return len(run.recent_tests) < cfg.coupling_history_windows or run.coupled_share(cfg.coupling_min_share)
        if run.coupling_state in ("coupled", "uncoupled", "pending"):
            return False
        if last is None:
            return False
        if last.shared_workload_gpus >= cfg.min_gpus:
            return True
        if run.coupling_state == "flat":
            # Pinned GPUs of a fleet of one-node jobs read as flat as one job's: where the
            # fabric is not reported, size alone would raise every large pinned fleet.
            return False
        ib_idle = last.ib_bytes_per_s is not None and last.ib_bytes_per_s < cfg.ib_idle_bytes_per_s
        return last.strong + last.unreported >= cfg.size_alone_gpus and not ib_idle

    def _fabric_idle(self, gu: GroupUse) -> bool:
        """InfiniBand/RoCE reported on most of the group's nodes and idle there (median)."""
        return (
            gu.ib_bytes_per_s is not None
            and 2 * gu.ib_nodes >= len(gu.nodes)
            and gu.ib_bytes_per_s < self.config.ib_idle_bytes_per_s
        )

    def _material(self, prev: Finding, f: Finding) -> bool:
        cfg = self.config
        if prev.severity != f.severity or prev.tenants != f.tenants or prev.nodes != f.nodes:
            return True
        if abs(f.gpus - prev.gpus) > cfg.update_gpus_fraction * max(prev.gpus, 1):
            return True
        return f.gpu_hours >= prev.gpu_hours * (1.0 + cfg.update_gpu_hours_fraction)


def run_offline(windows: Iterable[UsageWindow], config: DetectConfig, tenants: TenantDirectory) -> list[Finding]:
    """Feed every window and finish; return every finding in its final state."""
    engine = DetectorEngine(config, tenants)
    for w in windows:
        engine.observe(w)
    engine.finish()
    return engine.findings()


__all__ = ["DetectorEngine", "EngineStats", "history_span_ms", "run_offline"]
