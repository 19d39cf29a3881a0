"""The Agents dashboard: the node agents' own health, beside the collector's view of the same nodes."""

from __future__ import annotations

from dashboards.board import RATE, Board, var_query

AGENT_JOB = 'job="gpuaudit-agent"'


def agents() -> Board:
    """The agents' own health, from their /metrics (agent/metrics.py), beside the collector's
    view of the same nodes (statement lag, dropped statements), which also covers agents that
    Prometheus cannot scrape. Agents are told apart by ``instance``; the example scrape
    configs in deploy/prometheus set it to the node's name."""
    b = Board(
        "gpuaudit-agents",
        "gpuaudit / Agents",
        "Are the node agents up, reading their GPUs, signing, and getting their statements acknowledged? "
        "From each agent's own /metrics (Prometheus job gpuaudit-agent).",
        [var_query("instance", "Agent", "gpuaudit_agent_build_info")],
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
    b.stat(
        "Agents up",
        f"count(up{{{AGENT_JOB}}} == 1) or vector(0)",
        "up",
        description="Agents Prometheus scraped at its last attempt (job gpuaudit-agent).",
    )
    b.stat(
        "Agents down",
        f"count(up{{{AGENT_JOB}}} == 0) or vector(0)",
        "down",
        description="Agents Prometheus failed to scrape at its last attempt. GpuauditAgentDown after 10 minutes.",
    )
    b.stat(
        "Agents not signing (15 min)",
        "count(increase(gpuaudit_agent_statements_signed_total[15m]) == 0) or vector(0)",
        "not signing",
        description="Agents up but without a signed statement in 15 minutes (one is due every window_s).",
    )
    b.stat(
        "Streams stopped by a refusal",
        "count(sum by (instance, job) (gpuaudit_agent_rejects_total) > 0) or vector(0)",
        "stopped",
        description="Agents whose stream the collector stopped by refusing a statement; they sign on into "
        "their spool until restarted.",
    )
    b.stat(
        "Statements waiting in spools",
        "sum(gpuaudit_agent_spool_statements) or vector(0)",
        "waiting",
        description="Signed statements of all agents not yet acknowledged by the collector.",
    )
    b.stat(
        "GPUs the agents cannot read",
        f"sum({gpus_unread}) or vector(0)",
        "GPUs",
        decimals=1,
        description='Whole GPUs NVML could not read (field="gpu"), per sample, summed over the agents.',
    )
    b.stat(
        "Oldest statement waiting",
        f"max({waiting})",
        "oldest",
        unit="s",
        no_value="none waiting",
        description="How long ago the oldest statement still in any agent's spool (signed, not acknowledged) "
        "ended. GpuauditAgentSpoolBacklog over 10 minutes for 15 minutes.",
    )
    b.stat(
        "Statements dropped by agents (dashboard range)",
        f"sum(increase(gpuaudit_agent_statements_dropped_total{sel}[$__range]))",
        "dropped",
        decimals=0,
        description="Signed statements the agents dropped unsent at a spool bound, as the agents count them "
        "(the collector counts them only once the signed record of the drop reaches it).",
    )
    b.stat(
        "Wall-clock jumps (dashboard range)",
        f"sum(increase(gpuaudit_agent_clock_jumps_total{sel}[$__range]))",
        "jumps",
        decimals=0,
        description="Steps of the nodes' wall clocks the agents saw, back or forward by more than the agent's "
        "tolerance (2 s, or twice sample_interval_s). GpuauditAgentClockJump on any.",
    )
    b.stat(
        "Signing key rotations (dashboard range)",
        f"sum(changes(gpuaudit_agent_key_epoch{sel}[$__range]))",
        "rotations",
        decimals=0,
        description="Hand-overs to a new signing key (the key's epoch goes up by one each), scheduled by "
        "key_rotation_days or asked for with gpuaudit-agent rotate-key.",
    )
    b.stat(
        "Oldest signing key",
        f"max({key_age})",
        "age",
        unit="s",
        description="How long the longest-serving current signing key has signed (from its first window). "
        "Compare with key_rotation_days.",
    )
    b.stat(
        "Keys overdue for rotation",
        f"count(({key_age}) > on (instance, job) (gpuaudit_agent_key_rotation_period_seconds + 3600)) or vector(0)",
        "overdue",
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
