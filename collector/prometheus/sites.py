"""A chunk's rows -> what the detector reads of each window, without the records.

``detect --prometheus`` needs of a window what ``collector.detect.usage.aggregate`` makes of
it: per tenant and workload the GPUs, classes and signal sums, and the load of the GPUs each
tenant occupies on the nodes the coupling tests sample. ``aggregate_rows`` makes exactly that
(the same values, in the same order, to the bit) from ``ChunkRows``, for every window of a
chunk at once, so that no ``GpuWindow``/``UsageWindow`` record is made; the rows (integer
columns, classified in the worker process) come from the worker to the detector's at the cost
of a copy (collector/prometheus/pipeline.py); the engine takes the result with
``DetectorEngine.observe_site``.

It keeps ``aggregate``'s order throughout: nodes sorted, a node's GPUs by (index, UUID), a
GPU's workloads as listed; so every sum adds the same terms in the same order and every dict
is filled in the same order (tests/unit/collector/prometheus/test_sites.py compares the two
on the benchmark's site and on the realistic chunks of the equivalence tests). The per-node
GPU lists that ``History.record`` reads (``TenantWindow.by_node``) are kept only for the
nodes it can read: the stable sample of ``sync_sample_nodes`` of them, which is the sample of
itself.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple, cast

import msgspec

from collector.detect.config import DetectConfig
from collector.detect.signals import STRONG, WEAK, stable_sample
from collector.detect.usage import SiteWindow, TenantWindow, WorkloadUse
from collector.prometheus.coverage import Coverage
from collector.prometheus.rows import (
    CLASS,
    COLUMNS,
    MEM_USED,
    NONE,
    POWER_LIMIT,
    POWER_MEAN,
    SAMPLES,
    SM,
    TENSOR,
    UTIL,
    ChunkRows,
)

# The records of the aggregate are msgspec structs where ``aggregate`` has dataclasses: the
# same fields, read the same way by the engine, but made and pickled in C (a window of a
# 300-node site has some 1,500 workloads and 1,000 sampled GPUs; with the dataclasses,
# pickling and unpickling them cost more than the detector).


class Buckets(msgspec.Struct, gc=False):
    """A GPU window's per-step series (``attestation.statement.Series`` without the step)."""

    util_permille: tuple[int | None, ...]
    power_mw: tuple[int | None, ...]


class GpuLoad(msgspec.Struct, gc=False):
    """What the coupling tests read of a GPU window (``collector.detect.usage.GpuLoad``)."""

    power_limit_mw: int | None
    energy_start_mj: int | None
    energy_end_mj: int | None
    power_mean_mw: int | None
    util_mean_permille: int | None
    series: Buckets | None
    samples: int = 0


class WorkloadSums(msgspec.Struct, gc=False):
    """``collector.detect.usage.WorkloadUse``, field for field. Not tracked by the cyclic
    garbage collector (its dicts hold floats and lists of floats: no cycle can pass through
    it), which would otherwise walk the 90,000 of them an hour of a 300-node site makes."""

    gpus: float = 0.0
    strong: float = 0.0
    weak: float = 0.0
    nodes: dict[str, float] = msgspec.field(default_factory=dict)
    models: dict[str, list[float]] = msgspec.field(default_factory=dict)
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
    slurm: bool = False


class SiteAt(NamedTuple):
    """One window of the site: its span, the nodes with a window there (sorted), the aggregate."""

    start_ms: int
    end_ms: int
    nodes: tuple[str, ...]
    site: SiteWindow


def _series(col: list[int], at: int, p: int) -> tuple[int | None, ...]:
    t = tuple(col[at : at + p])
    return t if NONE not in t else tuple(None if x == NONE else x for x in t)


def _load(col: list[int], nw: int, p: int, w: int) -> GpuLoad:
    """The coupling tests' view of window ``w`` of the GPU whose columns are ``col``
    (POWER_LIMIT, ENERGY_START, ENERGY_END and POWER_MEAN are consecutive columns)."""
    i = POWER_LIMIT * nw + w
    lim, e0, e1, pm, u = col[i], col[i + nw], col[i + 2 * nw], col[i + 3 * nw], col[UTIL * nw + w]
    series = None
    if p >= 2:
        at = COLUMNS * nw + w * p
        series = Buckets(_series(col, at, p), _series(col, at + nw * p, p))
    return GpuLoad(
        None if lim == NONE else lim,
        None if e0 == NONE else e0,
        None if e1 == NONE else e1,
        None if pm == NONE else pm,
        None if u == NONE else u,
        series,
        max(0, col[SAMPLES * nw + w]),
    )


def aggregate_rows(
    rows: ChunkRows, cfg: DetectConfig, window_ms: int, coverage: Coverage | None = None
) -> list[SiteAt]:
    """Every window of the chunk with a node in it, as ``usage.aggregate`` gives it for the
    windows ``WindowBuilder.assemble`` would make of ``rows``; ``coverage`` counts the host-
    and GPU-windows as ``assemble`` does. The windows must have been classified with ``cfg``
    (``WindowBuilder.compute``, in the worker process)."""
    if rows.config != cfg:
        raise ValueError("the chunk's windows were classified with another detector configuration")
    windows = nw = rows.windows
    seconds = max(1e-3, window_ms / 1000)
    tenants_at: list[dict[str, TenantWindow]] = [{} for _ in range(windows)]
    ib_at: list[dict[str, float | None]] = [{} for _ in range(windows)]
    nodes_at: list[list[str]] = [[] for _ in range(windows)]
    gpus_at: list[dict[str, int]] = [{} for _ in range(windows)]  # GPUs with a reading, per host
    seen = [0] * windows
    weak_min, strong_min = WEAK, STRONG
    for host, gpus in rows.hosts:
        present = [0] * windows
        for _index, _uuid, model, _identity, ints, attributions, _reasons, _events in gpus:
            # The GPU's columns as lists (an int per window, -1: None), read window by window.
            col = ints.tolist() if isinstance(ints, array) else list(ints)
            samples, lims, pms, utils = (col[k * nw : k * nw + nw] for k in (SAMPLES, POWER_LIMIT, POWER_MEAN, UTIL))
            mems, sms, tcs, classes = (col[k * nw : k * nw + nw] for k in (MEM_USED, SM, TENSOR, CLASS))
            for w in range(windows):
                if not samples[w]:
                    continue
                present[w] += 1
                workloads = attributions[w][1]
                if not workloads:
                    continue
                u = utils[w]
                lim = lims[w]
                pm = pms[w]
                sm = sms[w]
                cls = classes[w]
                pf = pm / lim if (pm != NONE and lim > 0) else None
                tc = tcs[w]
                activity = sm / 1000 if sm != NONE else (u / 1000 if u != NONE else 1.0)
                mem = mems[w]
                tenants = tenants_at[w]
                for wl in workloads:
                    share = wl.share_permille / 1000
                    if share <= 0:
                        continue
                    tw = tenants.get(wl.tenant)
                    if tw is None:
                        tw = tenants[wl.tenant] = TenantWindow(window_s=seconds)
                    use = tw.workloads.get(wl.workload)
                    if use is None:
                        use = tw.workloads[wl.workload] = cast(WorkloadUse, WorkloadSums(slurm=wl.kind == "slurm_job"))
                    use.gpus += share
                    tw.occupied += share
                    if cls == strong_min:
                        use.strong += share
                        tw.strong += share
                    elif cls == weak_min:
                        use.weak += share
                        tw.weak += share
                    nodes = use.nodes
                    nodes[host] = nodes.get(host, 0.0) + share
                    # The GPU's columns stand for it here (once per window); turned into a
                    # ``GpuLoad`` below, for the sampled nodes only.
                    lst = tw.by_node.get(host)
                    if lst is None:
                        tw.by_node[host] = [col]  # type: ignore[list-item]
                    elif lst[-1] is not col:  # type: ignore[comparison-overlap]
                        lst.append(col)  # type: ignore[arg-type]
                    m = use.models.get(model)
                    if m is None:
                        use.models[model] = [share, share * activity]
                    else:
                        m[0] += share
                        m[1] += share * activity
                    if u != NONE:
                        use.util_sum += u * share
                        use.util_w += share
                    if pf is not None:
                        use.power_sum += pf * share
                        use.power_w += share
                    if sm != NONE:
                        use.sm_sum += sm * share
                        use.sm_w += share
                    if tc != NONE:
                        use.tensor_sum += tc * share
                        use.tensor_w += share
                    if mem != NONE:
                        use.mem_sum += mem
                        use.mem_sq += float(mem) * mem
                        use.mem_n += 1
        # Every node with a window has no east-west counters here (not read from Prometheus).
        for w, k in enumerate(present):
            if k:
                ib_at[w][host] = None
                nodes_at[w].append(host)
                seen[w] += k
                gpus_at[w][host] = k
    k = cfg.sync_sample_nodes
    p = rows.per_window
    out: list[SiteAt] = []
    start = rows.start_ms
    host_windows = None if coverage is None else coverage.host_windows
    for w in range(windows):
        nodes_w = nodes_at[w]
        if not nodes_w:
            continue
        node_gpus = gpus_at[w]
        for tw in tenants_at[w].values():
            for n, lst in tw.by_node.items():
                g = node_gpus.get(n, 0)
                if g and len(lst) == g and not 0 < tw.whole_node_gpus <= g:
                    tw.whole_node_gpus = g
            sample = set(stable_sample(tw.by_node, k))
            tw.by_node = {
                n: [_load(x, nw, p, w) for x in lst]  # type: ignore[arg-type]
                for n, lst in tw.by_node.items()
                if n in sample
            }
        s = start + w * window_ms
        out.append(SiteAt(s, s + window_ms, tuple(nodes_w), SiteWindow(tenants_at[w], ib_at[w], seen[w])))
        if host_windows is not None:
            for h in nodes_w:
                host_windows[h] = host_windows.get(h, 0) + 1
    if coverage is not None:
        coverage.gpu_windows += sum(seen)
    return out


__all__ = ["Buckets", "GpuLoad", "SiteAt", "WorkloadSums", "aggregate_rows"]
