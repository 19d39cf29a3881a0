"""What every gpuaudit dashboard is made of: the ``datasource`` variable and the links by tag
(:class:`Board`), the shape of a panel (:meth:`Board.panel`, the one place it is decided),
the query variables and the open-findings annotation.

Stat, table and bar-gauge panels query an instant, time series a range; the SDK lays panels
out left to right in rows of 24 columns. Dashboards link to each other by their ``gpuaudit``
tag, which Grafana resolves to URLs itself, so the links work when Grafana is served under a
sub-path.
"""

from __future__ import annotations

import json
from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "gpuaudit"
# How many series a per-node panel shows: sites have thousands of nodes and GPUs.
TOP = "$top"
# The range of rate() in panels: Grafana's, long enough for the scrape interval at any step.
RATE = "$__rate_interval"

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


def var_query(name: str, label: str, metric: str) -> dashboard.QueryVariable:
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


def var_top() -> dashboard.CustomVariable:
    return (
        dashboard.CustomVariable("top")
        .label("Top")
        .values("10,25,100")
        .current(model.VariableOption(selected=True, text="10", value="10"))
    )


def findings_annotation(selector: str = "") -> _Built[model.AnnotationQuery]:
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


class Board:
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

    def stat(
        self,
        title: str,
        expr: str,
        legend: str,
        *,
        unit: str = "short",
        w: int = 4,
        h: int = 4,
        description: str = "",
        decimals: int | None = None,
        no_value: str | None = None,
    ) -> None:
        """A stat panel of one query: the row of small numbers at the top of a dashboard."""
        self.panel(
            "stat",
            title,
            [(expr, legend)],
            unit=unit,
            w=w,
            h=h,
            description=description,
            decimals=decimals,
            no_value=no_value,
        )

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
