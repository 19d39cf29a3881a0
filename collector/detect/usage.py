"""One closed window of a site, summed per tenant and per workload: what the detector reads.

``aggregate`` is the detector's per-GPU work (every GPU of the site, every window), so it is
one pass with attributes read into locals. Per tenant it keeps, per workload id (an opaque
identity: one pod, one Slurm job), the GPUs the workload occupies in every class, how many
of them were training-shaped, and the signal sums the FLOP estimate and the evidence need;
per node, the GPUs it occupies there (their load and per-bucket series feed the coupling
tests).

A run's GPUs are the GPUs its training workloads *occupy*, not only those above the strong
thresholds in this window: a GPU of a running job that waits on a checkpoint or a slow
input pipeline for a minute is still the job's (``engine`` decides which workloads are
training ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from attestation.statement import UsageWindow
from collector.detect.config import DetectConfig
from collector.detect.signals import STRONG, WEAK, classify_values

_MAX_DRAW = 1.3
"""A window mean above this multiple of the power limit is not one (boards exceed their limit
only briefly)."""


@dataclass(slots=True)
class WorkloadUse:
    """What one workload id of one tenant did in one window (GPUs by share)."""

    gpus: float = 0.0
    strong: float = 0.0
    weak: float = 0.0
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
    mem_sum: float = 0.0
    mem_sq: float = 0.0
    mem_n: int = 0
    slurm: bool = False  # a Slurm job: one id on every node of a multi-node job


class Buckets(Protocol):
    """A GPU window's per-bucket series, as ``node_series`` reads it (``attestation.statement.Series``)."""

    @property
    def util_permille(self) -> Sequence[int | None]: ...
    @property
    def power_mw(self) -> Sequence[int | None]: ...


class GpuLoad(Protocol):
    """What the coupling tests read of a GPU window (``node_level_exact``, ``signals.node_series``):
    a ``GpuWindow``, or the same values made without the record (collector/prometheus/sites.py)."""

    @property
    def power_limit_mw(self) -> int | None: ...
    @property
    def energy_start_mj(self) -> int | None: ...
    @property
    def energy_end_mj(self) -> int | None: ...
    @property
    def power_mean_mw(self) -> int | None: ...
    @property
    def util_mean_permille(self) -> int | None: ...
    @property
    def series(self) -> Buckets | None: ...
    @property
    def samples(self) -> int: ...


@dataclass(slots=True)
class TenantWindow:
    """One tenant in one window."""

    workloads: dict[str, WorkloadUse] = field(default_factory=dict)
    by_node: dict[str, list[GpuLoad]] = field(default_factory=dict)  # occupied GPUs per node
    strong: float = 0.0
    weak: float = 0.0
    occupied: float = 0.0
    window_s: float = 60.0  # the window's length (energy counters turn into mean power with it)
    interval_s: dict[str, float] = field(default_factory=dict)  # node -> its sample interval
    whole_node_gpus: int = 0
    """GPUs of the smallest node whose every GPU the tenant occupies (0: none): a GB200 tray's
    four, an HGX board's eight."""

    def candidate_gpus(self) -> float:
        """Training-shaped GPUs, strong and weak."""
        return self.strong + self.weak

    def sizeable(self, min_gpus: int) -> int:
        """GPUs that make the tenant worth comparing with others: ``min_gpus``, or one whole
        node where its nodes hold fewer (an account of one four-GPU tray is a node's worth)."""
        return min(min_gpus, self.whole_node_gpus) if self.whole_node_gpus else min_gpus

    def _energy_span_s(self, samples: int, step: float | None) -> float:
        """Seconds between a window's two energy readings: the last one before the window
        (carried over) and the window's last. Where the sample interval divides the window,
        every window holds the same readings and the span is the window, whatever readings in
        between were missed. Where it does not (45 s samples in 60 s windows), a window holds
        one reading or two, and the span is that many intervals: 45 s or 90 s, not 60, and
        dividing by the window would make a steady GPU's mean alternate between 0.75 and 1.5
        of its power with its node's sampling phase."""
        w = self.window_s
        if not step or samples <= 0:
            return w
        ratio = w / step
        if abs(ratio - round(ratio)) < 1e-6:
            return w
        span = samples * step
        return span if span <= 2 * w else w

    def node_level_exact(self, node: str) -> tuple[float | None, bool]:
        """Mean load of the GPUs the tenant occupies on ``node``: power / limit where known, else
        utilisation (computed on demand: only the tenants the coupling tests keep need it), and
        whether it is an exact window mean: every GPU's from its energy counter, over a window
        that holds two readings or more (with one, its span ends at the node's own sampling
        phase, up to a window away from another node's).

        Power is the energy counter's change over the window where the window carries both
        readings, over the time between them (``_energy_span_s``): the exact mean over the
        window, where the mean of a few instantaneous
        readings (two at 30 s, one at 60 s) mostly says at which point of a training step each
        reading fell. A change that is negative (a counter reset), above what the board can
        draw, or more than twice off the readings' mean (a reading carried over a gap, a counter
        that does not move) is not a mean: the readings' mean is used instead.
        """
        total = 0.0
        n = 0
        exact = True
        step = self.interval_s.get(node)
        for g in self.by_node.get(node, ()):
            lim = g.power_limit_mw
            e0, e1 = g.energy_start_mj, g.energy_end_mj
            # mJ over the seconds between the two readings: mean power in mW.
            mean_mw = None if e0 is None or e1 is None or e1 < e0 else (e1 - e0) / self._energy_span_s(g.samples, step)
            sampled = g.power_mean_mw
            if mean_mw is not None and sampled is not None and not sampled / 2 <= mean_mw <= 2 * sampled:
                mean_mw = None  # readings carried over a gap, or a counter that does not move
            if lim and mean_mw is not None and mean_mw <= _MAX_DRAW * lim:
                total += mean_mw / lim
                n += 1
                if g.samples < 2:
                    exact = False
            elif g.power_mean_mw is not None and lim:
                total += g.power_mean_mw / lim
                n += 1
                exact = False
            elif g.util_mean_permille is not None:
                total += g.util_mean_permille / 1000
                n += 1
                exact = False
        return (total / n, exact) if n else (None, False)


@dataclass
class SiteWindow:
    """Every tenant of one closed window, and each node's east-west traffic (InfiniBand/RoCE and
    Ethernet, bytes/s; None: not reported)."""

    tenants: dict[str, TenantWindow]
    ib_bytes_per_s: dict[str, float | None]
    gpus_seen: int
    unread_gpus: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per node that reported with GPUs it could not read this window (no sample: neither their
    use nor their workloads are known): (GPUs unread, GPUs read). Nodes that sent no statement
    at all are not here (``DetectorEngine`` knows them as not reported)."""


def aggregate(windows: Iterable[UsageWindow], cfg: DetectConfig) -> SiteWindow:
    tenants: dict[str, TenantWindow] = {}
    ib: dict[str, float | None] = {}
    unread: dict[str, tuple[int, int]] = {}
    gpus_seen = 0
    for w in windows:
        node = w.node_id
        gpus_seen += len(w.gpus)
        io = w.node_io
        seconds = max(1e-3, (w.end_ms - w.start_ms) / 1000)
        # East-west traffic: InfiniBand/RoCE, plus Ethernet where reported (a job may run its
        # collectives over TCP), so that a node whose fabric is idle but whose NICs are busy
        # is never taken for one working alone. Unknown without fabric counters: Ethernet
        # alone cannot say that an unreported fabric is idle.
        if io is None or (io.ib_tx_bytes is None and io.ib_rx_bytes is None):
            ib[node] = None
        else:
            counters = (io.ib_tx_bytes, io.ib_rx_bytes, io.net_tx_bytes, io.net_rx_bytes)
            ib[node] = sum(v for v in counters if v is not None) / seconds
        touched: list[TenantWindow] = []
        n_unread = 0
        for g in w.gpus:
            workloads = g.workloads
            if not workloads:
                if not g.samples:
                    n_unread += 1
                continue
            u = g.util_mean_permille
            lim = g.power_limit_mw
            pm = g.power_mean_mw
            sm = g.sm_active_mean_permille
            s = g.series
            cls = classify_values(u, pm, lim, sm, None if s is None else s.util_permille, cfg)
            pf = pm / lim if (pm is not None and lim) else None
            tc = g.tensor_active_mean_permille
            activity = sm / 1000 if sm is not None else (u / 1000 if u is not None else 1.0)
            mem = g.mem_used_max_bytes
            model = g.model
            for wl in workloads:
                share = wl.share_permille / 1000
                if share <= 0:
                    continue
                tw = tenants.get(wl.tenant)
                if tw is None:
                    tw = tenants[wl.tenant] = TenantWindow(window_s=seconds)
                if not touched or touched[-1] is not tw:
                    touched.append(tw)
                use = tw.workloads.get(wl.workload)
                if use is None:
                    use = tw.workloads[wl.workload] = WorkloadUse(slurm=wl.kind == "slurm_job")
                use.gpus += share
                tw.occupied += share
                if cls == STRONG:
                    use.strong += share
                    tw.strong += share
                elif cls == WEAK:
                    use.weak += share
                    tw.weak += share
                nodes = use.nodes
                nodes[node] = nodes.get(node, 0.0) + share
                lst = tw.by_node.get(node)
                if lst is None:
                    tw.by_node[node] = [g]
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
                if mem is not None:
                    use.mem_sum += mem
                    use.mem_sq += float(mem) * mem
                    use.mem_n += 1
        if n_unread:
            unread[node] = (n_unread, len(w.gpus) - n_unread)
        if touched:  # a node some tenant occupies: does one of them hold all of it?
            n_gpus = sum(1 for g in w.gpus if g.samples)  # as the Prometheus path counts them
            step = w.sample_interval_ms / 1000
            for tw in touched:
                tw.interval_s[node] = step
                if len(tw.by_node.get(node, ())) == n_gpus and not 0 < tw.whole_node_gpus <= n_gpus:
                    tw.whole_node_gpus = n_gpus
    return SiteWindow(tenants, ib, gpus_seen, unread)


__all__ = ["Buckets", "GpuLoad", "SiteWindow", "TenantWindow", "WorkloadUse", "aggregate"]
