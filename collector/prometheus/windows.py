"""dcgm-exporter series -> ``UsageWindow`` records, one per host per window (unsigned).

The series are read on a grid of ``step`` seconds that divides the window (60 s): each
point is an ``*_over_time`` of the raw samples in one step, ``[W + j*step, W + (j+1)*step)``
of window ``W`` (the grid is set 1 ms early so that a step holds the same samples as an
agent's window would). A step with no raw sample has no point, so a scrape gap or a series
that stopped is a gap here, never a value carried over from the past; a GPU with no point
in a window is absent from that window, not zero.

Per GPU (``UUID``) and window, as the agent computes them from its samples
(agent/window.py) and with the same names, units and invariants (attestation/statement.py):

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

import functools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.attribution import TenantRules
from agent.configfile import ConfigError
from attestation.chain import ENERGY_RESET_EVENT
from attestation.statement import UNATTRIBUTED, Chain, Event, GpuWindow, Series, UsageWindow, Workload
from collector.detect.flops import normalise
from collector.prometheus.client import Chunk, RangeSeries
from collector.prometheus.pipeline import no_gc

# The placeholder chain of every window built here: nothing signed it.
UNSIGNED_CHAIN = Chain(key_id="unsigned:prometheus", seq=0, prev=None)
BOOT_ID = "unknown:prometheus"
AGENT_VERSION = f"none (read from Prometheus by gpuaudit-collector {__version__})"
NODE_UNAVAILABLE = {
    "signature": "unsigned: operator data read from Prometheus (dcgm-exporter), not a node's statement",
    "node_io": "not read from Prometheus",
    "processes": "dcgm-exporter labels a GPU with its pod or HPC job, not with processes",
}
NOT_EXPORTED = "not_exported_by_dcgm_exporter"
_MIB = 1 << 20
_EXPORTER_POD_PREFIXES = ("dcgm-exporter", "nvidia-dcgm-exporter")
_NO_VISIBLE_PROCESS = (UNATTRIBUTED, "process", "no-visible-process")
_VALUE = operator.itemgetter(1)


@dataclass(frozen=True)
class MetricQuery:
    """One range query per chunk: ``key`` names what the window builder reads from it."""

    key: str
    metric: str
    template: str  # {m}: the label matchers ("" or "{...}"), {r}: the step as a range

    def expr(self, matchers: str, range_: str) -> str:
        return self.template.format(m=matchers, r=range_)


METRICS: tuple[MetricQuery, ...] = (
    MetricQuery("util", "DCGM_FI_DEV_GPU_UTIL", "avg_over_time(DCGM_FI_DEV_GPU_UTIL{m}[{r}])"),
    MetricQuery("power", "DCGM_FI_DEV_POWER_USAGE", "avg_over_time(DCGM_FI_DEV_POWER_USAGE{m}[{r}])"),
    MetricQuery("power_max", "DCGM_FI_DEV_POWER_USAGE", "max_over_time(DCGM_FI_DEV_POWER_USAGE{m}[{r}])"),
    MetricQuery("mem_used", "DCGM_FI_DEV_FB_USED", "max_over_time(DCGM_FI_DEV_FB_USED{m}[{r}])"),
    MetricQuery(
        "mem_total",
        "DCGM_FI_DEV_FB_FREE",
        "last_over_time(DCGM_FI_DEV_FB_USED{m}[{r}]) + last_over_time(DCGM_FI_DEV_FB_FREE{m}[{r}])",
    ),
    MetricQuery(
        "energy",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "last_over_time(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{m}[{r}])",
    ),
    MetricQuery("sm", "DCGM_FI_PROF_SM_ACTIVE", "avg_over_time(DCGM_FI_PROF_SM_ACTIVE{m}[{r}])"),
    MetricQuery("tensor", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "avg_over_time(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{m}[{r}])"),
    MetricQuery("power_limit", "DCGM_FI_DEV_POWER_MGMT_LIMIT", "last_over_time(DCGM_FI_DEV_POWER_MGMT_LIMIT{m}[{r}])"),
)
METRIC_OF = {q.key: q.metric for q in METRICS}
# A GPU is in a window when one of these has a point there.
_PRESENCE = ("util", "power", "mem_used", "energy")
_READ_KEYS = tuple(q.key for q in METRICS)
# Statement field -> the query it is read from (whose metric a null field's reason names).
_FIELD_KEYS = (
    ("util_mean_permille", "util"),
    ("power_mean_mw", "power"),
    ("power_max_mw", "power"),
    ("mem_used_max_bytes", "mem_used"),
    ("mem_total_bytes", "mem_total"),
    ("energy_start_mj", "energy"),
    ("energy_end_mj", "energy"),
    ("sm_active_mean_permille", "sm"),
    ("tensor_active_mean_permille", "tensor"),
)

# Default board power limit (W) by model, where no limit series is exported: the maximum
# TDP of NVIDIA's datasheets (H100: "H100 Tensor Core GPU" datasheet, 2023, SXM up to
# 700 W, PCIe 300-350 W, NVL 350-400 W; H200: datasheet 2024, SXM up to 700 W, NVL up to
# 600 W; A100: datasheet 2021, SXM 400 W, PCIe 250 W (40 GB) and 300 W (80 GB); L40S and
# L40: datasheets, 350 W and 300 W; L4 72 W; A10 150 W; A30 165 W; A40 300 W; B200: HGX
# B200 datasheet, 1,000 W). An operator who capped the limit lower (nvidia-smi -pl) makes
# the power fraction read low; export DCGM_FI_DEV_POWER_MGMT_LIMIT to use the real one.
# (words that must all be in collector.detect.flops.normalise(name), watts); first match wins.
POWER_LIMITS_W: tuple[tuple[str, int], ...] = (
    ("B200", 1000),
    ("H200 NVL", 600),
    ("H200", 700),
    ("H100 NVL", 400),
    ("H100 PCIE", 350),
    ("H100", 700),
    ("H800 PCIE", 350),
    ("H800", 700),
    ("A100 PCIE 40GB", 250),
    ("A100 PCIE 80GB", 300),
    ("A100 PCIE", 250),
    ("A100", 400),
    ("L40S", 350),
    ("L40", 300),
    ("L4", 72),
    ("A10", 150),
    ("A30", 165),
    ("A40", 300),
)


@functools.lru_cache(maxsize=256)
def default_power_limit_mw(model: str) -> int | None:
    """The model's default power limit in mW from ``POWER_LIMITS_W``, or None."""
    words = set(normalise(model).split())
    for pattern, watts in POWER_LIMITS_W:
        if words.issuperset(pattern.split()):
            return watts * 1000
    return None


# ---------------------------------------------------------------------------
# Label spellings


CANONICAL_LABELS = ("host", "uuid", "gpu", "model", "pci_bus_id", "namespace", "pod", "container", "hpc_job")


@dataclass(frozen=True)
class LabelMap:
    """Which labels hold what, in order of preference. ``k8s``: (namespace, pod, container)
    spellings, tried in order; ``exported``: the first set is Prometheus's renaming of the
    workload's labels, and the plain set is then the exporter's own."""

    host: tuple[str, ...] = ("Hostname", "hostname")
    uuid: tuple[str, ...] = ("UUID",)
    gpu: tuple[str, ...] = ("gpu",)
    model: tuple[str, ...] = ("modelName",)
    pci_bus_id: tuple[str, ...] = ("pci_bus_id",)
    hpc_job: tuple[str, ...] = ("hpc_job",)
    k8s: tuple[tuple[str, str, str], ...] = (
        ("exported_namespace", "exported_pod", "exported_container"),
        ("namespace", "pod", "container"),
        ("pod_namespace", "pod_name", "container_name"),
    )
    exported: bool = True

    @classmethod
    def parse(cls, items: Sequence[str]) -> LabelMap:
        """From ``--label-map NAME=LABEL`` items (NAME one of ``CANONICAL_LABELS``)."""
        given: dict[str, str] = {}
        for item in items:
            for part in item.split(","):
                name, sep, label = part.partition("=")
                name, label = name.strip(), label.strip()
                if not sep or name not in CANONICAL_LABELS or not label:
                    raise ConfigError(
                        f"--label-map {part!r}: expected NAME=LABEL, NAME one of {', '.join(CANONICAL_LABELS)}"
                    )
                if name in given:
                    raise ConfigError(f"--label-map: {name} given twice")
                given[name] = label
        kw: dict[str, Any] = {}
        for name in ("host", "uuid", "gpu", "model", "pci_bus_id", "hpc_job"):
            if name in given:
                kw[name] = (given[name],)
        if any(n in given for n in ("namespace", "pod", "container")):
            kw["k8s"] = (
                (given.get("namespace", "namespace"), given.get("pod", "pod"), given.get("container", "container")),
            )
            kw["exported"] = False
        return cls(**kw)

    def selector_labels(self) -> tuple[str, ...]:
        return self.host


def _first(labels: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        v = labels.get(n)
        if v:
            return v
    return None


# ---------------------------------------------------------------------------
# What could not be read


@dataclass
class Coverage:
    """What was read and what could not be, over the whole span (reported with the findings)."""

    windows_in_span: int = 0
    series: dict[str, int] = field(default_factory=dict)  # metric key -> series returned
    points: dict[str, int] = field(default_factory=dict)
    skipped_series: dict[str, int] = field(default_factory=dict)  # reason -> series
    nonfinite_points: dict[str, int] = field(default_factory=dict)
    host_windows: dict[str, int] = field(default_factory=dict)  # host -> windows with data
    host_gpus: dict[str, set[str]] = field(default_factory=dict)
    gpu_windows: int = 0
    requests: int = 0
    bytes_read: int = 0
    splits: int = 0

    def merge_read(self, other: Coverage) -> None:
        """Take what ``other`` counted while reading (``WindowBuilder.compute`` and the
        client, in a pipeline's worker process); what ``assemble`` counted stays."""
        self.series = other.series
        self.points = other.points
        self.skipped_series = other.skipped_series
        self.nonfinite_points = other.nonfinite_points
        self.host_gpus = other.host_gpus
        self.requests = other.requests
        self.bytes_read = other.bytes_read
        self.splits = other.splits

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped_series[reason] = self.skipped_series.get(reason, 0) + n

    def absent_metrics(self) -> list[str]:
        """Metrics with no series at all over the span."""
        return sorted({METRIC_OF[k] for k in METRIC_OF if not self.series.get(k)} - self.present_metrics())

    def present_metrics(self) -> set[str]:
        return {METRIC_OF[k] for k, n in self.series.items() if n}

    def to_json(self) -> dict[str, Any]:
        gaps = {h: self.windows_in_span - n for h, n in sorted(self.host_windows.items()) if n < self.windows_in_span}
        return {
            "windows_in_span": self.windows_in_span,
            "hosts": len(self.host_windows),
            "gpus": sum(len(g) for g in self.host_gpus.values()),
            "gpu_windows": self.gpu_windows,
            "series_by_query": dict(sorted(self.series.items())),
            "points_by_query": dict(sorted(self.points.items())),
            "metrics_absent": self.absent_metrics(),
            "series_skipped": dict(sorted(self.skipped_series.items())),
            "points_not_finite": dict(sorted(self.nonfinite_points.items())),
            "hosts_with_windows_missing": gaps,
            "requests": self.requests,
            "bytes_read": self.bytes_read,
            "requests_split_after_refusal": self.splits,
        }

    def summary_lines(self, limit: int = 10) -> list[str]:
        d = self.to_json()
        lines = [
            f"read {d['hosts']} hosts, {d['gpus']} GPUs, {d['gpu_windows']} GPU-windows of "
            f"{d['windows_in_span']} windows ({d['requests']} requests, {d['bytes_read'] / 1e6:.1f} MB)"
        ]
        if d["metrics_absent"]:
            lines.append("not in Prometheus (fields left null with the reason): " + ", ".join(d["metrics_absent"]))
        for reason, n in d["series_skipped"].items():
            lines.append(f"series skipped: {n} ({reason})")
        for key, n in d["points_not_finite"].items():
            lines.append(f"points not finite (NaN/Inf), left out: {n} of {METRIC_OF.get(key, key)}")
        gaps = d["hosts_with_windows_missing"]
        if gaps:
            worst = sorted(gaps.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
            lines.append(
                f"{len(gaps)} hosts lack data in some windows (scrape gaps, or not there for the whole span); most: "
                + ", ".join(f"{h} {n}" for h, n in worst)
            )
        return lines


# ---------------------------------------------------------------------------
# The builder


class _Gpu:
    __slots__ = ("host", "uuid", "index", "model", "pci", "vals", "atts")

    def __init__(self, host: str, uuid: str, n: int) -> None:
        self.host = host
        self.uuid = uuid
        self.index: int | None = None
        self.model: str | None = None
        self.pci: str | None = None
        self.vals: dict[str, list[float | None]] = {}
        # Per step: the workloads the utilisation series named at that step (None: no series there).
        self.atts: list[tuple[tuple[str, str, str], ...] | None] = [None] * n


# One GPU-window as plain values (cheap to pickle), in this order: samples, mem_total_bytes,
# power_limit_mw, energy_start_mj, energy_end_mj, power_mean_mw, power_max_mw,
# util_mean_permille, mem_used_max_bytes, sm_active_mean_permille, tensor_active_mean_permille,
# the series' util and power tuples (None: no series), split_method, workloads, unavailable, events.
_Row = tuple[Any, ...]
# One GPU of a chunk: index, UUID, model, identity, and its row per window (None: absent).
_GpuRows = tuple[int, str, str, dict[str, str], list[_Row | None]]


class ChunkRows:
    """The windows of one chunk as plain values: what ``WindowBuilder.compute`` gives and
    ``WindowBuilder.assemble`` turns into records. ``hosts``: (host, its GPUs), sorted."""

    __slots__ = ("start_ms", "windows", "hosts")

    def __init__(self, start_ms: int, windows: int, hosts: list[tuple[str, list[_GpuRows]]]) -> None:
        self.start_ms = start_ms
        self.windows = windows
        self.hosts = hosts

    def __reduce__(self) -> tuple[type[ChunkRows], tuple[int, int, list[tuple[str, list[_GpuRows]]]]]:
        return (ChunkRows, (self.start_ms, self.windows, self.hosts))


def _shares(weights: Mapping[tuple[str, str, str], float]) -> dict[tuple[str, str, str], int]:
    """Largest-remainder permille of ``weights`` adding up to exactly 1000 (as the agent's)."""
    total = sum(weights.values())
    raw = {k: w * 1000.0 / total for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    rest = 1000 - sum(out.values())
    for k in sorted(raw, key=lambda k: (raw[k] - out[k], k), reverse=True)[:rest]:
        out[k] += 1
    return out


class WindowBuilder:
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

    def compute(self, chunk: Chunk, results: Mapping[str, Iterable[RangeSeries]]) -> ChunkRows:
        """Every value of the windows of ``chunk`` as plain rows (``ChunkRows``); ``assemble``
        makes the records. Call it for the chunks in time order (the energy counter carries
        over); ``assemble`` may run in another process (collector/prometheus/pipeline.py)."""
        with no_gc():
            return self._compute(chunk, results)

    def _compute(self, chunk: Chunk, results: Mapping[str, Iterable[RangeSeries]]) -> ChunkRows:
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

        return ChunkRows(chunk.start_ms, (chunk.end_ms - chunk.start_ms) // self.window_ms, self._hosts_rows(gpus))

    def assemble(self, rows: ChunkRows) -> list[UsageWindow]:
        """The ``UsageWindow`` records of a chunk's rows, sorted by (window start, host)."""
        with no_gc():
            return self._assemble(rows)

    def _assemble(self, rows: ChunkRows) -> list[UsageWindow]:
        cov = self.coverage
        host_windows = cov.host_windows
        step = self.step_ms
        window_ms = self.window_ms
        out: list[UsageWindow] = []
        gpu_windows = 0
        for w in range(rows.windows):
            start = rows.start_ms + w * window_ms
            for host, gpus in rows.hosts:
                gws = []
                for index, uuid, model, identity, per_window in gpus:
                    r = per_window[w]
                    if r is None:
                        continue
                    gws.append(
                        GpuWindow(
                            index=index,
                            uuid=uuid,
                            serial=None,
                            model=model,
                            mem_total_bytes=r[1],
                            power_limit_mw=r[2],
                            samples=r[0],
                            energy_start_mj=r[3],
                            energy_end_mj=r[4],
                            power_mean_mw=r[5],
                            power_max_mw=r[6],
                            util_mean_permille=r[7],
                            mem_used_max_bytes=r[8],
                            sm_active_mean_permille=r[9],
                            tensor_active_mean_permille=r[10],
                            series=None if r[11] is None else Series(step, r[11], r[12]),
                            split_method=r[13],
                            workloads=r[14],
                            unavailable=dict(r[15]),
                            events=r[16],
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

    def _hosts_rows(self, gpus: Mapping[tuple[str, str], _Gpu]) -> list[tuple[str, list[_GpuRows]]]:
        """Per host (sorted), its GPUs sorted by (index, UUID) as a window lists them, with their rows."""
        cov = self.coverage
        windows_of: dict[str, list[tuple[tuple[int, str], _GpuRows]]] = {}
        for host, uuid in gpus:
            cov.host_gpus.setdefault(host, set()).add(uuid)
        for (host, uuid), g in gpus.items():
            index = g.index if g.index is not None else 0
            reasons, limit, identity = self._constants(g)
            per_window = self._gpu_rows(g, reasons, limit)
            windows_of.setdefault(host, []).append(
                ((index, uuid), (index, uuid, g.model or "unknown", identity, per_window))
            )
        return [(host, [r for _, r in sorted(items)]) for host, items in sorted(windows_of.items())]

    def _constants(self, g: _Gpu) -> tuple[dict[str, str], int | None, dict[str, str]]:
        """What is the same in every window of the chunk for ``g``: reasons for what this
        chunk has no series of at all, the table's power limit, the identity text."""
        reasons: dict[str, str] = {"serial": NOT_EXPORTED}
        for name in ("nvlink_tx_bytes", "nvlink_rx_bytes", "pcie_tx_bytes", "pcie_rx_bytes"):
            reasons[name] = "not read from Prometheus"
        for fieldname, key in _FIELD_KEYS:
            if key not in g.vals:
                reasons[fieldname] = f"{METRIC_OF[key]} not in Prometheus"
        limit = default_power_limit_mw(g.model or "")
        if limit is None and "power_limit" not in g.vals:
            reasons["power_limit_mw"] = (
                f"{METRIC_OF['power_limit']} not exported and model {g.model or 'unknown'!r} not in the "
                "table of default limits (collector/prometheus/windows.py)"
            )
        if self.per_window < 2:
            reasons["series"] = f"the step ({self.step_ms // 1000} s) gives one point per window"
        identity = {"source": "prometheus"}
        if g.pci:
            identity["pci_bus_id"] = g.pci
        if g.index is None:
            identity["index"] = "no gpu label: index 0 is a placeholder"
        return reasons, limit, identity

    def _gpu_rows(self, g: _Gpu, base: dict[str, str], table_limit: int | None) -> list[_Row | None]:
        """The rows of every window of the chunk for ``g`` (None: no point in that window).

        Each aggregate is computed for all windows at once, key by key, on the slices a
        window's points are in, with the same arithmetic as window by window (the values
        are the same to the bit: tests/unit/collector/prometheus/test_windows.py keeps the
        window-by-window builder this replaced and compares the two)."""
        p = self.per_window
        vals = g.vals
        n = len(g.atts) // p * p
        windows = n // p
        starts = range(0, n, p)
        pres = [vals[k] for k in _PRESENCE if k in vals]
        if not pres:
            return [None] * windows
        if all(None not in a for a in pres):
            samples = [p] * windows
        else:
            if len(pres) == 1:
                flags = [v is not None for v in pres[0]]
            else:
                flags = [any(v is not None for v in col) for col in zip(*pres, strict=True)]
            samples = [sum(flags[i : i + p]) for i in starts]
            if not any(samples):
                return [None] * windows
        reads = {k: _reads(arr, starts, p) for k, arr in vals.items()}
        none_w: list[Any] = [None] * windows
        r = reads.get("util")
        util = (
            none_w if r is None else [None if x is None else max(0, min(1000, round(sum(x) / len(x) * 10))) for x in r]
        )
        r = reads.get("power")
        power_mean: list[int | None] = none_w
        power_max: list[int | None] = none_w
        if r is not None:
            power_mean = [None if x is None else max(0, round(sum(x) / len(x) * 1000)) for x in r]
            rmax = reads.get("power_max") or none_w
            power_max = [None if x is None else max(0, round(max(y or x) * 1000)) for x, y in zip(r, rmax, strict=True)]
        r = reads.get("mem_used")
        mem_used = none_w if r is None else [None if x is None else max(0, round(max(x) * _MIB)) for x in r]
        r = reads.get("mem_total")
        mem_total = none_w if r is None else [None if x is None else max(0, round(max(x) * _MIB)) for x in r]
        r = reads.get("sm")
        sm = (
            none_w
            if r is None
            else [None if x is None else max(0, min(1000, round(sum(x) / len(x) * 1000))) for x in r]
        )
        r = reads.get("tensor")
        tensor = (
            none_w
            if r is None
            else [None if x is None else max(0, min(1000, round(sum(x) / len(x) * 1000))) for x in r]
        )
        r = reads.get("power_limit")
        limits: list[int | None] = (
            [table_limit] * windows
            if r is None
            else [round(x[-1] * 1000) if x is not None and x[-1] > 0 else table_limit for x in r]
        )
        e_start, e_end, events = self._energy(g, reads.get("energy"), vals.get("energy"), starts, p)
        # Series: per step, where the step gives >= 2 points a window.
        if p >= 2:
            arr = vals.get("util")
            if arr is None:
                s_util: list[tuple[int | None, ...]] = [p * (None,)] * windows
            else:
                u = [None if v is None else max(0, min(1000, round(v * 10))) for v in arr[:n]]
                s_util = [tuple(u[i : i + p]) for i in starts]
            arr = vals.get("power")
            if arr is None:
                s_power: list[tuple[int | None, ...]] = [p * (None,)] * windows
            else:
                pw = [None if v is None else max(0, round(v * 1000)) for v in arr[:n]]
                s_power = [tuple(pw[i : i + p]) for i in starts]
        else:
            s_util = s_power = [None] * windows  # type: ignore[list-item]
        workloads = self._workloads_by_window(g.atts, vals.get("util"), starts, p)
        # Reasons: the chunk's, and per window what it had no point of.
        field_reads = [(f, key, reads[key]) for f, key in _FIELD_KEYS if key in reads]
        gappy = [x for _, _, x in field_reads if None in x]
        missing = [False] * windows if not gappy else [None in col for col in zip(*gappy, strict=True)]
        clean = dict(base)
        clean.pop("energy_start_mj", None)
        clean.pop("energy_end_mj", None)
        limit_reason = "power_limit_mw" not in base
        rows: list[_Row | None] = []
        for w in range(windows):
            s = samples[w]
            if not s:
                rows.append(None)
                continue
            pl = limits[w]
            es, ee = e_start[w], e_end[w]
            reasons = clean
            if (pl is None and limit_reason) or es is None or ee is None or missing[w]:
                reasons = dict(base)
                for fieldname, key, x in field_reads:
                    if x[w] is None:
                        reasons[fieldname] = f"{METRIC_OF[key]}: no point in window"
                if pl is None and limit_reason:
                    reasons["power_limit_mw"] = (
                        f"{METRIC_OF['power_limit']}: no point in window, and model {g.model or 'unknown'!r} not in "
                        "the table of default limits"
                    )
                if es is None or ee is None:
                    es = ee = None
                    why = reasons.get("energy_start_mj") or f"{METRIC_OF['energy']}: no point yet"
                    reasons["energy_start_mj"] = reasons["energy_end_mj"] = why
                else:
                    reasons.pop("energy_start_mj", None)
                    reasons.pop("energy_end_mj", None)
            split, wl = workloads[w]
            rows.append(
                (
                    s,
                    mem_total[w],
                    pl,
                    es,
                    ee,
                    power_mean[w],
                    power_max[w],
                    util[w],
                    mem_used[w],
                    sm[w],
                    tensor[w],
                    s_util[w],
                    s_power[w],
                    split,
                    wl,
                    reasons,
                    events[w],
                )
            )
        return rows

    def _energy(
        self,
        g: _Gpu,
        reads: list[list[float] | None] | None,
        arr: list[float | None] | None,
        starts: range,
        p: int,
    ) -> tuple[list[int | None], list[int | None], list[tuple[Event, ...]]]:
        """Per window (energy_start_mj, energy_end_mj, events): carried over from the last
        reading before the window, as on the agent; a counter that goes back is an event."""
        windows = len(starts)
        ckey = (g.host, g.uuid)
        carry = self._energy_carry.get(ckey)
        no_events: list[tuple[Event, ...]] = [()] * windows
        if reads is None or arr is None:
            return [carry] * windows, [carry] * windows, no_events
        n = windows * p
        if None not in arr[:n]:
            e = [round(v) for v in arr[:n]]  # type: ignore[arg-type]
            if e and min(e) >= 0 and (carry is None or carry <= e[0]) and e == sorted(e):
                # The common case: a counter that only rises, a reading at every step.
                first = e[0] if carry is None else carry
                e_start: list[int | None] = [first, *(e[i - 1] for i in starts[1:])]
                e_end: list[int | None] = [e[i + p - 1] for i in starts]
                self._energy_carry[ckey] = e[n - 1]
                return e_start, e_end, no_events
        e_start, e_end, events = [], [], []
        for pts in reads:
            es: int | None = carry
            last = carry
            evs: list[Event] = []
            if pts is not None:
                for v in pts:
                    x = round(v)
                    if x < 0:
                        continue
                    if last is not None and x < last:
                        evs.append(Event(ENERGY_RESET_EVENT, f"counter went from {last} to {x} mJ"))
                    if es is None:
                        es = x
                    last = x
                carry = last
            e_start.append(es)
            e_end.append(last)
            events.append(tuple(evs))
        if carry is not None:
            self._energy_carry[ckey] = carry
        return e_start, e_end, events

    def _workloads_by_window(
        self,
        atts: list[tuple[tuple[str, str, str], ...] | None],
        util: list[float | None] | None,
        starts: range,
        p: int,
    ) -> list[tuple[str, tuple[Workload, ...]]]:
        """Per window (split_method, workloads): per step with a utilisation point, who its
        series named (shared equally); busy with no workload label is ``no-visible-process``."""
        windows = len(starts)
        a0 = atts[0] if atts else None
        if atts.count(a0) == len(atts) and (a0 is None or a0):
            # The same workloads at every step (the common case): the same in every window.
            return [self._workloads(atts[:p], None if util is None else util[:p])] * windows
        return [self._workloads(atts[i : i + p], None if util is None else util[i : i + p]) for i in starts]

    def _workloads(
        self, atts: list[tuple[tuple[str, str, str], ...] | None], util_w: list[float | None] | None
    ) -> tuple[str, tuple[Workload, ...]]:
        weights: dict[tuple[str, str, str], float] = {}
        for j, a in enumerate(atts):
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
        if len(weights) == 1:
            ((k3, wt),) = weights.items()
            return "exclusive", (Workload(k3[0], k3[1], k3[2], 0, None, 1000, round(wt * self.step_ms)),)
        if weights:
            shares = _shares(weights)
            return "equal", tuple(
                Workload(k3[0], k3[1], k3[2], 0, None, shares[k3], round(wt * self.step_ms))
                for k3, wt in sorted(weights.items())
            )
        return "exclusive", ()


def _reads(arr: list[float | None], starts: range, p: int) -> list[list[float] | None]:
    """Per window, the points read in it (None: none)."""
    if None not in arr:
        return [arr[i : i + p] for i in starts]  # type: ignore[misc]
    out: list[list[float] | None] = []
    for i in starts:
        got = [v for v in arr[i : i + p] if v is not None]
        out.append(got or None)
    return out


__all__ = [
    "METRICS",
    "ChunkRows",
    "POWER_LIMITS_W",
    "UNSIGNED_CHAIN",
    "Coverage",
    "LabelMap",
    "MetricQuery",
    "WindowBuilder",
    "default_power_limit_mw",
]
