"""dcgm-exporter series -> ``UsageWindow`` records, one per host per window (unsigned).

The series are read on a grid of ``step`` seconds that divides the window (60 s): each
point is an ``*_over_time`` of the raw samples in one step, ``[W + j*step, W + (j+1)*step)``
of window ``W`` (the grid is set 1 ms early so that a step holds the same samples as an
agent's window would). A step with no raw sample has no point, so a scrape gap or a series
that stopped is a gap here, never a value carried over from the past; a GPU with no point
in a window is absent from that window, not zero.

Per GPU (``UUID``) and window, as the agent computes them from its samples
(core/window.py) and with the same names, units and invariants (attestation/statement/):

===============================  =======================================================
``util_mean_permille``           mean of ``DCGM_FI_DEV_GPU_UTIL`` (%) x 10
``power_mean_mw``                mean of ``DCGM_FI_DEV_POWER_USAGE`` (W) x 1000
``power_max_mw``                 max of ``max_over_time`` of it
``power_limit_mw``               ``DCGM_FI_DEV_POWER_MGMT_LIMIT`` (W) where exported (not by
                                 default), else the model's default limit (``POWER_LIMITS_W``)
``mem_used_max_bytes``           max of ``DCGM_FI_DEV_FB_USED`` (MiB)
``mem_total_bytes``              ``FB_USED + FB_FREE`` (MiB; dcgm-exporter has no total)
``energy_start_mj`` / ``_end``   ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ since boot): the
                                 last reading before the window (carried over) and the last in
                                 it; a counter that goes back is an ``energy_counter_reset``
                                 event, as on the agent
``sm_active_mean_permille``      ``DCGM_FI_PROF_SM_ACTIVE`` (ratio) x 1000, where exported
``tensor_active_mean_permille``  ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`` (ratio) x 1000, where exported
``series``                       per-step util and power, where the step gives >= 2 points
``samples``                      steps of the window with a point
===============================  =======================================================

A field that could not be read is ``None`` with its name and the reason in ``unavailable``.
``serial`` is never exported by dcgm-exporter: ``None`` with its reason.

Workloads come from the labels of the utilisation series (which tenant a GPU belongs to is
whatever its series said in that step; several at once share it equally):

* a Kubernetes pod: ``exported_namespace``/``exported_pod`` where Prometheus renamed the
  workload's labels (a ServiceMonitor without ``honorLabels``: plain ``namespace``/``pod``
  are then the exporter's own, on every series of the host), else ``namespace``/``pod``
  (unless they name the exporter's own pod, ``dcgm-exporter-*`` or
  ``nvidia-dcgm-exporter-*``), else ``pod_namespace``/``pod_name``
  (``--use-old-namespace``). Tenant by ``[tenants.namespaces]``;
* an HPC job (``hpc_job``): tenant by the job's account (``--slurm-accounts``) and
  ``[tenants.slurm_accounts]``;
* no workload label and utilisation above zero: ``unattributed``, workload
  ``no-visible-process`` (the agent's name for busy time with no process it can see);
  an idle GPU with no workload label has no workload.

``--label-map`` renames what a site's relabelling renamed (``host=instance``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping

from attestation.statement import UNATTRIBUTED, Chain, GpuWindow, Series, UsageWindow
from collector.detect.config import DetectConfig
from collector.prometheus.client import Chunk, RangeSeries
from collector.prometheus.coverage import Coverage
from collector.prometheus.labels import CANONICAL_LABELS, LabelMap, _first
from collector.prometheus.queries import (
    METRIC_OF,
    METRICS,
    NOT_EXPORTED,
    POWER_LIMITS_W,
    MetricQuery,
    default_power_limit_mw,
)
from collector.prometheus.rows import (
    COLUMNS,
    ENERGY_END,
    ENERGY_START,
    MEM_TOTAL,
    MEM_USED,
    NONE,
    POWER_LIMIT,
    POWER_MAX,
    POWER_MEAN,
    SAMPLES,
    SM,
    TENSOR,
    UTIL,
    ChunkRows,
    RowMaker,
    _Gpu,
)
from core import __version__
from core.errors import ConfigError
from core.nogc import no_gc
from core.tenantrules import TenantRules

# The placeholder chain of every window built here: nothing signed it.
UNSIGNED_CHAIN = Chain(key_id="unsigned:prometheus", seq=0, prev=None)
BOOT_ID = "unknown:prometheus"
AGENT_VERSION = f"none (read from Prometheus by gpuaudit-collector {__version__})"
NODE_UNAVAILABLE = {
    "signature": "unsigned: operator data read from Prometheus (dcgm-exporter), not a node's statement",
    "node_io": "not read from Prometheus",
    "processes": "dcgm-exporter labels a GPU with its pod or HPC job, not with processes",
}
_EXPORTER_POD_PREFIXES = ("dcgm-exporter", "nvidia-dcgm-exporter")
_VALUE = operator.itemgetter(1)


class WindowBuilder(RowMaker):
    """Builds the windows of one chunk at a time, in time order (the energy counter carries over)."""

    def __init__(
        self,
        rules: TenantRules,
        *,
        step_ms: int,
        window_ms: int = 60_000,
        labels: LabelMap | None = None,
        slurm_accounts: Mapping[str, str] | None = None,
        coverage: Coverage | None = None,
    ) -> None:
        if step_ms <= 0 or window_ms % step_ms:
            raise ConfigError(f"--step: {step_ms / 1000:g} s does not divide the {window_ms // 1000} s window")
        self.rules = rules
        self.step_ms = step_ms
        self.window_ms = window_ms
        self.per_window = window_ms // step_ms
        self.labels = labels or LabelMap()
        self.slurm_accounts = dict(slurm_accounts or {})
        self.coverage = coverage or Coverage()
        self._energy_carry: dict[tuple[str, str], int] = {}
        self._att_cache: dict[tuple[tuple[str, str], ...], tuple[str, str, str] | None] = {}

    # -- grid ------------------------------------------------------------------

    def grid(self, chunk: Chunk) -> tuple[float, float]:
        """(start, end) in Unix seconds of the query grid of ``chunk``: one point per step,
        each covering [W + j*step, W + (j+1)*step) with the range selector one step long."""
        first = chunk.start_ms + self.step_ms - 1
        last = chunk.end_ms - 1
        return first / 1000, last / 1000

    def range_selector(self) -> str:
        return f"{self.step_ms}ms"

    # -- attribution -----------------------------------------------------------

    def _attribution(self, labels: Mapping[str, str], host_exported: bool) -> tuple[str, str, str] | None:
        lm = self.labels
        for i, (ns_l, pod_l, _c) in enumerate(lm.k8s):
            if lm.exported and i == 1 and host_exported:
                continue  # the plain spellings are the exporter's own on this host
            ns, pod = labels.get(ns_l), labels.get(pod_l)
            if not ns or not pod:
                continue
            if lm.exported and i > 0 and pod.startswith(_EXPORTER_POD_PREFIXES):
                continue  # the exporter's own pod: not a workload
            return (self.rules.namespaces.get(ns, UNATTRIBUTED), "k8s_pod", f"{ns}/{pod}")
        job = _first(labels, lm.hpc_job)
        if job:
            account = self.slurm_accounts.get(job)
            tenant = self.rules.slurm_accounts.get(account, UNATTRIBUTED) if account else UNATTRIBUTED
            return (tenant, "slurm_job", f"slurm:{job}")
        return None

    def _cached_attribution(self, labels: Mapping[str, str], host_exported: bool) -> tuple[str, str, str] | None:
        key = (("", "1" if host_exported else "0"), *sorted(labels.items()))
        hit = self._att_cache.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        a = self._attribution(labels, host_exported)
        if len(self._att_cache) > 200_000:
            self._att_cache.clear()
        self._att_cache[key] = a
        return a

    # -- one chunk -------------------------------------------------------------

    def build(self, chunk: Chunk, results: Mapping[str, Iterable[RangeSeries]]) -> list[UsageWindow]:
        """The windows of ``chunk`` from the range-query results by metric key (``METRICS``),
        sorted by (window start, host)."""
        with no_gc():
            return self._assemble(self._compute(chunk, results))

    def compute(
        self, chunk: Chunk, results: Mapping[str, Iterable[RangeSeries]], config: DetectConfig | None = None
    ) -> ChunkRows:
        """Every value of the windows of ``chunk`` as columns (``ChunkRows``); ``assemble``
        makes the records, collector/prometheus/sites.py the detector's aggregate (which needs
        the windows classified with its ``config``). Call it for the chunks in time order (the
        energy counter carries over); the rows may be used in another process
        (collector/prometheus/pipeline.py)."""
        with no_gc():
            return self._compute(chunk, results, config)

    def _compute(
        self, chunk: Chunk, results: Mapping[str, Iterable[RangeSeries]], config: DetectConfig | None = None
    ) -> ChunkRows:
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
                    dense: list[float | None] = list(map(float, map(_VALUE, vs)))
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

        windows = (chunk.end_ms - chunk.start_ms) // self.window_ms
        return ChunkRows(chunk.start_ms, windows, self.per_window, config, self._hosts_rows(gpus, config))

    def assemble(self, rows: ChunkRows) -> list[UsageWindow]:
        """The ``UsageWindow`` records of a chunk's rows, sorted by (window start, host)."""
        with no_gc():
            return self._assemble(rows)

    def _assemble(self, rows: ChunkRows) -> list[UsageWindow]:
        cov = self.coverage
        host_windows = cov.host_windows
        step = self.step_ms
        window_ms = self.window_ms
        nw = rows.windows
        p = rows.per_window
        out: list[UsageWindow] = []
        gpu_windows = 0
        for w in range(nw):
            start = rows.start_ms + w * window_ms
            for host, gpus in rows.hosts:
                gws = []
                for index, uuid, model, identity, ints, workloads, reasons, events in gpus:
                    if not ints[SAMPLES * nw + w]:
                        continue
                    v = [None if x == NONE else x for x in ints[w : COLUMNS * nw : nw]]
                    series = None
                    if p >= 2:
                        su = COLUMNS * nw + w * p
                        sp = su + nw * p
                        series = Series(
                            step,
                            tuple(None if x == NONE else x for x in ints[su : su + p]),
                            tuple(None if x == NONE else x for x in ints[sp : sp + p]),
                        )
                    split, wl = workloads[w]
                    gws.append(
                        GpuWindow(
                            index=index,
                            uuid=uuid,
                            serial=None,
                            model=model,
                            mem_total_bytes=v[MEM_TOTAL],
                            power_limit_mw=v[POWER_LIMIT],
                            samples=ints[SAMPLES * nw + w],
                            energy_start_mj=v[ENERGY_START],
                            energy_end_mj=v[ENERGY_END],
                            power_mean_mw=v[POWER_MEAN],
                            power_max_mw=v[POWER_MAX],
                            util_mean_permille=v[UTIL],
                            mem_used_max_bytes=v[MEM_USED],
                            sm_active_mean_permille=v[SM],
                            tensor_active_mean_permille=v[TENSOR],
                            series=series,
                            split_method=split,
                            workloads=wl,
                            unavailable=dict(reasons[w]),
                            events=events[w],
                            identity=identity,
                        )
                    )
                if not gws:
                    continue
                host_windows[host] = host_windows.get(host, 0) + 1
                gpu_windows += len(gws)
                out.append(
                    UsageWindow(
                        node_id=host,
                        boot_id=BOOT_ID,
                        agent_version=AGENT_VERSION,
                        start_ms=start,
                        end_ms=start + window_ms,
                        sample_interval_ms=step,
                        chain=UNSIGNED_CHAIN,
                        gpus=tuple(gws),
                        unavailable=dict(NODE_UNAVAILABLE),
                    )
                )
        cov.gpu_windows += gpu_windows
        return out


__all__ = [
    "CANONICAL_LABELS",
    "METRICS",
    "METRIC_OF",
    "NOT_EXPORTED",
    "POWER_LIMITS_W",
    "UNSIGNED_CHAIN",
    "ChunkRows",
    "Coverage",
    "LabelMap",
    "MetricQuery",
    "WindowBuilder",
    "default_power_limit_mw",
]
