"""The public data the evaluation is built from: ITP job mix and MLPerf training power.

Both live outside the repository (``../shared/data`` relative to its root; see its README).
Nothing here is read at import time; ``load`` raises ``DataMissingError`` with what to do when
the directory or a file is absent.

* ``itp-jobs-2021/clusterNN.csv.gz``: (num_gpu, duration s) of 69,351 real training jobs.
* ``mlperf-training-power/power.csv.gz`` + ``runs.csv``: whole-server wall power of real
  MLPerf Training runs, ~2 s apart. Each run's training segment (``run_start_ms`` to
  ``run_stop_ms``) is put on a 2 s grid per metered node; a system's runs are concatenated
  into one long power trace per node (a "source"), looped by the generator. The nodes of a
  multi-node run keep their real time alignment, so their correlation is what the data has.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from collector.errors import CollectorError

_logger = logging.getLogger(__name__)

GRID_MS = 2000
"""Power sources are resampled onto this grid (the MLPerf logs read about every 2 s)."""
IDLE_PERCENTILE = 0.03
"""A server's idle baseline: this low percentile of all its readings (pre-run idle included)."""
DEFAULT_IDLE_W = {"NVIDIA H100 80GB HBM3": 2200.0, "NVIDIA B200": 3600.0}
"""Cap on the idle baseline where a log has no idle period (README: an idle 8xH100 server draws
1.5-2.5 kW; the B200 figure is the lowest reading of the B200 server's logs)."""
GPU_IDLE_FRACTION = 0.10
"""An idle GPU draws ~10% of its limit (H100 SXM: ~70 W of 700 W)."""
GPU_SHARE_OF_DYNAMIC = 0.85
"""Share of the server's power above idle drawn by its 8 GPUs (the rest: CPUs, fans, NICs)."""
GPUS_PER_SERVER = 8


class DataMissingError(CollectorError, FileNotFoundError):
    """The shared data directory or one of its files is absent."""

    reason = "data_missing"

    def diagnostics(self) -> str:
        return (
            f"{self}. The evaluation reads the public data in ../shared/data (relative to the "
            "repository root; see its README.md). Pass --data DIR to point elsewhere."
        )


@dataclass(frozen=True)
class ItpJob:
    gpus: int
    duration_s: float


@dataclass(frozen=True)
class PowerSource:
    """One system/benchmark: per metered node, wall power (W) on a ``GRID_MS`` grid."""

    name: str
    gpu_model: str
    gpu_limit_w: float
    idle_w: tuple[float, ...]  # per node
    watts: tuple[tuple[float, ...], ...]  # node -> samples (all nodes the same length)
    prefix: tuple[tuple[float, ...], ...]  # node -> prefix sums of watts (len + 1)

    @property
    def nodes(self) -> int:
        return len(self.watts)

    @property
    def length(self) -> int:
        return len(self.watts[0])

    def mean_w(self, node: int, start: int, count: int) -> float:
        """Mean wall power of ``node`` over ``count`` grid points from ``start`` (wrapping)."""
        n = self.length
        start %= n
        pre = self.prefix[node]
        end = start + count
        if end <= n:
            return (pre[end] - pre[start]) / count
        rest = end - n
        return (pre[n] - pre[start] + pre[min(rest, n)]) / count

    def gpu_fraction(self, node: int, watts: float) -> float:
        """Per-GPU power / limit: idle draw plus the GPUs' share of wall power above idle, over 8."""
        dyn = max(0.0, watts - self.idle_w[node]) * GPU_SHARE_OF_DYNAMIC / GPUS_PER_SERVER
        return min(1.0, GPU_IDLE_FRACTION + dyn / self.gpu_limit_w)


@dataclass(frozen=True)
class PublicData:
    itp: tuple[ItpJob, ...]
    sources: tuple[PowerSource, ...]

    def multi_node_sources(self) -> list[PowerSource]:
        return [s for s in self.sources if s.nodes > 1]

    def single_node_sources(self) -> list[PowerSource]:
        return [s for s in self.sources if s.nodes == 1]


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataMissingError(f"{path} not found")
    return path


def load_itp(root: Path) -> tuple[ItpJob, ...]:
    d = _need(root / "itp-jobs-2021")
    jobs: list[ItpJob] = []
    files = sorted(d.glob("cluster*.csv.gz"))
    if not files:
        raise DataMissingError(f"{d}/cluster*.csv.gz not found")
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    g = int(row["num_gpu"])
                    dur = float(row["duration"])
                except (KeyError, ValueError):
                    continue
                if g > 0 and dur > 0:
                    jobs.append(ItpJob(g, dur))
    _logger.debug("ITP: %d jobs from %d files", len(jobs), len(files))
    return tuple(jobs)


def _gpu_of(system: str) -> tuple[str, float]:
    if "B200" in system:
        return "NVIDIA B200", 1000.0
    return "NVIDIA H100 80GB HBM3", 700.0


def _grid(ts: list[int], ws: list[float], start_ms: int, stop_ms: int) -> list[float]:
    """Step-interpolate readings onto the grid from start to stop."""
    out = []
    t = start_ms
    while t < stop_ms:
        i = bisect.bisect_right(ts, t) - 1
        out.append(ws[max(i, 0)])
        t += GRID_MS
    return out


def load_mlperf(root: Path) -> tuple[PowerSource, ...]:
    d = _need(root / "mlperf-training-power")
    runs: dict[tuple[str, str, str], tuple[int, int]] = {}
    with open(_need(d / "runs.csv"), encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                runs[(row["system"], row["benchmark"], row["run"])] = (
                    int(row["run_start_ms"]),
                    int(row["run_stop_ms"]),
                )
            except (KeyError, ValueError):
                continue
    readings: dict[tuple[str, str, str], dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    with gzip.open(_need(d / "power.csv.gz"), "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = (row["system"], row["benchmark"], row["run"])
            if not row["node"].startswith("node"):
                continue  # other meters (a switch): not a server
            ts, ws = readings[key].setdefault(row["node"], ([], []))
            ts.append(int(row["t_ms"]))
            ws.append(float(row["watts"]))
    by_source: dict[tuple[str, str], list[tuple[int, tuple[str, str, str]]]] = defaultdict(list)
    for key, (start, _) in runs.items():
        if key in readings:
            by_source[(key[0], key[1])].append((start, key))
    sources = []
    for (system, bench), keyed in sorted(by_source.items()):
        keyed.sort()
        node_names = sorted(readings[keyed[0][1]], key=lambda n: (len(n), n))
        series: list[list[float]] = [[] for _ in node_names]
        every: list[list[float]] = [[] for _ in node_names]
        for _, key in keyed:
            per = readings[key]
            if sorted(per, key=lambda n: (len(n), n)) != node_names:
                continue  # a run metered on other nodes: skip rather than misalign
            start, stop = runs[key]
            for j, name in enumerate(node_names):
                ts, ws = per[name]
                order = sorted(range(len(ts)), key=ts.__getitem__)
                ts_s = [ts[i] for i in order]
                ws_s = [ws[i] for i in order]
                series[j].extend(_grid(ts_s, ws_s, start, stop))
                every[j].extend(ws_s)
        if not series[0] or len(series[0]) < 60:
            continue
        model, limit = _gpu_of(system)
        idle = []
        for vals in every:
            srt = sorted(vals)
            idle.append(min(srt[int(IDLE_PERCENTILE * (len(srt) - 1))], DEFAULT_IDLE_W[model]))
        prefix = []
        for vals in series:
            acc = [0.0]
            for v in vals:
                acc.append(acc[-1] + v)
            prefix.append(tuple(acc))
        sources.append(
            PowerSource(
                name=f"{system}/{bench}",
                gpu_model=model,
                gpu_limit_w=limit,
                idle_w=tuple(idle),
                watts=tuple(tuple(v) for v in series),
                prefix=tuple(prefix),
            )
        )
    if not sources:
        raise DataMissingError(f"{d}: no usable runs")
    return tuple(sources)


def load(root: Path) -> PublicData:
    """Both data sets from ``root`` (normally ``../shared/data``)."""
    if not root.is_dir():
        raise DataMissingError(f"{root} is not a directory")
    return PublicData(itp=load_itp(root), sources=load_mlperf(root))
