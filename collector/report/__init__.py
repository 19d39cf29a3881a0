"""Evidence reports: one self-contained HTML file per finding, for compliance staff.

``gpuaudit-collector report FINDING_ID --out report.html`` writes a page that a compliance
officer can read, print and forward without any tool: the finding in plain words, three
charts (GPUs in use, utilization across the tenant's nodes, cumulative compute against the
reporting thresholds), both axes of its severity (why the tenant counts as opaque, and its
end-use risk: countries of concern, restricted-party screening with the list's date, a
declared use the run contradicts), the signed statements behind it and the commands that
let anyone verify them offline.

The file fetches nothing: CSS is inline, the charts are SVG generated here, there is no
script, and a Content-Security-Policy forbids every fetch (a forwarded report must not
call home). Every string that came from a node (tenant, node and workload names) is
HTML-escaped.

Data come from the store: the finding's JSON, and the statements of the finding's tenants
in the finding's span (``data``: how they are read and downsampled).

The package: ``options`` (what the report reads and is told), ``data`` (gathering from the
store), ``svg`` (the charts), ``page`` and ``sections`` (the HTML), ``fmt`` (formatting).
"""

from __future__ import annotations

from pathlib import Path

from collector.report.data import KeySummary, ReportData, collect
from collector.report.options import (
    ReportError,
    ReportOptions,
    ReportStore,
    from_detect_config,
    log_key_fingerprint,
    store_args_for,
    tenant_facts,
)
from collector.report.page import render
from collector.report.svg import chart_flop, chart_gpus, chart_heatmap

__all__ = [
    "KeySummary",
    "ReportData",
    "ReportError",
    "ReportOptions",
    "ReportStore",
    "build_report",
    "chart_flop",
    "chart_gpus",
    "chart_heatmap",
    "collect",
    "from_detect_config",
    "log_key_fingerprint",
    "render",
    "store_args_for",
    "tenant_facts",
    "write_report",
]


def build_report(
    store: ReportStore, finding_id: str, options: ReportOptions, *, generated_ms: int, version: str
) -> tuple[str, ReportData]:
    """The HTML report of ``finding_id`` and the data it shows."""
    data = collect(store, finding_id, options)
    return render(data, options, generated_ms, version), data


def write_report(path: Path, text: str) -> None:
    """Write atomically (a half-written report must never be forwarded)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
