"""The Fleet dashboard: GPU nodes reporting signed usage statements, and what their GPUs are doing."""

from __future__ import annotations

from dashboards.board import RATE, TOP, Board, findings_annotation, var_query, var_top


def fleet() -> Board:
    b = Board(
        "gpuaudit-fleet",
        "gpuaudit / Fleet",
        "GPU nodes reporting signed usage statements, and what their GPUs are doing.",
        [var_query("node", "Node", "gpuaudit_node_gpus"), var_top()],
        [findings_annotation()],
    )
    b.stat("Nodes reporting", "gpuaudit_collector_nodes_reporting", "reporting")
    b.stat("Nodes known", "gpuaudit_collector_nodes_known", "known")
    b.stat("GPUs reporting", "sum(gpuaudit_node_gpus)", "GPUs")
    b.stat(
        "GPUs busy",
        f"sum(rate(gpuaudit_tenant_gpu_seconds_total[{RATE}]))",
        "busy",
        decimals=1,
        description="GPU-seconds attributed per second: the number of GPUs busy on average.",
    )
    b.stat("GPU power", "sum(gpuaudit_gpu_power_watts)", "power", unit="watt")
    b.stat("Mean GPU utilization", "avg(gpuaudit_gpu_utilization_ratio)", "utilization", unit="percentunit")
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
