"""CollectorMetrics.observe_window, written for speed (plain dicts exported by a collector of
its own), exports exactly what the plain prometheus_client form exports: the same series,
label sets, values to the bit, in the same exposition, text and OpenMetrics."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from attestation.statement import UNATTRIBUTED, UsageWindow, Workload
from collector.detect import flops
from collector.metrics import OTHER_TENANTS, CollectorMetrics

# The families observe_window writes, as (attribute, kind, name, labels) of the plain form.
FAMILIES = (
    ("node_last_end", "gauge", "gpuaudit_node_last_statement_end_timestamp_seconds", ["node"]),
    ("node_gpus", "gauge", "gpuaudit_node_gpus", ["node"]),
    ("node_energy", "counter", "gpuaudit_node_energy_joules", ["node"]),
    ("gpu_util", "gauge", "gpuaudit_gpu_utilization_ratio", ["node", "gpu"]),
    ("gpu_power", "gauge", "gpuaudit_gpu_power_watts", ["node", "gpu"]),
    ("gpu_seconds", "counter", "gpuaudit_tenant_gpu_seconds", ["tenant"]),
    ("energy", "counter", "gpuaudit_tenant_energy_joules", ["tenant"]),
    ("flop", "counter", "gpuaudit_tenant_flop_estimate", ["tenant", "bound"]),
    ("flop_unavailable", "counter", "gpuaudit_tenant_flop_unavailable_gpu_seconds", ["tenant"]),
    ("unattributed", "counter", "gpuaudit_unattributed_gpu_seconds", ["node"]),
)


class PlainMetrics:
    """The reference: observe_window in its plain form, one ``labels().set()/.inc()`` at a time."""

    def __init__(self, documentation: dict[str, str], mfu: tuple[float, float], max_tenants: int) -> None:
        self.registry = CollectorRegistry()
        self.m: dict[str, Any] = {}
        for attr, kind, name, labels in FAMILIES:
            cls = Gauge if kind == "gauge" else Counter
            self.m[attr] = cls(name, documentation[attr], labels, registry=self.registry)
        self.overflow = Counter("gpuaudit_collector_tenant_labels_overflowed", "x", registry=self.registry)
        self.mfu = mfu
        self.max_tenants = max_tenants
        self.tenants: set[str] = set()
        self.last_end: dict[str, int] = {}

    def tenant(self, t: str) -> str:
        if t in self.tenants:
            return t
        if len(self.tenants) < self.max_tenants:
            self.tenants.add(t)
            return t
        self.overflow.inc()
        return OTHER_TENANTS

    def observe_window(self, w: UsageWindow) -> None:
        m, node = self.m, w.node_id
        if w.end_ms > self.last_end.get(node, -1):
            self.last_end[node] = w.end_ms
            m["node_last_end"].labels(node).set(w.end_ms / 1000.0)
        m["node_gpus"].labels(node).set(len(w.gpus))
        node_energy: float | None = None
        unattributed: float | None = None
        sums: dict[str, dict[str, float]] = {k: {} for k in ("gpu_s", "energy", "flop", "unavailable")}

        def add(kind: str, tenant: str, v: float) -> None:
            sums[kind][tenant] = sums[kind].get(tenant, 0.0) + v

        for g in w.gpus:
            if g.util_mean_permille is not None:
                m["gpu_util"].labels(node, g.uuid).set(g.util_mean_permille / 1000.0)
            if g.power_mean_mw is not None:
                m["gpu_power"].labels(node, g.uuid).set(g.power_mean_mw / 1000.0)
            energy_j = None
            if g.energy_start_mj is not None and g.energy_end_mj is not None and g.energy_end_mj >= g.energy_start_mj:
                energy_j = (g.energy_end_mj - g.energy_start_mj) / 1000.0
                node_energy = (node_energy or 0.0) + energy_j
            if g.samples == 0:
                continue
            sampled_ms = g.samples * w.sample_interval_ms
            peak = flops.lookup(g.model)
            active = g.sm_active_mean_permille if g.sm_active_mean_permille is not None else g.util_mean_permille
            for wl in g.workloads:
                tenant = self.tenant(wl.tenant)
                gpu_s = wl.gpu_ms / 1000.0
                add("gpu_s", tenant, gpu_s)
                if wl.tenant == UNATTRIBUTED:
                    unattributed = (unattributed or 0.0) + gpu_s
                if energy_j is not None and sampled_ms > 0:
                    add("energy", tenant, energy_j * min(1.0, wl.gpu_ms / sampled_ms))
                if peak is None or active is None:
                    add("unavailable", tenant, gpu_s)
                else:
                    add("flop", tenant, peak.bf16_dense_flops * (active / 1000.0) * gpu_s)
        if node_energy is not None:
            m["node_energy"].labels(node).inc(node_energy)
        if unattributed is not None:
            m["unattributed"].labels(node).inc(unattributed)
        for t, v in sums["gpu_s"].items():
            m["gpu_seconds"].labels(t).inc(v)
        for t, v in sums["energy"].items():
            m["energy"].labels(t).inc(v)
        for t, v in sums["unavailable"].items():
            m["flop_unavailable"].labels(t).inc(v)
        for t, v in sums["flop"].items():
            m["flop"].labels(t, "low").inc(self.mfu[0] * v)
            m["flop"].labels(t, "high").inc(self.mfu[1] * v)


def _windows() -> list[UsageWindow]:
    """A small demo site, varied: shared GPUs with uneven shares, unattributed time, an
    unknown model, SM activity, missing readings and energy, a GPU with no samples."""
    import json

    from core.pipeline import windows_from_records
    from core.sim.scenarios import demo_site
    from core.trace import parse_lines

    records = demo_site(seed=2, hours=0.1, sample_interval_s=20, training_nodes=2, inference_nodes=3, slurm_nodes=3)
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    out: list[UsageWindow] = []
    for k, w in enumerate(windows_from_records(parse_lines(lines))):
        gpus = list(w.gpus)
        g = gpus[0]
        if k % 3 == 0:  # time-sliced: three workloads, two tenants and unattributed time
            wl = g.workloads[0] if g.workloads else Workload("t-x", "process", "w", 1, None, 1000, 60_000)
            gpus[0] = msgspec.structs.replace(
                g,
                sm_active_mean_permille=613,
                workloads=(
                    msgspec.structs.replace(wl, share_permille=333, gpu_ms=20_011),
                    msgspec.structs.replace(wl, tenant=f"t-extra-{k % 7}", share_permille=333, gpu_ms=19_997),
                    msgspec.structs.replace(wl, tenant=UNATTRIBUTED, share_permille=334, gpu_ms=70_000),
                ),
            )
        if k % 4 == 1:
            gpus[1] = msgspec.structs.replace(gpus[1], model="Acme Tensor X1", energy_start_mj=None)
        if k % 5 == 2:
            gpus[2] = msgspec.structs.replace(gpus[2], util_mean_permille=None, power_mean_mw=None)
        if k % 6 == 3:
            gpus[3] = msgspec.structs.replace(gpus[3], samples=0)
        if k % 7 == 4:  # an energy counter that went backwards: no energy for this GPU
            gpus[4] = msgspec.structs.replace(gpus[4], energy_end_mj=(gpus[4].energy_start_mj or 1) - 1)
        out.append(msgspec.structs.replace(w, gpus=tuple(gpus)))
    return out


def _families(text: str, names: Iterable[str]) -> str:
    """The lines of ``text`` (an exposition) that belong to the families ``names``."""
    keep = tuple(names)
    return "\n".join(
        line
        for line in text.splitlines()
        if any(line.startswith((n, f"# HELP {n}", f"# TYPE {n}", f"# UNIT {n}")) for n in keep)
    )


@pytest.mark.parametrize("max_tenants", [2000, 4])
def test_window_series_are_those_of_the_plain_form(max_tenants: int) -> None:
    windows = _windows()
    m = CollectorMetrics("test", mfu=(0.25, 0.55), max_tenants=max_tenants)
    docs = {attr: getattr(m.usage, attr).documentation for attr, *_ in FAMILIES}
    ref = PlainMetrics(docs, (0.25, 0.55), max_tenants)
    for w in windows:
        m.observe_window(w)
        ref.observe_window(w)
    names = [name for _, _, name, _ in FAMILIES]
    for generate in (generate_latest, generate_openmetrics):
        got = _families(generate(m.registry).decode(), names)
        want = _families(generate(ref.registry).decode(), [f"{n}_total" for n in names] + names)
        want = "\n".join(line for line in want.splitlines() if "_created" not in line)
        assert got == want
        assert got.count("\n") > 100  # the site's nodes, GPUs and tenants are all there

    def value(reg: CollectorRegistry, name: str) -> float | None:
        return reg.get_sample_value(name)

    overflow = "gpuaudit_collector_tenant_labels_overflowed_total"
    assert value(m.registry, overflow) == value(ref.registry, overflow)
    if max_tenants == 4:
        assert (value(m.registry, overflow) or 0) > 0
        assert f'tenant="{OTHER_TENANTS}"' in generate_latest(m.registry).decode()


def test_node_receive_time_is_the_wall_clock() -> None:
    m = CollectorMetrics("test")
    w = _windows()[0]
    before = time.time()
    m.observe_window(w)
    got = m.registry.get_sample_value("gpuaudit_node_last_statement_received_timestamp_seconds", {"node": w.node_id})
    assert got is not None and before <= got <= time.time()


def test_a_negative_increment_is_refused_as_by_a_counter() -> None:
    m = CollectorMetrics("test")
    with pytest.raises(ValueError):
        m.usage.gpu_seconds.inc(("t",), -1.0)
