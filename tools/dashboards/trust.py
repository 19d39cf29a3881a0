"""The Trust health dashboard: is the record complete and intact (refusals, chain breaks, dark nodes, the store)?"""

from __future__ import annotations

from dashboards.board import RATE, TOP, Board, var_query, var_top


def trust() -> Board:
    b = Board(
        "gpuaudit-trust",
        "gpuaudit / Trust health",
        "Is the record complete and intact? Refusals by reason, chain breaks, dark nodes, the store.",
        [var_query("node", "Node", "gpuaudit_node_last_statement_end_timestamp_seconds"), var_top()],
    )
    b.stat("Statements stored", "gpuaudit_collector_statements_stored", "stored")
    b.stat(
        "Dark nodes (> 10 min)",
        "count(time() - gpuaudit_node_last_statement_end_timestamp_seconds > 600) or vector(0)",
        "dark",
    )
    b.stat("Chain breaks (since collector start)", "sum(gpuaudit_collector_chain_breaks_total)", "breaks")
    b.stat("Refused (since collector start)", "sum(gpuaudit_collector_statements_refused_total)", "refused")
    b.stat("Store size", "gpuaudit_collector_store_size_bytes", "size", unit="bytes")
    b.stat("Store collector OK", 'gpuaudit_collector_scrape_collector_success{collector="store"}', "ok")
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
