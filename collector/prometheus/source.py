"""``detect --prometheus``: read a span of dcgm-exporter history, window it, run the detector.

The span is read one chunk (an hour by default) at a time, every query of the chunk, split
by host where one request would be too large (collector/prometheus/client.py); the chunk's
windows go to the detector in event-time order, so memory is bounded by a chunk or two, not
by the span. With ``pipeline`` a second process reads and windows the next chunk while the
detector runs on this one (collector/prometheus/pipeline.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from attestation.statement import UsageWindow
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.detect.findings import rfc3339_ms
from collector.prometheus.client import (
    SERIES_PER_HOST_ESTIMATE,
    Chunk,
    PrometheusClient,
    PrometheusError,
    RangeSeries,
    TooLargeError,
    host_batches,
    plan_chunks,
    quote,
    regex_alternation,
)
from collector.prometheus.pipeline import RunAhead, usable
from collector.prometheus.sites import SiteAt, aggregate_rows
from collector.prometheus.windows import METRICS, ChunkRows, Coverage, MetricQuery, WindowBuilder
from collector.tenants import TenantDirectory
from core.nogc import no_gc

_logger = logging.getLogger(__name__)

SOURCE = "prometheus"
NOTE = (
    "Unsigned operator data: read from Prometheus (dcgm-exporter series), not from signed node statements, so "
    "nothing vouches that it was not altered; and no process-level attribution: GPUs are attributed to tenants "
    "by their pod/namespace or HPC-job labels only, at the query step's resolution."
)
DEFAULT_CHUNK_MS = 3_600_000
_HOST_PROBE = "DCGM_FI_DEV_GPU_UTIL"


@dataclass(frozen=True)
class Span:
    start_ms: int
    end_ms: int
    step_ms: int
    window_ms: int = 60_000
    chunk_ms: int = DEFAULT_CHUNK_MS


class PrometheusHistory:
    """The windows of a span of Prometheus history, chunk by chunk."""

    def __init__(self, client: PrometheusClient, builder: WindowBuilder, span: Span) -> None:
        self.client = client
        self.builder = builder
        self.span = span
        self.coverage: Coverage = builder.coverage
        self.chunks = plan_chunks(
            span.start_ms, span.end_ms, window_ms=span.window_ms, step_ms=span.step_ms, chunk_ms=span.chunk_ms
        )
        self.coverage.windows_in_span = (self.chunks[-1].end_ms - self.chunks[0].start_ms) // span.window_ms

    def _hosts(self) -> list[tuple[str, list[str]]]:
        """(host label, its values) for each spelling of the host label with series in the span."""
        first, last = self.chunks[0].start_ms / 1000, self.chunks[-1].end_ms / 1000
        out = []
        for label in self.builder.labels.host:
            values = self.client.label_values(label, _HOST_PROBE, first, last)
            if values:
                out.append((label, values))
        if not out:
            raise PrometheusError(
                f"no {_HOST_PROBE} series with a {' or '.join(self.builder.labels.host)} label between "
                f"{rfc3339_ms(self.chunks[0].start_ms)} and {rfc3339_ms(self.chunks[-1].end_ms)}",
                "Check the span (--start, --end) and that dcgm-exporter is scraped by this Prometheus; if the "
                "site's relabelling renamed the host label, say which with --label-map host=LABEL.",
            )
        return out

    def _query(self, q: MetricQuery, chunk: Chunk, hosts: list[tuple[str, list[str]]] | None) -> list[RangeSeries]:
        start_s, end_s = self.builder.grid(chunk)
        step_s = self.span.step_ms / 1000
        r = self.builder.range_selector()
        if hosts is None:
            return self.client.query_range(q.expr("", r), start_s, end_s, step_s)
        out: list[RangeSeries] = []
        for label, batch in hosts:
            out.extend(self._query_hosts(q, label, batch, start_s, end_s, step_s, r))
        return out

    def _query_hosts(
        self, q: MetricQuery, label: str, batch: list[str], start_s: float, end_s: float, step_s: float, r: str
    ) -> list[RangeSeries]:
        matcher = "{" + f"{label}=~{quote(regex_alternation(batch))}" + "}"
        try:
            return self.client.query_range(q.expr(matcher, r), start_s, end_s, step_s)
        except TooLargeError:
            if len(batch) == 1:
                raise
            self.coverage.splits += 1
            half = len(batch) // 2
            _logger.info("request for %d hosts refused as too large; splitting it in two", len(batch))
            return self._query_hosts(q, label, batch[:half], start_s, end_s, step_s, r) + self._query_hosts(
                q, label, batch[half:], start_s, end_s, step_s, r
            )

    def rows(self, config: DetectConfig | None = None) -> Iterator[ChunkRows]:
        """Each chunk's rows (``WindowBuilder.compute``, classified with ``config``), in time order."""
        hosts_by_label = self._hosts()
        total_hosts = sum(len(v) for _, v in hosts_by_label)
        points = (self.chunks[0].end_ms - self.chunks[0].start_ms) // self.span.step_ms
        max_points = self.client.cfg.max_points
        batches: list[tuple[str, list[str]]] | None = None
        if total_hosts * points * SERIES_PER_HOST_ESTIMATE > max_points:
            batches = [(label, b) for label, values in hosts_by_label for b in host_batches(values, points, max_points)]
            _logger.info("%d hosts: %d requests per query and chunk", total_hosts, len(batches))
        for i, chunk in enumerate(self.chunks):
            results = {q.key: self._query(q, chunk, batches) for q in METRICS}
            self.coverage.requests = self.client.requests
            self.coverage.bytes_read = self.client.bytes_read
            rows = self.builder.compute(chunk, results, config)
            del results
            _logger.debug("chunk %d/%d %s read", i + 1, len(self.chunks), rfc3339_ms(chunk.start_ms))
            yield rows
            del rows  # not held while the next chunk is read

    def windows(self, *, pipeline: bool = False) -> Iterator[list[UsageWindow]]:
        """Each chunk's windows, sorted by (start, host), in time order. With ``pipeline``
        (where ``pipeline.usable()``), a second process reads and computes the next chunk
        while the caller works on this one; the windows and the coverage are the same."""
        if not (pipeline and usable()):
            for rows in self.rows():
                yield self.builder.assemble(rows)
            return
        ahead: RunAhead[ChunkRows] = RunAhead(self.rows, lambda: self.coverage)
        for rows in ahead:
            yield self.builder.assemble(rows)
        self.coverage.merge_read(ahead.finished)

    def sites(self, config: DetectConfig, *, pipeline: bool = False) -> Iterator[list[SiteAt]]:
        """Each chunk's windows as the detector aggregates them (collector/prometheus/sites.py),
        in time order, for ``DetectorEngine.observe_site``; no records are made. With
        ``pipeline`` (where ``pipeline.usable()``) a second process reads and computes the
        next chunk's rows while the caller aggregates this one and runs the detector on it
        (the rows pickle cheaply; the aggregate, a record per workload, does not). The
        coverage is the same either way."""
        window_ms = self.span.window_ms
        ahead: Iterable[ChunkRows] = self.rows(config)
        finished: RunAhead[ChunkRows] | None = None
        if pipeline and usable():
            ahead = finished = RunAhead(lambda: self.rows(config), lambda: self.coverage)
        for rows in ahead:
            with no_gc():
                sites = aggregate_rows(rows, config, window_ms, self.coverage)
            del rows
            yield sites
        if finished is not None:
            self.coverage.merge_read(finished.finished)


def wrap_finding(doc: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A Findings JSON object from this source: ``source``, the note, and what was read."""
    return {**doc, "source": SOURCE, "note": NOTE, "prometheus": context}


def detect(
    history: PrometheusHistory, config: DetectConfig, tenants: TenantDirectory, *, pipeline: bool = False
) -> list[Any]:
    """Every window of the span through one detector; its findings in their final state.
    ``pipeline``: read and aggregate the next chunk in a second process meanwhile.

    Each window goes to the detector whole (``observe_site``): Prometheus holds every node's
    window of it at once, so there is nothing to wait for."""
    engine = DetectorEngine(config, tenants)
    for sites in history.sites(config, pipeline=pipeline):
        for at in sites:
            engine.observe_site(at.start_ms, at.end_ms, at.nodes, at.site)
        del sites
    engine.finish()
    return engine.findings()


__all__ = ["NOTE", "SOURCE", "PrometheusHistory", "Span", "detect", "wrap_finding"]
