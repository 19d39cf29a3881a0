"""What ``detect --prometheus`` read and what it could not, over the whole span."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.prometheus.queries import METRIC_OF


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

    def merge_read(self, other: Coverage, *, windows: bool = False) -> None:
        """Take what ``other`` counted while reading (``WindowBuilder.compute`` and the
        client, in a pipeline's worker process); what ``assemble`` counted stays, unless
        ``windows``: the worker counted the windows too (collector/prometheus/sites.py)."""
        if windows:
            self.host_windows = other.host_windows
            self.gpu_windows = other.gpu_windows
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


__all__ = ["Coverage"]
