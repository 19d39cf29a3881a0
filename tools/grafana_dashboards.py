"""Generate deploy/grafana/*.json: the gpuaudit Grafana dashboards.

Run ``python tools/grafana_dashboards.py`` after changing a panel; a test checks that the
committed JSON is what this script writes, and a real Prometheus runs every panel's and
annotation's query (tests/integration/test_prometheus_dashboards.py). Dashboards use a
``datasource`` variable (any Prometheus that scrapes the collector and loads
deploy/prometheus/rules.yml); the Agents dashboard also needs the agents scraped as job
``gpuaudit-agent`` (deploy/prometheus/prometheus.yml).

The dashboards are built with Grafana's Foundation SDK (``grafana-foundation-sdk``, generated
from Grafana's own schemas; pinned in pyproject.toml's dev extra, since another version may
write other JSON). ``_Board.panel`` is the one place a panel's shape is decided: stat, table and
bar-gauge panels query an instant, time series a range; the SDK lays panels out left to right
in rows of 24 columns. Dashboards link to each other by their ``gpuaudit`` tag, which Grafana
resolves to URLs itself, so the links work when Grafana is served under a sub-path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "gpuaudit"
# How many series a per-node panel shows: sites have thousands of nodes and GPUs.
TOP = "$top"

_T = TypeVar("_T")
_PanelBuilder = stat.Panel | timeseries.Panel | table.Panel | bargauge.Panel
_PANELS: dict[str, type[_PanelBuilder]] = {
    "stat": stat.Panel,
    "timeseries": timeseries.Panel,
    "table": table.Panel,
    "bargauge": bargauge.Panel,
}
_INSTANT = ("stat", "table", "bargauge")


class _Built(cogbuilder.Builder[_T]):
    """A model the SDK has no builder for, handed to a builder that takes one."""

    def __init__(self, value: _T) -> None:
        self._value = value

    def build(self) -> _T:
        return self._value


class _PrometheusAnnotation(model.AnnotationQuery):
    """An annotation from a Prometheus query: one region per series, for as long as it is
    present. Grafana's Prometheus data source reads titleFormat, textFormat, tagKeys and step
    beside the fields of the dashboard schema, which the SDK's model does not carry."""

    def __init__(self, name: str, expr: str, *, title: str, text: str, tag_keys: str, color: str) -> None:
        super().__init__(name=name, datasource=DS, enable=True, hide=False, icon_color=color, expr=expr)
        self.title_format = title
        self.text_format = text
        self.tag_keys = tag_keys

    def to_json(self) -> dict[str, object]:
        return super().to_json() | {
            "titleFormat": self.title_format,
            "textFormat": self.text_format,
            "tagKeys": self.tag_keys,
            "step": "1m",
            "useValueForTime": False,
        }


def _var_query(name: str, label: str, metric: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query({"query": f"label_values({metric}, {name})", "refId": f"{name}-values"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def _var_top() -> dashboard.CustomVariable:
    return (
        dashboard.CustomVariable("top")
        .label("Top")
        .values("10,25,100")
        .current(model.VariableOption(selected=True, text="10", value="10"))
    )


def _findings_annotation(selector: str = "") -> _Built[model.AnnotationQuery]:
    """Each open detector finding as a region over the dashboard's graphs (gpuaudit_finding_open)."""
    return _Built(
        _PrometheusAnnotation(
            "Open findings",
            f"max by (finding_id, kind, severity, tenant_pseudonym) (gpuaudit_finding_open{selector})",
            title="Finding {{finding_id}} ({{severity}})",
            text="{{kind}}, tenant {{tenant_pseudonym}}",
            tag_keys="kind,severity,tenant_pseudonym",
            color="red",
        )
    )


class _Board:
    def __init__(
        self,
        uid: str,
        title: str,
        description: str,
        variables: list[cogbuilder.Builder[model.VariableModel]],
        annotations: list[cogbuilder.Builder[model.AnnotationQuery]] | None = None,
    ) -> None:
        self.uid = uid
        self._board = (
            dashboard.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .timezone("utc")
            .version(1)
            .editable()
            .refresh("1m")
            .time("now-6h", "now")
            .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
            # The other gpuaudit dashboards, found by tag: Grafana builds their URLs (a fixed
            # "/d/uid" would miss a sub-path such as /grafana/).
            .link(
                dashboard.DashboardLink("gpuaudit")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(False)
                .keep_time(True)
                .include_vars(False)
                .target_blank(False)
            )
        )
        for v in variables:
            self._board.with_variable(v)
        for a in annotations or ():
            self._board.annotation(a)
        self._panels = 0

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
        no_value: str | None = None,
    ) -> None:
        self._panels += 1
        is_instant = instant or kind in _INSTANT
        p = _PANELS[kind]().id(self._panels).title(title).description(description).datasource(DS).unit(unit)
        p.span(w).height(h)
        if decimals is not None:
            p.decimals(decimals)
        if no_value is not None:  # what an empty result means, said in words rather than as a 0
            p.no_value(no_value)
        for i, (expr, legend) in enumerate(targets):
            q = prometheus.Dataquery().ref_id(chr(ord("A") + i)).datasource(DS).expr(expr).legend_format(legend)
            p.with_target(q.instant() if is_instant else q.range())
        if kind == "table":
            p.with_transformation(model.DataTransformerConfig(id_val="labelsToFields", options={}))
        self._board.with_panel(p)

    def open_findings_table(self) -> None:
        """The open detector findings, one row each (gpuaudit_finding_open), as the alert names them."""
        self._panels += 1
        q = (
            prometheus.Dataquery()
            .ref_id("A")
            .datasource(DS)
            .expr('max by (finding_id, kind, severity, tenant_pseudonym) (gpuaudit_finding_open{kind=~"$kind"})')
            .legend_format("{{finding_id}}")
            .format(PromQueryFormat.TABLE)
            .instant()
        )
        organize = {
            "excludeByName": {"Time": True, "Value": True},
            "indexByName": {"finding_id": 0, "severity": 1, "kind": 2, "tenant_pseudonym": 3},
            "renameByName": {
                "finding_id": "Finding",
                "severity": "Severity",
                "kind": "Kind",
                "tenant_pseudonym": "Tenant",
            },
        }
        self._board.with_panel(
            table.Panel()
            .id(self._panels)
            .title("Open findings (runs going on)")
            .description(
                "One row per detector finding whose run goes on; the row goes when the run ends. Each open "
                "high or critical large_training finding is also a GpuauditLargeTrainingByOpaqueTenant alert "
                "and a region on the graphs (the Open findings annotation). Details: `gpuaudit-collector "
                "findings --json`, `gpuaudit-collector report FINDING_ID --out FILE.html`."
            )
            .datasource(DS)
            .span(24)
            .height(6)
            .no_value("no open finding")
            .with_target(q)
            .with_transformation(model.DataTransformerConfig(id_val="organize", options=organize))
        )

    def json(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(JSONEncoder().encode(self._board.build()))
        return doc


RATE = "$__rate_interval"


def fleet() -> _Board:
    b = _Board(
        "gpuaudit-fleet",
        "gpuaudit / Fleet",
        "GPU nodes reporting signed usage statements, and what their GPUs are doing.",
        [_var_query("node", "Node", "gpuaudit_node_gpus"), _var_top()],
        [_findings_annotation()],
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
        f"GPU utilization by node (top {TOP})",
        [(f'topk({TOP}, avg by (node) (gpuaudit_gpu_utilization_ratio{{node=~"$node"}}))', "{{node}}")],
        unit="percentunit",
    )
    b.panel(
        "timeseries",
        f"GPU power by node (top {TOP})",
        [(f'topk({TOP}, sum by (node) (gpuaudit_gpu_power_watts{{node=~"$node"}}))', "{{node}}")],
        unit="watt",
    )
    b.panel(
        "timeseries",
        f"Energy by node (power from the energy counters, top {TOP})",
        [
            (
                f'topk({TOP}, sum by (node) (rate(gpuaudit_node_energy_joules_total{{node=~"$node"}}[{RATE}])))',
                "{{node}}",
            )
        ],
        unit="watt",
    )
    b.panel(
        "table",
        f"GPUs (latest window, top {TOP})",
        [(f'topk({TOP}, gpuaudit_gpu_utilization_ratio{{node=~"$node"}})', "{{node}} {{gpu}}")],
        unit="percentunit",
        description="Mean utilization of each GPU in its latest signed window, the busiest first; narrow it "
        "with the Node variable.",
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
        [_var_query("tenant", "Tenant", "gpuaudit_tenant_gpu_seconds_total"), _var_top()],
        [_findings_annotation()],
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
        f"Unattributed GPUs by node (top {TOP})",
        [(f"topk({TOP}, sum by (node) (rate(gpuaudit_unattributed_gpu_seconds_total[{RATE}])))", "{{node}}")],
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
        [_findings_annotation('{kind=~"$kind"}')],
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
    # The two axes of severity (docs/detection.md, "Subjects and severity").
    b.panel(
        "stat",
        "Large-training findings with a screening-list hit",
        [('sum(gpuaudit_findings_screening_hit{kind="large_training"})', "findings")],
        w=6,
        h=4,
        description="A material member's name (tenant, parent, beneficial owner) matched the Consolidated Screening "
        "List: a reason to look, not a verdict. Details: the finding's end_use_risk.screening.",
    )
    b.panel(
        "bargauge",
        "Findings by end-use risk (who the tenant is)",
        [('sum by (level) (gpuaudit_findings_end_use{kind=~"$kind"})', "{{level}}")],
        w=9,
        h=4,
        description="Countries of concern (D:5, Macau, Hong Kong), screening hits, declared use contradicted; the "
        "highest level among each finding's material members.",
    )
    b.panel(
        "bargauge",
        "Findings by opacity (how little is known)",
        [('sum by (level) (gpuaudit_findings_opacity{kind=~"$kind"})', "{{level}}")],
        w=9,
        h=4,
        description="The highest opacity among each finding's material members.",
    )
    b.open_findings_table()
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
        [_var_query("node", "Node", "gpuaudit_node_last_statement_end_timestamp_seconds"), _var_top()],
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
        f"Chain gaps and forks by node (top {TOP})",
        [
            (
                f'topk({TOP}, sum by (node, reason) (gpuaudit_collector_chain_breaks_total{{node=~"$node"}}) > 0)',
                "{{node}} {{reason}}",
            )
        ],
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
        f"Statement lag by node (event time, top {TOP})",
        [
            (
                f"sort_desc(topk({TOP}, time() - max by (node) "
                '(gpuaudit_node_last_statement_end_timestamp_seconds{node=~"$node"})))',
                "{{node}}",
            )
        ],
        unit="s",
        description="How long ago the node's latest signed window ended. Over 10 minutes: the node is dark.",
    )
    b.panel(
        "table",
        f"Last statement received by node (wall clock, top {TOP})",
        [
            (
                f"sort_desc(topk({TOP}, time() - max by (node) "
                '(gpuaudit_node_last_statement_received_timestamp_seconds{node=~"$node"})))',
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


AGENT_JOB = 'job="gpuaudit-agent"'


def agents() -> _Board:
    """The agents' own health, from their /metrics (agent/metrics.py), beside the collector's
    view of the same nodes (statement lag, dropped statements), which also covers agents that
    Prometheus cannot scrape. Agents are told apart by ``instance``; the example scrape
    configs in deploy/prometheus set it to the node's name."""
    b = _Board(
        "gpuaudit-agents",
        "gpuaudit / Agents",
        "Are the node agents up, reading their GPUs, signing, and getting their statements acknowledged? "
        "From each agent's own /metrics (Prometheus job gpuaudit-agent).",
        [_var_query("instance", "Agent", "gpuaudit_agent_build_info")],
    )
    sel = '{instance=~"$instance"}'
    # Read time per sample x samples per second: the share of the sampling loop spent reading
    # the GPUs and attributing their processes. Near 1 the loop cannot keep sample_interval_s.
    duty = (
        f"sum by (instance, job) (gpuaudit_agent_source_scrape_duration_seconds{sel}) "
        f"* on (instance, job) rate(gpuaudit_agent_samples_total{sel}[{RATE}])"
    )
    # How long ago the oldest statement in each spool ended (absent while a spool is empty).
    waiting = f"time() - gpuaudit_agent_spool_oldest_window_end_timestamp_seconds{sel}"
    key_age = f"time() - gpuaudit_agent_key_first_window_timestamp_seconds{sel}"
    # Whole GPUs NVML could not read (lost, fallen off the bus), per sample.
    gpus_unread = (
        f'sum by (instance, job) (rate(gpuaudit_agent_readings_unavailable_total{{field="gpu",instance=~"$instance"}}'
        f"[{RATE}])) / on (instance, job) rate(gpuaudit_agent_samples_total{sel}[{RATE}])"
    )
    b.panel(
        "stat",
        "Agents up",
        [(f"count(up{{{AGENT_JOB}}} == 1) or vector(0)", "up")],
        w=4,
        h=4,
        description="Agents Prometheus scraped at its last attempt (job gpuaudit-agent).",
    )
    b.panel(
        "stat",
        "Agents down",
        [(f"count(up{{{AGENT_JOB}}} == 0) or vector(0)", "down")],
        w=4,
        h=4,
        description="Agents Prometheus failed to scrape at its last attempt. GpuauditAgentDown after 10 minutes.",
    )
    b.panel(
        "stat",
        "Agents not signing (15 min)",
        [("count(increase(gpuaudit_agent_statements_signed_total[15m]) == 0) or vector(0)", "not signing")],
        w=4,
        h=4,
        description="Agents up but without a signed statement in 15 minutes (one is due every window_s).",
    )
    b.panel(
        "stat",
        "Streams stopped by a refusal",
        [("count(sum by (instance, job) (gpuaudit_agent_rejects_total) > 0) or vector(0)", "stopped")],
        w=4,
        h=4,
        description="Agents whose stream the collector stopped by refusing a statement; they sign on into "
        "their spool until restarted.",
    )
    b.panel(
        "stat",
        "Statements waiting in spools",
        [("sum(gpuaudit_agent_spool_statements) or vector(0)", "waiting")],
        w=4,
        h=4,
        description="Signed statements of all agents not yet acknowledged by the collector.",
    )
    b.panel(
        "stat",
        "GPUs the agents cannot read",
        [(f"sum({gpus_unread}) or vector(0)", "GPUs")],
        w=4,
        h=4,
        decimals=1,
        description='Whole GPUs NVML could not read (field="gpu"), per sample, summed over the agents.',
    )
    b.panel(
        "stat",
        "Oldest statement waiting",
        [(f"max({waiting})", "oldest")],
        unit="s",
        w=4,
        h=4,
        no_value="none waiting",
        description="How long ago the oldest statement still in any agent's spool (signed, not acknowledged) "
        "ended. GpuauditAgentSpoolBacklog over 10 minutes for 15 minutes.",
    )
    b.panel(
        "stat",
        "Statements dropped by agents (dashboard range)",
        [(f"sum(increase(gpuaudit_agent_statements_dropped_total{sel}[$__range]))", "dropped")],
        w=4,
        h=4,
        decimals=0,
        description="Signed statements the agents dropped unsent at a spool bound, as the agents count them "
        "(the collector counts them only once the signed record of the drop reaches it).",
    )
    b.panel(
        "stat",
        "Wall-clock jumps (dashboard range)",
        [(f"sum(increase(gpuaudit_agent_clock_jumps_total{sel}[$__range]))", "jumps")],
        w=4,
        h=4,
        decimals=0,
        description="Steps of the nodes' wall clocks the agents saw, back or forward by more than the agent's "
        "tolerance (2 s, or twice sample_interval_s). GpuauditAgentClockJump on any.",
    )
    b.panel(
        "stat",
        "Signing key rotations (dashboard range)",
        [(f"sum(changes(gpuaudit_agent_key_epoch{sel}[$__range]))", "rotations")],
        w=4,
        h=4,
        decimals=0,
        description="Hand-overs to a new signing key (the key's epoch goes up by one each), scheduled by "
        "key_rotation_days or asked for with gpuaudit-agent rotate-key.",
    )
    b.panel(
        "stat",
        "Oldest signing key",
        [(f"max({key_age})", "age")],
        unit="s",
        w=4,
        h=4,
        description="How long the longest-serving current signing key has signed (from its first window). "
        "Compare with key_rotation_days.",
    )
    b.panel(
        "stat",
        "Keys overdue for rotation",
        [
            (
                f"count(({key_age}) > on (instance, job) (gpuaudit_agent_key_rotation_period_seconds + 3600)) "
                "or vector(0)",
                "overdue",
            )
        ],
        w=4,
        h=4,
        description="Agents whose key has signed for over its rotation period plus an hour: the scheduled "
        "rotation failed. GpuauditAgentKeyNotRotated after 15 minutes more.",
    )
    b.panel(
        "timeseries",
        "Statements signed and acknowledged (all agents)",
        [
            (f"sum(rate(gpuaudit_agent_statements_signed_total{sel}[{RATE}]))", "signed"),
            (f"sum(rate(gpuaudit_agent_acks_total{sel}[{RATE}]))", "acknowledged"),
            (f"sum(rate(gpuaudit_agent_duplicate_acks_total{sel}[{RATE}]))", "acknowledged as already stored"),
        ],
        unit="ops",
        description="Acknowledged below signed for long: spools are filling. Duplicates follow a cut "
        "(statements resent that the collector already had).",
    )
    b.panel(
        "timeseries",
        "Spool depth (top 10 agents)",
        [(f"topk(10, gpuaudit_agent_spool_statements{sel})", "{{instance}}")],
        description="Signed statements not yet acknowledged, one per window (window_s, 60 s by default). "
        "How long they have waited is on the next panels.",
    )
    b.panel(
        "timeseries",
        "Spool size (top 10 agents)",
        [(f"topk(10, gpuaudit_agent_spool_bytes{sel})", "{{instance}}")],
        unit="bytes",
        description="Bytes of the statements waiting; at spool_max_bytes (256 MiB by default) the agent drops "
        "the newest unacknowledged ones and signs a record of it.",
    )
    b.panel(
        "timeseries",
        "Oldest statement waiting, agents' view (top 10)",
        [(f"topk(10, {waiting})", "{{instance}}")],
        unit="s",
        description="How long ago the oldest statement in the agent's spool (signed, not acknowledged) ended; "
        "no line while the spool is empty, as a healthy agent's is within milliseconds of each window. "
        "GpuauditAgentSpoolBacklog over 10 minutes for 15 minutes; spool_max_age_s (a week by default) drops "
        "them all.",
    )
    b.panel(
        "timeseries",
        "Statement lag by node, collector's view (top 10)",
        [("topk(10, gpuaudit:node_statement_lag_seconds)", "{{node}}")],
        unit="s",
        description="How long ago the node's latest statement the collector holds ended. Agents send in chain "
        "order, so this is the age of the oldest statement still in the node's spool plus one window, or how "
        "long the node has signed nothing. Covers nodes whose agent Prometheus cannot scrape.",
    )
    b.panel(
        "timeseries",
        "Stream reconnects (top 10 agents)",
        [(f"topk(10, rate(gpuaudit_agent_stream_reconnects_total{sel}[{RATE}]))", "{{instance}}")],
        unit="ops",
        description="Stream failures retried (with backoff): network cuts, collector restarts, rate limits.",
    )
    b.panel(
        "table",
        "Statements refused by the collector (agents' view)",
        [(f"sum by (instance, reason) (gpuaudit_agent_rejects_total{sel})", "{{instance}} {{reason}}")],
        description="Since the agent's start. A refusal stops the agent's stream until it is restarted; the "
        "collector's refusals by reason are on the Trust health dashboard.",
    )
    b.panel(
        "timeseries",
        "Sampling: share of the sample interval spent reading (top 10)",
        [(f"topk(10, {duty})", "{{instance}}")],
        unit="percentunit",
        description="Seconds reading the GPUs and attributing their processes per sample, times samples per "
        "second. Near 100% the loop overruns sample_interval_s and windows get fewer samples. "
        "GpuauditAgentSamplingOverrun above 80% for 15 minutes.",
    )
    b.panel(
        "timeseries",
        "Source read duration (slowest agent, mean)",
        [
            (f"max by (source) (gpuaudit_agent_source_scrape_duration_seconds{sel})", "{{source}} slowest"),
            (f"avg by (source) (gpuaudit_agent_source_scrape_duration_seconds{sel})", "{{source}} mean"),
        ],
        unit="s",
        description="gpu: one NVML (or simulated) sample of every GPU; attribution: host /proc and the kubelet.",
    )
    b.panel(
        "timeseries",
        "Samples per second (slowest 10 agents)",
        [(f"bottomk(10, rate(gpuaudit_agent_samples_total{sel}[{RATE}]))", "{{instance}}")],
        unit="ops",
        description="1 / sample_interval_s when healthy. Lower: reads take longer than the interval. Zero: "
        "the sampling loop is stuck (a hung NVML call).",
    )
    b.panel(
        "bargauge",
        "Agent restarts (dashboard range, top 10)",
        [(f"topk(10, resets(gpuaudit_agent_samples_total{sel}[$__range]))", "{{instance}}")],
        description="Times the agent's sample counter started again from 0. GpuauditAgentRestarting at 3 in an hour.",
    )
    b.panel(
        "timeseries",
        "Readings unavailable, by field and reason",
        [
            (
                f"sum by (field, reason) (rate(gpuaudit_agent_readings_unavailable_total{sel}[{RATE}]))",
                "{{field}} {{reason}}",
            )
        ],
        unit="ops",
        description="Counted per GPU and sample. A field a GPU model does not support "
        "(NVML_ERROR_NOT_SUPPORTED) is counted steadily on every node with that model; a new field or "
        'reason, or field="gpu" (a whole GPU not read), is news.',
    )
    b.panel(
        "table",
        "Agents with GPUs they cannot read",
        [(f"{gpus_unread} > 0", "{{instance}}")],
        decimals=1,
        description='GPUs NVML could not read at all (field="gpu"), per sample. Their use is recorded as '
        "unavailable in the statements, never guessed. GpuauditAgentGpuUnreadable after 10 minutes.",
    )
    b.panel(
        "table",
        "Agents that dropped statements unsent (dashboard range)",
        [
            (
                f"sum by (instance, reason) (increase(gpuaudit_agent_statements_dropped_total{sel}[$__range])) > 0",
                "{{instance}} {{reason}}",
            )
        ],
        decimals=0,
        description="Counted by each agent as it drops: spool_size (spool_max_bytes) or spool_age "
        "(spool_max_age_s). GpuauditAgentSpoolBoundReached.",
    )
    b.panel(
        "bargauge",
        "Statements dropped unsent by agents, collector's count (dashboard range)",
        [
            (
                "sum by (reason) (increase(gpuaudit_collector_statements_dropped_by_agents_total[$__range]))",
                "{{reason}}",
            )
        ],
        description="Counted by the collector from the agents' signed drop records, when they arrive: "
        "spool_size (spool_max_bytes) or spool_age (spool_max_age_s). Those windows of GPU use are lost for good.",
    )
    b.panel(
        "table",
        "Agents whose wall clock jumped (dashboard range)",
        [
            (
                f"sum by (instance, direction) (increase(gpuaudit_agent_clock_jumps_total{sel}[$__range])) > 0",
                "{{instance}} {{direction}}",
            )
        ],
        decimals=0,
        description="Back: samples were not used until the clock passed the last one used (real time lost). "
        "Forward: the windows skipped were never lived through. Each step is explained in the next signed "
        "statement (a clock_jump event). GpuauditAgentClockJump.",
    )
    b.panel(
        "timeseries",
        "Signing key age (top 10 agents)",
        [
            (f"topk(10, {key_age})", "{{instance}}"),
            (f"max(gpuaudit_agent_key_rotation_period_seconds{sel})", "rotation period"),
        ],
        unit="s",
        description="How long each agent's current key has signed, counted from its first window; it falls "
        "back to 0 at each rotation (key_rotation_days, 90 by default). No rotation period line: keys "
        "rotate only on request.",
    )
    b.panel(
        "table",
        "Next scheduled key rotation by agent",
        [
            (
                f"sort(gpuaudit_agent_key_first_window_timestamp_seconds{sel} "
                "+ on (instance, job) gpuaudit_agent_key_rotation_period_seconds - time())",
                "{{instance}}",
            )
        ],
        unit="s",
        description="Time until each agent's key has signed for key_rotation_days; it hands over at the next "
        "window then. Below zero: overdue. Agents without a schedule are not listed.",
    )
    b.panel(
        "table",
        "Signing key epoch by agent",
        [(f"sort_desc(gpuaudit_agent_key_epoch{sel})", "{{instance}}")],
        decimals=0,
        description="0 for the key enrolled with a join token, one more for each rotation since.",
    )
    b.panel(
        "timeseries",
        "GPU power, live (top 10 agents)",
        [(f"topk(10, sum by (instance) (gpuaudit_agent_gpu_power_watts{sel}))", "{{instance}}")],
        unit="watt",
        description="The agents' latest samples, before windowing and signing (the Fleet dashboard shows the "
        "signed windows).",
    )
    b.panel(
        "table",
        "Agent versions",
        [("count by (version, python_version) (gpuaudit_agent_build_info)", "{{version}}")],
        description="Upgrade the collector before the agents (docs/operator-guide.md, Upgrades).",
    )
    return b


BOARDS = {
    "fleet.json": fleet,
    "tenants.json": tenants,
    "findings.json": findings,
    "trust.json": trust,
    "agents.json": agents,
}


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
