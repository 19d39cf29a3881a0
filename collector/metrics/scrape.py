"""The collector's metrics read at scrape time rather than kept as values: nodes reporting,
open findings, the store's files on disk, the screening list."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collector.screening import ScreeningSource


def store_paths(db: Path) -> list[Path]:
    """The files a SQLite store at ``db`` occupies."""
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


class NodesReporting(Collector):
    """Nodes with an accepted statement in the last ``horizon_s`` (wall clock), and all known."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self.last_seen: dict[str, float] = {}
        self.known: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        n = sum(1 for t in list(self.last_seen.values()) if now - t <= self.horizon_s)
        g = GaugeMetricFamily(
            "gpuaudit_collector_nodes_reporting",
            f"Nodes whose statements were accepted in the last {int(self.horizon_s)} s (wall clock).",
            value=n,
        )
        yield g
        yield GaugeMetricFamily(
            "gpuaudit_collector_nodes_known",
            "Nodes with at least one accepted statement (in the store when the collector started, or since).",
            value=len(self.known),
        )


class OpenFindings(Collector):
    """``gpuaudit_finding_open``: the findings ``open()`` returns (labels), read at scrape time."""

    def __init__(self, open_: Callable[[], list[tuple[str, str, str, str]]]) -> None:
        self._open = open_

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "gpuaudit_finding_open",
            "1 for each detector finding whose run goes on (updated within a history span and a run gap "
            "of event time); the series ends with the run. For alerts that name the finding.",
            labels=["finding_id", "kind", "severity", "tenant_pseudonym"],
        )
        for labels in self._open():
            g.add_metric(labels, 1.0)
        yield g


class StoreFiles(Collector):
    """Size of the store's files on disk, with node_exporter's per-collector success and duration."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        ok = 1
        size = 0
        try:
            for p in self.paths:
                try:
                    size += os.stat(p).st_size
                except FileNotFoundError:
                    continue  # -wal / -shm exist only while the database is open in WAL mode
        except OSError:
            ok = 0
        if ok:
            yield GaugeMetricFamily(
                "gpuaudit_collector_store_size_bytes",
                "Size of the store's database files on disk (SQLite: the database, its WAL and shared memory).",
                value=size,
            )
        success = GaugeMetricFamily(
            "gpuaudit_collector_scrape_collector_success",
            "Whether a collector of this exporter succeeded in this scrape (1) or not (0).",
            labels=["collector"],
        )
        success.add_metric(["store"], ok)
        duration = GaugeMetricFamily(
            "gpuaudit_collector_scrape_collector_duration_seconds",
            "Time a collector of this exporter took in this scrape.",
            labels=["collector"],
        )
        duration.add_metric(["store"], time.perf_counter() - t0)
        yield success
        yield duration


class ScreeningList(Collector):
    """The screening list's date and size, read at scrape time (the file may be re-read)."""

    def __init__(self, source: ScreeningSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        lst = self._source.current()
        midnight = dt.datetime.combine(lst.list_date, dt.time(), tzinfo=dt.UTC)
        yield GaugeMetricFamily(
            "gpuaudit_screening_list_date_timestamp_seconds",
            "Date of the screening list the tenants are screened against (its sources_used date or the file's "
            "modification time), as a Unix time.",
            value=midnight.timestamp(),
        )
        yield GaugeMetricFamily(
            "gpuaudit_screening_list_entries", "Entries of the screening list.", value=float(len(lst))
        )
