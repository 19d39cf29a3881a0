"""The Findings dashboard: the detector's findings by severity and axis, the open ones, the alerts."""

from __future__ import annotations

from dashboards.board import Board, findings_annotation, var_query


def findings() -> Board:
    b = Board(
        "gpuaudit-findings",
        "gpuaudit / Findings",
        "Large training runs and other findings of the collector's detector. Details: "
        "`gpuaudit-collector findings --json`.",
        [var_query("kind", "Kind", "gpuaudit_findings")],
        [findings_annotation('{kind=~"$kind"}')],
    )
    b.stat(
        "High and critical large-training findings",
        'sum(gpuaudit_findings{kind="large_training",severity=~"high|critical"})',
        "findings",
        w=6,
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
    b.stat(
        "Large-training findings with a screening-list hit",
        'sum(gpuaudit_findings_screening_hit{kind="large_training"})',
        "findings",
        w=6,
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
