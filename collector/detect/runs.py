"""A run: one group's training over time, and what one window of it added.

A run is not an unbroken sequence of strong windows. It goes on across checkpoint pauses,
the rollout phases of RL post-training and restarts on another node set, as long as the
gap without a window at ``run_floor_gpus`` stays within ``run_gap_s``; its time at size is
the span from its first window at ``min_gpus``, and its duty cycle the share of that span in
which it held that size.
"""

from __future__ import annotations

from collections.abc import KeysView
from dataclasses import dataclass, field

from collector.detect.config import DetectConfig
from collector.detect.findings import Finding

_MS = 1000


@dataclass
class ModelUse:
    """GPU-seconds and activity-weighted GPU-seconds on one GPU model."""

    gpu_s: float = 0.0
    active_gpu_s: float = 0.0


@dataclass
class GroupUse:
    """What one group's training workloads did in one window."""

    gpus: float = 0.0  # GPUs occupied by the group's training workloads
    strong: float = 0.0  # of those, strong training-shaped this window
    candidate: float = 0.0  # training-shaped GPUs of the group, strong and weak
    weak_counted: bool = False
    tenants: dict[str, float] = field(default_factory=dict)  # tenant -> GPUs counted
    models: dict[str, list[float]] = field(default_factory=dict)  # model -> [GPUs, activity-weighted]
    sums: dict[str, list[float]] = field(default_factory=dict)  # signal -> [sum x GPUs, GPUs]
    shared_workload_gpus: float = 0.0
    shared_workload_nodes: int = 0
    slurm_gpus: float = 0.0  # GPUs of the group's Slurm jobs
    slurm_max_nodes: int = 0  # nodes of the widest of them
    mem_cv: float | None = None
    ib_bytes_per_s: float | None = None  # median over the group's nodes that report it
    ib_nodes: int = 0
    node_gpus: dict[str, float] = field(default_factory=dict)  # node -> GPUs counted there
    unreported: float = 0.0  # GPUs of the run's nodes without a statement or a reading (carried)

    @property
    def nodes(self) -> KeysView[str]:
        """The nodes the group's training workloads occupy."""
        return self.node_gpus.keys()


@dataclass
class Run:
    group: str
    start_ms: int
    last_hit_end_ms: int
    tenants: dict[str, float] = field(default_factory=dict)  # tenant -> GPU-seconds
    windows: int = 0
    large_start_ms: int | None = None
    large_last_end_ms: int = 0
    large_windows: int = 0
    gpu_s: float = 0.0
    models: dict[str, ModelUse] = field(default_factory=dict)
    peak_gpus: float = 0.0
    peak_nodes: int = 0
    at_size_gpus: list[float] = field(default_factory=list)  # GPUs in each window at size (typical)
    node_seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # node -> (window start, GPUs) last counted
    last_gpus: float = 0.0
    last_nodes: int = 0
    last_window_s: float = 0.0
    last_rate_active_flops: float | None = None  # activity-weighted peak FLOP/s in the last window
    sums: dict[str, list[float]] = field(default_factory=dict)  # signal -> [sum, weight]
    coupling: dict[str, object] | None = None  # the last coupling test (JSON), any state
    coupling_state: str = "unknown"
    coupled_windows: int = 0
    uncoupled_windows: int = 0
    recent_tests: list[bool] = field(default_factory=list)  # the last measured windows: coupled?
    coupling_votes: int = 0  # +1 per window tested coupled, -1 per window tested uncoupled, >= 0
    sync: float | None = None  # statistic of the last coupling test that counted
    sync_max: float | None = None
    weak_counted_windows: int = 0
    last: GroupUse | None = None
    finding_id: str | None = None
    merged_from: list[str] = field(default_factory=list)
    finding: Finding | None = None
    emitted: Finding | None = None
    counted_to_ms: int = 0  # warm start: windows ending by then are in a stored finding's totals
    link_waits: int = 0  # windows a new finding waited for a link being confirmed
    weak_backfilled: bool = False  # its span was rebuilt once its weak GPUs first counted

    def absorb(self, o: Run) -> None:
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
            cur = self.models.setdefault(m, ModelUse())
            cur.gpu_s += mu.gpu_s
            cur.active_gpu_s += mu.active_gpu_s
        self.peak_gpus = max(self.peak_gpus, o.peak_gpus, self.last_gpus + o.last_gpus)
        self.peak_nodes = max(self.peak_nodes, o.peak_nodes, self.last_nodes + o.last_nodes)
        self.at_size_gpus = self.at_size_gpus if len(self.at_size_gpus) >= len(o.at_size_gpus) else o.at_size_gpus
        for n, seen in o.node_seen.items():
            if seen[0] >= self.node_seen.get(n, (-1, 0.0))[0]:
                self.node_seen[n] = seen
        for name, (a, w) in o.sums.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += a
            acc[1] += w
        if o.sync_max is not None:
            self.sync_max = o.sync_max if self.sync_max is None else max(self.sync_max, o.sync_max)
        self.coupled_windows = max(self.coupled_windows, o.coupled_windows)
        self.uncoupled_windows = max(self.uncoupled_windows, o.uncoupled_windows)
        if len(o.recent_tests) > len(self.recent_tests):
            self.recent_tests = o.recent_tests
        self.coupling_votes = max(self.coupling_votes, o.coupling_votes)
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

    def coupled_share(self, share: float) -> bool:
        """Tested coupled in at least ``share`` of its recent measured windows (``recent_tests``)."""
        return sum(self.recent_tests) >= share * len(self.recent_tests)

    def duty_cycle(self, window_ms: int) -> float | None:
        """Share of the span at size in which the run held ``min_gpus``."""
        if self.large_start_ms is None or window_ms <= 0:
            return None
        span = self.large_last_end_ms - self.large_start_ms
        return None if span <= 0 else min(1.0, self.large_windows * window_ms / span)


def run_gap_ms(config: DetectConfig, window_ms: int) -> int:
    """How long a run survives without a window at its floor (at least one window)."""
    return max(config.run_gap_s * _MS, window_ms)


def history_span_ms(config: DetectConfig, window_ms: int) -> int:
    """How far back in event time the detector's decisions reach, for windows of ``window_ms``.

    Coupling pools ``coupling_history_windows`` windows; a link needs its history (the longer
    ``link_coarse_history_windows`` across windows) and then
    ``link_confirm_windows`` tests in a row; the nodes a window waits for are those of the last
    ``active_node_windows``; a run is raised once it has held its size for ``min_duration_s``
    (from the start of its first window at size). A detector that has seen this span of
    windows decides as one that has seen everything before it.
    """
    windows = max(
        config.sync_history_windows,
        config.coupling_history_windows + config.link_confirm_windows,
        config.link_history_windows + config.link_confirm_windows,
        config.link_coarse_history_windows + config.link_confirm_windows,
        config.active_node_windows,
    )
    return max(windows * window_ms, config.min_duration_s * _MS + window_ms)


__all__ = ["GroupUse", "ModelUse", "Run", "history_span_ms", "run_gap_ms"]
