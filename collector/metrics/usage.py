"""Usage from accepted statements, by node, GPU and tenant (``observe_window``), and the
collector's event time (the newest window end accepted, the longest window seen)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from attestation.statement import UNATTRIBUTED, UsageWindow
from collector.detect import flops
from collector.metrics.labels import OTHER_TENANTS
from collector.metrics.scrape import NodesReporting


class Series(Collector):
    """One labelled gauge or counter whose values live in a plain dict, exported at scrape time.

    For the series ``observe_window`` writes for every GPU, node and tenant of every accepted
    statement. prometheus_client's ``Gauge.labels(...).set(v)`` costs 3-5 µs a call (label
    lookup, an observability check, a lock per child) where a dict store costs well under
    0.1 µs; with ~25 such calls per 8-GPU statement they were two thirds of observe_window's
    cost. A child is also several objects (metric, value, lock) that every full garbage
    collection walks: two per GPU of the site; a float in a dict is none. The exposition is
    the same as a Gauge's or Counter's (HELP, TYPE, one sample per label set, in the order
    label sets first appeared), less the ``_created`` samples that WithoutCreated drops
    from every counter anyway (tests/unit/collector/test_metrics_window.py compares them).

    ``values`` maps a tuple of label values (in ``labelnames`` order) to the value. Readers
    and writers hold ``lock`` (CollectorMetrics' lock); label sets are never removed.
    """

    def __init__(
        self, kind: str, name: str, documentation: str, labelnames: Sequence[str], lock: threading.Lock
    ) -> None:
        self.kind = kind  # "gauge" or "counter"
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self._lock = lock

    def inc(self, labels: tuple[str, ...], amount: float) -> None:
        """Add ``amount`` (a counter's increment, never negative) to ``labels``' value."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")  # as Counter.inc
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family: GaugeMetricFamily | CounterMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = list(self.values.items())
        for labels, value in items:
            family.add_metric(labels, value)
        yield family


class UsageMetrics:
    """The node, GPU and tenant series, written for every accepted statement.

    ``lock`` is CollectorMetrics' lock; ``nodes`` and ``node_seen`` are its record of the
    nodes (reporting and known) and what it does when a node is first seen.
    """

    def __init__(
        self,
        r: CollectorRegistry,
        lock: threading.Lock,
        nodes: NodesReporting,
        node_seen: Callable[[str], None],
        *,
        mfu: tuple[float, float],
        max_tenants: int,
    ) -> None:
        self._lock = lock
        self._nodes = nodes
        self._node_seen = node_seen
        self._mfu = mfu
        self._max_tenants = max_tenants
        self._tenants: set[str] = set()
        self._last_end_ms: dict[str, int] = {}
        # Event time as the collector knows it (the newest window end accepted) and the longest
        # window seen: how long a finding may go without an update and still be open.
        self.newest_end_ms = -1
        self.window_ms = 0
        self.tenant_overflow = Counter(
            "gpuaudit_collector_tenant_labels_overflowed",
            f"Tenant values counted under tenant={OTHER_TENANTS!r} because {max_tenants} distinct tenants "
            "were already labelled.",
            registry=r,
        )
        # The series observe_window writes per statement, kept in plain dicts (Series: why).

        def series(kind: str, name: str, documentation: str, labelnames: Sequence[str]) -> Series:
            s = Series(kind, name, documentation, labelnames, lock)
            r.register(s)
            return s

        self.node_last_end = series(
            "gauge",
            "gpuaudit_node_last_statement_end_timestamp_seconds",
            "End of the latest accepted statement's window, by node (event time).",
            ["node"],
        )
        self.node_last_received = series(
            "gauge",
            "gpuaudit_node_last_statement_received_timestamp_seconds",
            "When the collector last accepted a statement from the node (wall clock).",
            ["node"],
        )
        self.node_gpus = series(
            "gauge", "gpuaudit_node_gpus", "GPUs in the node's latest accepted statement.", ["node"]
        )
        self.node_energy = series(
            "counter",
            "gpuaudit_node_energy_joules",
            "Energy of the node's GPUs (busy or idle) from their energy counters.",
            ["node"],
        )
        self.gpu_util = series(
            "gauge",
            "gpuaudit_gpu_utilization_ratio",
            "Mean GPU utilization (0-1) in the GPU's latest accepted window.",
            ["node", "gpu"],
        )
        self.gpu_power = series(
            "gauge",
            "gpuaudit_gpu_power_watts",
            "Mean GPU power draw in the GPU's latest accepted window.",
            ["node", "gpu"],
        )
        self.gpu_seconds = series(
            "counter",
            "gpuaudit_tenant_gpu_seconds",
            'GPU time attributed to each tenant (event time); tenant="unattributed": busy with no tenant.',
            ["tenant"],
        )
        self.energy = series(
            "counter",
            "gpuaudit_tenant_energy_joules",
            "GPU energy attributed to each tenant (in proportion to its share of each GPU's time).",
            ["tenant"],
        )
        self.flop = series(
            "counter",
            "gpuaudit_tenant_flop_estimate",
            "Estimated floating-point operations by tenant: peak dense BF16 of the GPU model x activity "
            "(SM active, else utilization) x GPU time x model FLOP utilization (bound=low|high).",
            ["tenant", "bound"],
        )
        self.flop_unavailable = series(
            "counter",
            "gpuaudit_tenant_flop_unavailable_gpu_seconds",
            "GPU time with no FLOP estimate (GPU model of unknown peak, or no activity reading), by tenant.",
            ["tenant"],
        )
        self.unattributed = series(
            "counter",
            "gpuaudit_unattributed_gpu_seconds",
            "Busy GPU time that no tenant rule claimed, by node.",
            ["node"],
        )

    def seed_node_end(self, node: str, end_ms: int) -> None:
        """``node``'s latest window ended at ``end_ms``, as the store says at start (lock held)."""
        self._node_seen(node)
        if end_ms > self._last_end_ms.get(node, -1):
            self._last_end_ms[node] = end_ms
            self.node_last_end.values[(node,)] = end_ms / 1000.0
        self.newest_end_ms = max(self.newest_end_ms, end_ms)

    def observe_window(self, w: UsageWindow) -> None:
        """Usage of one newly accepted statement."""
        with self._lock:
            self._observe_window(w)

    def _observe_window(self, w: UsageWindow) -> None:
        # Called for every accepted statement (1,250 a second on one core), so written for
        # speed: series values are plain dict stores (Series), attributes used per GPU are
        # read once into locals, and counter increments are summed per statement and applied
        # once per label set. The arithmetic, and its order, is that of the plain form.
        node = w.node_id
        key = (node,)
        if node not in self._nodes.known:
            self._node_seen(node)
        self._nodes.last_seen[node] = time.monotonic()
        self.node_last_received.values[key] = time.time()
        # Statements of one key arrive in order; a node re-enrolled with a new key may not.
        end_ms = w.end_ms
        if end_ms > self._last_end_ms.get(node, -1):
            self._last_end_ms[node] = end_ms
            self.node_last_end.values[key] = end_ms / 1000.0
            if end_ms > self.newest_end_ms:
                self.newest_end_ms = end_ms
            if end_ms - w.start_ms > self.window_ms:
                self.window_ms = end_ms - w.start_ms
        self.node_gpus.values[key] = float(len(w.gpus))
        util_values = self.gpu_util.values
        power_values = self.gpu_power.values
        tenants = self._tenants
        interval_ms = w.sample_interval_ms
        node_energy: float | None = None
        unattributed: float | None = None
        overflowed = 0  # workloads whose tenant is counted as OTHER_TENANTS
        gpu_seconds: dict[str, float] = {}
        energy: dict[str, float] = {}
        flop_done: dict[str, float] = {}
        flop_unavailable: dict[str, float] = {}
        model: str | None = None
        peak: flops.GpuPeak | None = None
        for g in w.gpus:
            util = g.util_mean_permille
            power = g.power_mean_mw
            if util is not None or power is not None:
                gpu = (node, g.uuid)
                if util is not None:
                    util_values[gpu] = util / 1000.0
                if power is not None:
                    power_values[gpu] = power / 1000.0
            energy_j = None
            e_start = g.energy_start_mj
            e_end = g.energy_end_mj
            if e_start is not None and e_end is not None and e_end >= e_start:
                energy_j = (e_end - e_start) / 1000.0
                node_energy = (node_energy or 0.0) + energy_j
            if not g.samples or not g.workloads:
                continue
            sampled_ms = g.samples * interval_ms
            if sampled_ms <= 0:
                energy_j = None  # no sampled time to divide the GPU's energy by
            if g.model != model:  # a node's GPUs are usually all one model
                model = g.model
                peak = flops.lookup(model)
            sm = g.sm_active_mean_permille
            active_permille = sm if sm is not None else util
            # The GPU's FLOP/s at its activity (x its workloads' GPU time below); None: no estimate.
            rate = (
                None if peak is None or active_permille is None else peak.bf16_dense_flops * (active_permille / 1000.0)
            )
            for wl in g.workloads:
                tenant = wl.tenant
                if tenant not in tenants:
                    if len(tenants) < self._max_tenants:
                        tenants.add(tenant)
                    else:
                        tenant = OTHER_TENANTS
                        overflowed += 1
                gpu_ms = wl.gpu_ms
                gpu_s = gpu_ms / 1000.0
                gpu_seconds[tenant] = gpu_seconds.get(tenant, 0.0) + gpu_s
                if wl.tenant == UNATTRIBUTED:
                    unattributed = (unattributed or 0.0) + gpu_s
                if energy_j is not None:
                    # The GPU's energy in the window, in proportion to the time it was this
                    # workload's (at most all of it): min(1.0, x) without the call.
                    part = gpu_ms / sampled_ms
                    share = energy_j * (part if part < 1.0 else 1.0)
                    energy[tenant] = energy.get(tenant, 0.0) + share
                if rate is None:
                    flop_unavailable[tenant] = flop_unavailable.get(tenant, 0.0) + gpu_s
                else:
                    flop_done[tenant] = flop_done.get(tenant, 0.0) + rate * gpu_s
        if overflowed:
            self.tenant_overflow.inc(overflowed)
        if node_energy is not None:
            self.node_energy.inc(key, node_energy)
        if unattributed is not None:
            self.unattributed.inc(key, unattributed)
        for tenant, v in gpu_seconds.items():
            self.gpu_seconds.inc((tenant,), v)
        for tenant, v in energy.items():
            self.energy.inc((tenant,), v)
        for tenant, v in flop_unavailable.items():
            self.flop_unavailable.inc((tenant,), v)
        mfu_low, mfu_high = self._mfu
        for tenant, v in flop_done.items():
            self.flop.inc((tenant, "low"), mfu_low * v)
            self.flop.inc((tenant, "high"), mfu_high * v)
