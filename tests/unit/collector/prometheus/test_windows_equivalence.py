"""The window builder computes every window's values in bulk (collector/prometheus/windows.py,
``WindowBuilder.compute``/``assemble``); it must give exactly the windows the window-by-window
builder it replaced gave. ``ReferenceBuilder`` keeps that builder's ``build`` and
``_gpu_window`` as they were (copied, not imported), and realistic chunks (scrape gaps, a GPU
that stops, NaN points, counter resets, pods that change or share a GPU, Slurm jobs, idle and
busy GPUs with no workload label, power-limit series with zeros, unknown models, 15, 30 and
60 s steps) go through both, chunk after chunk so that the energy counter carries over.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Iterable, Mapping

import pytest

from attestation.chain import ENERGY_RESET_EVENT
from attestation.statement import Event, GpuWindow, Series, UsageWindow, Workload, statement_bytes
from collector.prometheus.client import Chunk, RangeSeries
from collector.prometheus.labels import _first
from collector.prometheus.queries import _FIELD_KEYS, _PRESENCE, _READ_KEYS, METRIC_OF, METRICS
from collector.prometheus.rows import _MIB, _NO_VISIBLE_PROCESS, _Gpu
from collector.prometheus.windows import AGENT_VERSION, BOOT_ID, NODE_UNAVAILABLE, UNSIGNED_CHAIN, WindowBuilder
from core.tenantrules import TenantRules
from core.window import permille_shares

T0 = 1_772_424_000_000
RULES = TenantRules(namespaces={"team-a": "t-a", "team-b": "t-b"}, slurm_accounts={"physics": "t-phys"})
SLURM = {"4242": "physics", "77": "physics"}


class ReferenceBuilder(WindowBuilder):
    """The builder as it was before the bulk computation: one GPU-window at a time."""

    def build(self, chunk: Chunk, results: Mapping[str, Iterable[RangeSeries]]) -> list[UsageWindow]:
        """The windows of ``chunk`` from the range-query results by metric key (``METRICS``),
        sorted by (window start, host)."""
        step = self.step_ms
        n = (chunk.end_ms - chunk.start_ms) // step
        grid0 = chunk.start_ms - 1  # ms of step -1's end; point k ends at grid0 + (k + 1) * step
        cov = self.coverage
        lm = self.labels
        gpus: dict[tuple[str, str], _Gpu] = {}
        exported_names = lm.k8s[0][:2] if lm.exported else ()
        host_names = "/".join(lm.host)
        materialised = {k: list(v) for k, v in results.items()}
        exported_hosts: set[str] = set()
        if exported_names:
            for s in materialised.get("util", ()):
                m = s.metric
                if m.get(exported_names[0]) or m.get(exported_names[1]):
                    h = _first(m, lm.host)
                    if h:
                        exported_hosts.add(h)
        for key, series_list in materialised.items():
            cov.series[key] = cov.series.get(key, 0) + len(series_list)
            npoints = 0
            nonfinite = 0
            for s in series_list:
                m = s.metric
                host = _first(m, lm.host)
                if host is None:
                    cov.skip(f"{METRIC_OF[key]} without a host label ({host_names})")
                    continue
                uuid = _first(m, lm.uuid)
                if uuid is None:
                    cov.skip(f"{METRIC_OF[key]} without a GPU UUID label ({'/'.join(lm.uuid)})")
                    continue
                g = gpus.get((host, uuid))
                if g is None:
                    g = gpus[(host, uuid)] = _Gpu(host, uuid, n)
                if g.index is None:
                    idx = _first(m, lm.gpu)
                    if idx is not None and idx.isdigit():
                        g.index = int(idx)
                if g.model is None:
                    g.model = _first(m, lm.model)
                if g.pci is None:
                    g.pci = _first(m, lm.pci_bus_id)
                arr = g.vals.get(key)
                att = self._cached_attribution(m, host in exported_hosts) if key == "util" else None
                vs = s.values
                if (
                    arr is None
                    and len(vs) == n
                    and round((vs[0][0] * 1000 - grid0) / step) == 1
                    and round((vs[-1][0] * 1000 - grid0) / step) == n
                ):
                    # Every step of the chunk (the common case): one pass in C, no index arithmetic.
                    dense: list[float | None] = [float(raw) for _, raw in vs]
                    if all(map(math.isfinite, dense)):  # type: ignore[arg-type]
                        g.vals[key] = dense
                        npoints += n
                        if key == "util":  # the GPU's first utilisation series: no workloads yet
                            g.atts = [() if att is None else (att,)] * n
                        continue
                if arr is None:
                    arr = g.vals[key] = [None] * n
                atts = g.atts
                for t, raw in vs:
                    k = round((t * 1000 - grid0) / step) - 1
                    if not 0 <= k < n:
                        continue
                    v = float(raw)
                    if not math.isfinite(v):
                        nonfinite += 1
                        continue
                    npoints += 1
                    if arr[k] is None:
                        arr[k] = v
                    if key == "util":
                        cur = atts[k]
                        if cur is None:
                            atts[k] = () if att is None else (att,)
                        elif att is not None and att not in cur:
                            atts[k] = (*cur, att)
            cov.points[key] = cov.points.get(key, 0) + npoints
            if nonfinite:
                cov.nonfinite_points[key] = cov.nonfinite_points.get(key, 0) + nonfinite
        for q in METRICS:
            cov.series.setdefault(q.key, 0)

        by_window: dict[tuple[int, str], list[GpuWindow]] = {}
        windows = (chunk.end_ms - chunk.start_ms) // self.window_ms
        for (host, uuid), g in gpus.items():
            cov.host_gpus.setdefault(host, set()).add(uuid)
            const = self._constants(g)
            for w in range(windows):
                gw = self._gpu_window(g, w, const)
                if gw is not None:
                    by_window.setdefault((chunk.start_ms + w * self.window_ms, host), []).append(gw)
        out = []
        for (start, host), gws in sorted(by_window.items()):
            cov.host_windows[host] = cov.host_windows.get(host, 0) + 1
            cov.gpu_windows += len(gws)
            gws.sort(key=lambda x: (x.index, x.uuid))
            out.append(
                UsageWindow(
                    node_id=host,
                    boot_id=BOOT_ID,
                    agent_version=AGENT_VERSION,
                    start_ms=start,
                    end_ms=start + self.window_ms,
                    sample_interval_ms=step,
                    chain=UNSIGNED_CHAIN,
                    gpus=tuple(gws),
                    unavailable=dict(NODE_UNAVAILABLE),
                )
            )
        return out

    def _gpu_window(
        self, g: _Gpu, w: int, const: tuple[dict[str, str], int | None, dict[str, str]]
    ) -> GpuWindow | None:
        p = self.per_window
        lo = w * p
        hi = lo + p
        vals = g.vals
        cols = [vals[k][lo:hi] for k in _PRESENCE if k in vals]
        samples = 0
        for j in range(p):
            for c in cols:
                if c[j] is not None:
                    samples += 1
                    break
        if not samples:
            return None
        base, table_limit, identity = const
        reasons = dict(base)
        got: dict[str, list[float]] = {}
        slices: dict[str, list[float | None]] = {}
        for key in _READ_KEYS:
            arr = vals.get(key)
            if arr is None:
                continue
            sl = arr[lo:hi]
            slices[key] = sl
            read = [v for v in sl if v is not None]
            if read:
                got[key] = read
        for fieldname, key in _FIELD_KEYS:
            if key in vals and key not in got:
                reasons[fieldname] = f"{METRIC_OF[key]}: no point in window"
        pts: list[float] | None = got.get("util")
        util = None if pts is None else max(0, min(1000, round(sum(pts) / len(pts) * 10)))
        pts = got.get("power")
        power_mean = power_max = None
        if pts is not None:
            power_mean = max(0, round(sum(pts) / len(pts) * 1000))
            power_max = max(0, round(max(got.get("power_max") or pts) * 1000))
        pts = got.get("mem_used")
        mem_used = None if pts is None else max(0, round(max(pts) * _MIB))
        pts = got.get("mem_total")
        mem_total = None if pts is None else max(0, round(max(pts) * _MIB))
        pts = got.get("sm")
        sm = None if pts is None else max(0, min(1000, round(sum(pts) / len(pts) * 1000)))
        pts = got.get("tensor")
        tensor = None if pts is None else max(0, min(1000, round(sum(pts) / len(pts) * 1000)))
        pts = got.get("power_limit")
        power_limit = round(pts[-1] * 1000) if pts is not None and pts[-1] > 0 else table_limit
        if power_limit is None and "power_limit_mw" not in reasons:
            reasons["power_limit_mw"] = (
                f"{METRIC_OF['power_limit']}: no point in window, and model {g.model or 'unknown'!r} not in the "
                "table of default limits"
            )
        # Energy: carried over from the last reading before the window, as on the agent.
        events: tuple[Event, ...] = ()
        ckey = (g.host, g.uuid)
        carry = self._energy_carry.get(ckey)
        e_start = e_end = carry
        pts = got.get("energy")
        if pts is not None:
            last = carry
            evs = []
            for v in pts:
                e = round(v)
                if e < 0:
                    continue
                if last is not None and e < last:
                    evs.append(Event(ENERGY_RESET_EVENT, f"counter went from {last} to {e} mJ"))
                if e_start is None:
                    e_start = e
                last = e
            e_end = last
            if last is not None:
                self._energy_carry[ckey] = last
            events = tuple(evs)
        if e_start is None or e_end is None:
            e_start = e_end = None
            why = reasons.get("energy_start_mj") or f"{METRIC_OF['energy']}: no point yet"
            reasons["energy_start_mj"] = reasons["energy_end_mj"] = why
        else:
            reasons.pop("energy_start_mj", None)
            reasons.pop("energy_end_mj", None)
        util_w = slices.get("util")
        series = None
        if p >= 2:
            power_w = slices.get("power")
            series = Series(
                self.step_ms,
                (p * (None,))
                if util_w is None
                else tuple(None if v is None else max(0, min(1000, round(v * 10))) for v in util_w),
                (p * (None,))
                if power_w is None
                else tuple(None if v is None else max(0, round(v * 1000)) for v in power_w),
            )
        # Workloads: per step with a utilisation point, who its series named (shared equally).
        weights: dict[tuple[str, str, str], float] = {}
        atts = g.atts
        for j in range(p):
            a = atts[lo + j]
            if a is None:
                continue
            if len(a) == 1:
                k3 = a[0]
                weights[k3] = weights.get(k3, 0.0) + 1.0
            elif a:
                share = 1.0 / len(a)
                for k3 in a:
                    weights[k3] = weights.get(k3, 0.0) + share
            elif util_w is not None:
                u = util_w[j]
                if u is not None and u > 0:
                    weights[_NO_VISIBLE_PROCESS] = weights.get(_NO_VISIBLE_PROCESS, 0.0) + 1.0
        workloads: tuple[Workload, ...] = ()
        split = "exclusive"
        if len(weights) == 1:
            ((k3, wt),) = weights.items()
            workloads = (Workload(k3[0], k3[1], k3[2], 0, None, 1000, round(wt * self.step_ms)),)
        elif weights:
            shares = permille_shares(weights)
            split = "equal"
            workloads = tuple(
                Workload(k3[0], k3[1], k3[2], 0, None, shares[k3], round(wt * self.step_ms))
                for k3, wt in sorted(weights.items())
            )
        return GpuWindow(
            index=g.index if g.index is not None else 0,
            uuid=g.uuid,
            serial=None,
            model=g.model or "unknown",
            mem_total_bytes=mem_total,
            power_limit_mw=power_limit,
            samples=samples,
            energy_start_mj=e_start,
            energy_end_mj=e_end,
            power_mean_mw=power_mean,
            power_max_mw=power_max,
            util_mean_permille=util,
            mem_used_max_bytes=mem_used,
            sm_active_mean_permille=sm,
            tensor_active_mean_permille=tensor,
            series=series,
            split_method=split,
            workloads=workloads,
            unavailable=reasons,
            events=events,
            identity=identity,
        )


# ---------------------------------------------------------------------------
# A realistic site, chunk by chunk


def _site(rng: random.Random, hosts: int) -> list[dict[str, object]]:
    """Per GPU: its labels and what its series do (fixed over the chunks)."""
    out: list[dict[str, object]] = []
    for h in range(hosts):
        host = f"node-{h:02d}"
        shape = rng.choice(("servicemonitor", "plain", "slurm", "bare"))
        model = rng.choice(("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Mystery GPU 9000"))
        for i in range(rng.choice((1, 2, 4, 8))):
            labels = {"Hostname" if h % 3 else "hostname": host, "UUID": f"GPU-{h}-{i}", "modelName": model}
            if rng.random() < 0.9:
                labels["gpu"] = str(i)
            if rng.random() < 0.7:
                labels["pci_bus_id"] = f"00000000:{i:02X}:00.0"
            if shape == "servicemonitor":
                labels |= {"namespace": "gpu-operator", "pod": f"nvidia-dcgm-exporter-{h}"}
            out.append(
                {
                    "labels": labels,
                    "shape": shape,
                    "gaps": rng.choice((0.0, 0.0, 0.02, 0.2)),
                    "busy": rng.random(),
                    "sm": rng.random() < 0.3,
                    "limit": rng.random() < 0.2,
                    "energy": rng.random() < 0.9,
                    "reset_at": rng.random(),
                    "energy_mj": rng.randrange(0, 10**9),
                }
            )
    return out


def _workload(rng: random.Random, gpu: dict[str, object], k: int) -> dict[str, str]:
    shape = gpu["shape"]
    pod = f"job-{k // 40}-{rng.randrange(2) if k % 7 == 0 else 0}"
    if shape == "servicemonitor":
        return {"exported_namespace": rng.choice(("team-a", "team-b", "other")), "exported_pod": pod}
    if shape == "plain":
        return {"namespace": rng.choice(("team-a", "team-b")), "pod": pod}
    if shape == "slurm":
        return {"hpc_job": rng.choice(("4242", "77", "13"))}
    return {}


def _chunk_results(
    rng: random.Random, site: list[dict[str, object]], chunk: Chunk, step_ms: int
) -> dict[str, list[RangeSeries]]:
    n = (chunk.end_ms - chunk.start_ms) // step_ms
    res: dict[str, list[RangeSeries]] = {}

    def add(key: str, labels: dict[str, str], pts: list[tuple[int, float]]) -> None:
        if pts:
            vals = [((chunk.start_ms + (k + 1) * step_ms - 1) / 1000, repr(v)) for k, v in pts]
            res.setdefault(key, []).append(RangeSeries(dict(labels), vals))

    for gpu in site:
        labels: dict[str, str] = gpu["labels"]  # type: ignore[assignment]
        gaps: float = gpu["gaps"]  # type: ignore[assignment]
        stop = n if rng.random() < 0.9 else rng.randrange(n)  # a GPU that stops mid-chunk
        steps = [k for k in range(stop) if rng.random() >= gaps]
        # Utilisation: one series per workload label set (a pod that changes, two that share).
        by_labels: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for k in steps:
            busy = rng.random() < gpu["busy"]  # type: ignore[operator]
            u = rng.choice((rng.uniform(1, 100), 100.0, 97.0)) if busy else 0.0
            if rng.random() < 0.01:
                u = math.nan
            wl = _workload(rng, gpu, k) if busy or rng.random() < 0.3 else {}
            by_labels.setdefault(tuple(sorted((labels | wl).items())), []).append((k, u))
            if wl and rng.random() < 0.05:  # a second workload on the GPU in this step
                by_labels.setdefault(tuple(sorted((labels | _workload(rng, gpu, k + 1)).items())), []).append((k, u))
        for lab, pts in by_labels.items():
            add("util", dict(lab), pts)
        power = [(k, rng.uniform(60, 700)) for k in steps]
        add("power", labels, power)
        add("power_max", labels, [(k, v + rng.uniform(0, 30)) for k, v in power if rng.random() > 0.05])
        add("mem_used", labels, [(k, float(rng.randrange(0, 81559))) for k in steps])
        add("mem_total", labels, [(k, 81559.0) for k in steps if rng.random() > 0.02])
        if gpu["energy"]:
            e: int = gpu["energy_mj"]  # type: ignore[assignment]
            pts_e = []
            for k in steps:
                e += rng.randrange(0, 40_000)
                if rng.random() < 0.01 * gpu["reset_at"]:  # type: ignore[operator]
                    e = rng.randrange(0, 1000)  # the counter went back (a reboot)
                pts_e.append((k, float(e) if rng.random() > 0.005 else -5.0))
            gpu["energy_mj"] = e
            add("energy", labels, pts_e)
        if gpu["sm"]:
            add("sm", labels, [(k, rng.random()) for k in steps])
            add("tensor", labels, [(k, rng.random()) for k in steps if rng.random() > 0.1])
        if gpu["limit"]:
            add("power_limit", labels, [(k, rng.choice((700.0, 350.0, 0.0))) for k in steps])
    return res


def _builders(cls: type[WindowBuilder], step_ms: int) -> WindowBuilder:
    return cls(RULES, step_ms=step_ms, slurm_accounts=SLURM)


@pytest.mark.parametrize("step_ms", [15_000, 30_000, 60_000])
@pytest.mark.parametrize("seed", range(4))
def test_bulk_builder_gives_exactly_the_windows_of_the_window_by_window_one(step_ms: int, seed: int) -> None:
    rng = random.Random(seed)
    site = _site(rng, hosts=12)
    ref, new = _builders(ReferenceBuilder, step_ms), _builders(WindowBuilder, step_ms)
    t = T0
    for c in range(4):
        chunk = Chunk(t, t + rng.choice((3, 10, 60)) * 60_000)
        t = chunk.end_ms
        results = _chunk_results(rng, site, chunk, step_ms)
        want = ref.build(chunk, results)
        got = new.build(chunk, results)
        assert len(got) == len(want), f"chunk {c}: {len(got)} windows, the reference {len(want)}"
        for g, w in zip(got, want, strict=True):
            assert g == w, f"chunk {c}, window {w.start_ms} of {w.node_id}: differs from the reference"
            assert statement_bytes(g) == statement_bytes(w), "the same values, but not the same bytes"
        assert new.coverage == ref.coverage, f"chunk {c}: coverage differs from the reference"
        assert new._energy_carry == ref._energy_carry, f"chunk {c}: the energy carried over differs"
    assert any(e.kind == ENERGY_RESET_EVENT for w in want for g in w.gpus for e in g.events) or seed != 0


def test_rows_survive_pickling_into_the_same_windows() -> None:
    """What the pipeline sends from its worker process (``ChunkRows``) gives the same windows."""
    rng = random.Random(9)
    site = _site(rng, hosts=6)
    worker, main, alone = (_builders(WindowBuilder, 30_000) for _ in range(3))
    chunk = Chunk(T0, T0 + 600_000)
    results = _chunk_results(rng, site, chunk, 30_000)
    rows = pickle.loads(pickle.dumps(worker.compute(chunk, results), protocol=pickle.HIGHEST_PROTOCOL))
    assert main.assemble(rows) == alone.build(chunk, results)


# Keep the imports the reference builder uses visible to the linters.
_REFERENCE_NEEDS = (
    Event,
    GpuWindow,
    Series,
    Workload,
    _FIELD_KEYS,
    _MIB,
    _NO_VISIBLE_PROCESS,
    _PRESENCE,
    _READ_KEYS,
    AGENT_VERSION,
    BOOT_ID,
    METRIC_OF,
    METRICS,
    NODE_UNAVAILABLE,
    UNSIGNED_CHAIN,
    _first,
)
