"""Generate deploy/grafana/*.json: the gpuaudit Grafana dashboards.

Run ``python tools/grafana_dashboards.py`` after changing a panel; a test checks that the
committed JSON is what this script writes, and a real Prometheus runs every panel's query
(tests/integration/test_prometheus_dashboards.py). Dashboards use a ``datasource``
variable (any Prometheus that scrapes the collector and loads deploy/prometheus/rules.yml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}


def _var_datasource() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }


def _var_query(name: str, label: str, metric: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": f"label_values({metric}, {name})", "refId": f"{name}-values"},
        "definition": f"label_values({metric}, {name})",
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


class _Board:
    def __init__(self, uid: str, title: str, description: str, variables: list[dict[str, Any]]) -> None:
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = [_var_datasource(), *variables]
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def panel(
        self,
        kind: str,
        title: str,
        targets: list[tuple[str, str]],
        *,
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        description: str = "",
        instant: bool = False,
        decimals: int | None = None,
    ) -> None:
        if self._x + w > 24:
            self._x = 0
            self._y += self._row_h
            self._row_h = 0
        defaults: dict[str, Any] = {"unit": unit}
        if decimals is not None:
            defaults["decimals"] = decimals
        p: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"x": self._x, "y": self._y, "w": w, "h": h},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": DS,
                    "expr": expr,
                    "legendFormat": legend,
                    "instant": instant or kind in ("stat", "table", "bargauge"),
                    "range": not (instant or kind in ("stat", "table", "bargauge")),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "table":
            p["transformations"] = [{"id": "labelsToFields", "options": {}}]
        self.panels.append(p)
        self._x += w
        self._row_h = max(self._row_h, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["gpuaudit"],
            "timezone": "utc",
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "refresh": "1m",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [
                {"title": t, "type": "link", "url": f"/d/{u}"}
                for u, t in (
                    ("gpuaudit-fleet", "Fleet"),
                    ("gpuaudit-tenants", "Tenant usage"),
                    ("gpuaudit-findings", "Findings"),
                    ("gpuaudit-trust", "Trust health"),
                )
                if u != self.uid
            ],
            "panels": self.panels,
        }


RATE = "$__rate_interval"


def fleet() -> _Board:
    b = _Board(
        "gpuaudit-fleet",
        "gpuaudit / Fleet",
        "GPU nodes reporting signed usage statements, and what their GPUs are doing.",
        [_var_query("node", "Node", "gpuaudit_node_gpus")],
    )
    b.panel("stat", "Nodes reporting", [("gpuaudit_collector_nodes_reporting", "reporting")], w=4, h=4)
    b.panel("stat", "Nodes known", [("gpuaudit_collector_nodes_known", "known")], w=4, h=4)
    b.panel("stat", "GPUs reporting", [("sum(gpuaudit_node_gpus)", "GPUs")], w=4, h=4)
    b.panel(
        "stat",
        "GPUs busy",
        [(f"sum(rate(gpuaudit_tenant_gpu_seconds_total[{RATE}]))", "busy")],
        w=4,
        h=4,
        decimals=1,
        description="GPU-seconds attributed per second: the number of GPUs busy on average.",
    )
    b.panel("stat", "GPU power", [("sum(gpuaudit_gpu_power_watts)", "power")], unit="watt", w=4, h=4)
    b.panel(
        "stat",
        "Mean GPU utilization",
        [("avg(gpuaudit_gpu_utilization_ratio)", "utilization")],
        unit="percentunit",
        w=4,
        h=4,
    )
    b.panel(
        "timeseries",
        "GPU utilization by node",
        [('avg by (node) (gpuaudit_gpu_utilization_ratio{node=~"$node"})', "{{node}}")],
        unit="percentunit",
    )
    b.panel(
        "timeseries",
        "GPU power by node",
        [('sum by (node) (gpuaudit_gpu_power_watts{node=~"$node"})', "{{node}}")],
        unit="watt",
    )
    b.panel(
        "timeseries",
        "Energy by node (power from the energy counters)",
        [(f'sum by (node) (rate(gpuaudit_node_energy_joules_total{{node=~"$node"}}[{RATE}]))', "{{node}}")],
        unit="watt",
    )
    b.panel(
        "table",
        "GPUs (latest window)",
        [('gpuaudit_gpu_utilization_ratio{node=~"$node"}', "{{node}} {{gpu}}")],
        unit="percentunit",
        description="Mean utilization of each GPU in its latest signed window.",
    )
    b.panel(
        "timeseries",
        "Collector ingest batch latency",
        [
            (
                "histogram_quantile(0.5, sum by (le) "
                f"(rate(gpuaudit_collector_ingest_batch_duration_seconds_bucket[{RATE}])))",
                "p50",
            ),
            (
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(gpuaudit_collector_ingest_batch_duration_seconds_bucket[{RATE}])))",
                "p99",
            ),
        ],
        unit="s",
    )
    b.panel(
        "table",
        "Collector build",
        [("gpuaudit_collector_build_info", "{{instance}} {{version}}")],
    )
    return b


def tenants() -> _Board:
    b = _Board(
        "gpuaudit-tenants",
        "gpuaudit / Tenant usage",
        "GPU-hours, energy and estimated FLOP by tenant, from signed statements (event time).",
        [_var_query("tenant", "Tenant", "gpuaudit_tenant_gpu_seconds_total")],
    )
    sel = '{tenant=~"$tenant"}'
    b.panel(
        "timeseries",
        "GPUs busy by tenant",
        [(f"sum by (tenant) (rate(gpuaudit_tenant_gpu_seconds_total{sel}[{RATE}]))", "{{tenant}}")],
        decimals=1,
    )
    b.panel(
        "timeseries",
        "Power by tenant",
        [(f"sum by (tenant) (rate(gpuaudit_tenant_energy_joules_total{sel}[{RATE}]))", "{{tenant}}")],
        unit="watt",
    )
    b.panel(
        "bargauge",
        "GPU-hours by tenant (dashboard range)",
        [
            (
                f"sort_desc(sum by (tenant) (increase(gpuaudit_tenant_gpu_seconds_total{sel}[$__range])) / 3600)",
                "{{tenant}}",
            )
        ],
        w=8,
    )
    b.panel(
        "bargauge",
        "Energy by tenant (dashboard range)",
        [
            (
                f"sort_desc(sum by (tenant) (increase(gpuaudit_tenant_energy_joules_total{sel}[$__range])) / 3.6e6)",
                "{{tenant}}",
            )
        ],
        unit="kwatth",
        w=8,
    )
    b.panel(
        "table",
        "Estimated FLOP by tenant (dashboard range)",
        [
            (
                f"sum by (tenant, bound) (increase(gpuaudit_tenant_flop_estimate_total{sel}[$__range]))",
                "{{tenant}} {{bound}}",
            )
        ],
        unit="sci",
        w=8,
        description="Peak dense BF16 of each GPU model x activity x GPU time x model FLOP utilization "
        "(low and high bound). The detector's thresholds apply to the same estimate.",
    )
    b.panel(
        "timeseries",
        "Cumulative estimated FLOP (high bound, since collector start)",
        [('sum by (tenant) (gpuaudit_tenant_flop_estimate_total{tenant=~"$tenant",bound="high"})', "{{tenant}}")],
        unit="sci",
    )
    b.panel(
        "timeseries",
        "Unattributed GPUs by node",
        [(f"sum by (node) (rate(gpuaudit_unattributed_gpu_seconds_total[{RATE}]))", "{{node}}")],
        decimals=1,
        description="Busy GPU time no tenant rule claimed. Add the rule to the node's agent config.",
    )
    b.panel(
        "stat",
        "Unattributed share of GPU time (30 min)",
        [("gpuaudit:unattributed_gpu_ratio:rate30m", "share")],
        unit="percentunit",
        w=6,
        h=4,
    )
    b.panel(
        "stat",
        "GPU-hours without a FLOP estimate (dashboard range)",
        [("sum(increase(gpuaudit_tenant_flop_unavailable_gpu_seconds_total[$__range])) / 3600 or vector(0)", "GPU-h")],
        w=6,
        h=4,
        description="GPU models of unknown peak throughput, or no activity reading: not guessed, not counted.",
    )
    return b


def findings() -> _Board:
    b = _Board(
        "gpuaudit-findings",
        "gpuaudit / Findings",
        "Large training runs and other findings of the collector's detector. Details: "
        "`gpuaudit-collector findings --json`.",
        [_var_query("kind", "Kind", "gpuaudit_findings")],
    )
    b.panel(
        "stat",
        "High and critical large-training findings",
        [('sum(gpuaudit_findings{kind="large_training",severity=~"high|critical"})', "findings")],
        w=6,
        h=4,
    )
    b.panel(
        "bargauge",
        "Findings recorded, by current severity",
        [('sum by (severity) (gpuaudit_findings{kind=~"$kind"})', "{{severity}}")],
        w=9,
        h=4,
    )
    b.panel(
        "bargauge",
        "Findings raised or escalated (dashboard range)",
        [
            (
                'sum by (kind, severity) (increase(gpuaudit_findings_raised_total{kind=~"$kind"}[$__range]))',
                "{{kind}} {{severity}}",
            )
        ],
        w=9,
        h=4,
    )
    b.panel(
        "table",
        "gpuaudit alerts (firing and pending)",
        [('ALERTS{alertname=~"Gpuaudit.*"}', "{{alertname}} {{alertstate}}")],
        w=24,
    )
    b.panel(
        "timeseries",
        "Busiest tenants (GPUs busy)",
        [("topk(10, gpuaudit:tenant_gpus_busy:rate5m)", "{{tenant}}")],
        decimals=1,
        w=24,
    )
    return b


def trust() -> _Board:
    b = _Board(
        "gpuaudit-trust",
        "gpuaudit / Trust health",
        "Is the record complete and intact? Refusals by reason, chain breaks, dark nodes, the store.",
        [_var_query("node", "Node", "gpuaudit_node_last_statement_end_timestamp_seconds")],
    )
    b.panel("stat", "Statements stored", [("gpuaudit_collector_statements_stored", "stored")], w=4, h=4)
    b.panel(
        "stat",
        "Dark nodes (> 10 min)",
        [("count(time() - gpuaudit_node_last_statement_end_timestamp_seconds > 600) or vector(0)", "dark")],
        w=4,
        h=4,
    )
    b.panel(
        "stat",
        "Chain breaks (since collector start)",
        [("sum(gpuaudit_collector_chain_breaks_total)", "breaks")],
        w=4,
        h=4,
    )
    b.panel(
        "stat",
        "Refused (since collector start)",
        [("sum(gpuaudit_collector_statements_refused_total)", "refused")],
        w=4,
        h=4,
    )
    b.panel("stat", "Store size", [("gpuaudit_collector_store_size_bytes", "size")], unit="bytes", w=4, h=4)
    b.panel(
        "stat",
        "Store collector OK",
        [('gpuaudit_collector_scrape_collector_success{collector="store"}', "ok")],
        w=4,
        h=4,
    )
    b.panel(
        "timeseries",
        "Statements accepted, duplicate, refused",
        [
            (f"sum(rate(gpuaudit_collector_statements_accepted_total[{RATE}]))", "accepted"),
            (f"sum(rate(gpuaudit_collector_statements_duplicate_total[{RATE}]))", "duplicate"),
            (f"sum(rate(gpuaudit_collector_statements_refused_total[{RATE}]))", "refused"),
        ],
        unit="ops",
    )
    b.panel(
        "timeseries",
        "Refused by reason",
        [(f"sum by (reason) (rate(gpuaudit_collector_statements_refused_total[{RATE}]))", "{{reason}}")],
        unit="ops",
    )
    b.panel(
        "table",
        "Refusals by reason (since collector start)",
        [("sort_desc(sum by (reason) (gpuaudit_collector_statements_refused_total))", "{{reason}}")],
        w=8,
    )
    b.panel(
        "table",
        "Chain gaps and forks by node",
        [('sum by (node, reason) (gpuaudit_collector_chain_breaks_total{node=~"$node"}) > 0', "{{node}} {{reason}}")],
        w=8,
        description="seq_gap, prev_mismatch: a statement is missing. seq_replay, equivocation: the chain forked.",
    )
    b.panel(
        "table",
        "Enrollments refused by reason",
        [("sum by (reason) (gpuaudit_collector_enrollments_refused_total)", "{{reason}}")],
        w=8,
    )
    b.panel(
        "table",
        "Statement lag by node (event time)",
        [
            (
                'sort_desc(time() - max by (node) (gpuaudit_node_last_statement_end_timestamp_seconds{node=~"$node"}))',
                "{{node}}",
            )
        ],
        unit="s",
        description="How long ago the node's latest signed window ended. Over 10 minutes: the node is dark.",
    )
    b.panel(
        "table",
        "Last statement received by node (wall clock)",
        [
            (
                "sort_desc(time() - max by (node) "
                '(gpuaudit_node_last_statement_received_timestamp_seconds{node=~"$node"}))',
                "{{node}}",
            )
        ],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Store size",
        [("gpuaudit_collector_store_size_bytes", "{{instance}}")],
        unit="bytes",
    )
    b.panel(
        "timeseries",
        "Statements per ingest batch (mean)",
        [
            (
                f"sum(rate(gpuaudit_collector_ingest_batch_statements_sum[{RATE}])) / "
                f"sum(rate(gpuaudit_collector_ingest_batch_statements_count[{RATE}]))",
                "statements",
            )
        ],
    )
    return b


BOARDS = {"fleet.json": fleet, "tenants.json": tenants, "findings.json": findings, "trust.json": trust}


def render() -> dict[str, str]:
    return {name: json.dumps(make().json(), indent=2, sort_keys=True) + "\n" for name, make in BOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
