"""The Tenant usage dashboard: GPU-hours, energy and estimated FLOP by tenant (event time)."""

from __future__ import annotations

from dashboards.board import RATE, TOP, Board, findings_annotation, var_query, var_top


def tenants() -> Board:
    b = Board(
        "gpuaudit-tenants",
        "gpuaudit / Tenant usage",
        "GPU-hours, energy and estimated FLOP by tenant, from signed statements (event time).",
        [var_query("tenant", "Tenant", "gpuaudit_tenant_gpu_seconds_total"), var_top()],
        [findings_annotation()],
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
    b.stat(
        "Unattributed share of GPU time (30 min)",
        "gpuaudit:unattributed_gpu_ratio:rate30m",
        "share",
        unit="percentunit",
        w=6,
    )
    b.stat(
        "GPU-hours without a FLOP estimate (dashboard range)",
        "sum(increase(gpuaudit_tenant_flop_unavailable_gpu_seconds_total[$__range])) / 3600 or vector(0)",
        "GPU-h",
        w=6,
        description="GPU models of unknown peak throughput, or no activity reading: not guessed, not counted.",
    )
    return b
