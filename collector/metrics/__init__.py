"""The collector's Prometheus metrics, on a registry of its own (no global state).

Conventions (https://prometheus.io/docs/practices/naming/, as dcgm-exporter and
node_exporter follow them): base units in the name (``_seconds``, ``_joules``, ``_bytes``,
``_ratio``, ``_watts``), ``_total`` on every counter, ``_timestamp_seconds`` on Unix times.

Labels are bounded: ``node`` (enrolled nodes), ``gpu`` (GPU UUIDs of those nodes),
``tenant`` (at most ``max_tenants`` distinct values, the rest folded into ``"_other"``),
``reason``, ``kind``, ``severity``, ``level``, ``bound`` and ``collector`` (fixed sets). Never a PID,
a job or workload id, a key id or a sequence number: those belong in the store. The one
exception is ``finding_open``: one series per detector finding whose run goes on (a handful
on a site: each holds at least ``min_gpus`` GPUs), removed once it ends, so that an alert can
name the finding.

Series that alerts take ``increase()`` of are created at 0 before their first event
(refusal reasons, findings by severity, chain breaks per node once the node is known):
``increase()`` cannot see the step from "no series" to 1.

Series, all prefixed ``gpuaudit_``:

=============================================================  =======  ==================
collector_build_info{version,python_version}                   gauge    always 1
collector_statements_accepted_total                            counter  stored now
collector_statements_duplicate_total                           counter  already stored
collector_statements_refused_total{reason}                     counter  never stored
collector_statements_dropped_by_agents_total{reason}           counter  explained gaps
collector_chain_breaks_total{node,reason}                      counter  seq_gap, prev_mismatch,
                                                                        seq_replay, equivocation
collector_statements_stored                                    gauge    in the store
collector_enrollments_total                                    counter
collector_enrollments_refused_total{reason}                    counter
collector_ingest_batch_duration_seconds                        histo    verify until stored
collector_ingest_batch_statements                              histo    envelopes per batch
collector_nodes_reporting                                      gauge    accepted in horizon
collector_nodes_known                                          gauge    ever accepted
collector_store_size_bytes                                     gauge    database files
collector_store_write_failing                                   gauge    1: a commit failed,
                                                                        not yet retried ok
collector_store_write_failures_total{reason}                   counter  failed commits
collector_scrape_collector_success{collector}                  gauge    as node_exporter
collector_scrape_collector_duration_seconds{collector}         gauge
collector_tenant_labels_overflowed_total                       counter  tenants folded
node_last_statement_end_timestamp_seconds{node}                gauge    event time
node_last_statement_received_timestamp_seconds{node}           gauge    wall clock
node_gpus{node}                                                gauge    in latest statement
node_energy_joules_total{node}                                 counter  all GPUs, busy or idle
gpu_utilization_ratio{node,gpu}                                gauge    latest window mean
gpu_power_watts{node,gpu}                                      gauge    latest window mean
tenant_gpu_seconds_total{tenant}                               counter  event time
tenant_energy_joules_total{tenant}                             counter
tenant_flop_estimate_total{tenant,bound}                       counter  bound: low, high
tenant_flop_unavailable_gpu_seconds_total{tenant}              counter  unknown GPU model
unattributed_gpu_seconds_total{node}                           counter  no tenant
findings_raised_total{kind,severity}                           counter  first reaching severity
findings{kind,severity}                                        gauge    recorded, by current
findings_opacity{kind,level}                                   gauge    transparent,
                                                                        partly_opaque, opaque
findings_end_use{kind,level}                                   gauge    none, elevated, high,
                                                                        not_assessed
findings_screening_hit{kind}                                   gauge    a material member's
                                                                        name is on the list
finding_open{finding_id,kind,severity,tenant_pseudonym}        gauge    1 while its run goes
                                                                        on (detector findings)
screening_list_date_timestamp_seconds                          gauge    the list's date (only
                                                                        with screening_list)
screening_list_entries                                         gauge    (only with
                                                                        screening_list)
=============================================================  =======  ==================

``level`` is the finding's level on each axis (its material members' highest; the finding's
``evidence.levels``, collector/detect/build.py): a fixed set, as ``severity``.

``kind`` of the findings series: the detector's ``large_training`` and the integrity
findings ingest raises (``equivocation``, ``rollback``, ``unexplained_reboot``,
``energy_reset``; collector/integrity.py, always severity ``high``), counted as the store
records them (``Ingestor(on_finding=CollectorMetrics.observe_integrity_finding)``).

``finding_open`` (``observe_finding_open``): a detector finding is open while the detector
keeps updating it. A run that goes on is updated at least once every history span of event
time (collector/detect/runs.py, ``history_span_ms``; 33 minutes at 60 s windows), later by
at most a pause of ``run_gap_s`` and the windows' ``allowed_lateness_s``; a finding not
updated for that long, counted in event time (the newest window end accepted), has ended and
its series is removed, as is one another finding supersedes (``evidence.supersedes``). While
no statement arrives at all, event time stands still and open findings stay open
(GpuauditNodeDark says why). ``tenant_pseudonym`` is the finding's tenant as the signed
statements name it when that is a pseudonym (``tp-``, collector/pseudonyms.py); a site whose
agents name tenants by their own ids gets ``not_pseudonymised`` instead, never the id.

The package, by concern: ``labels`` (the bounded label values, buckets), ``exporter``
(``CollectorMetrics``: the registry, the ingest, enrollment and store families), ``usage``
(the node, GPU and tenant series of every accepted statement), ``findings`` (the findings
series and open findings), ``scrape`` (what is read at scrape time: nodes reporting, open
findings, the store's files, the screening list).
"""

from __future__ import annotations

from collector.metrics.exporter import CollectorMetrics
from collector.metrics.labels import (
    AGENT_DROP_REASONS,
    BATCH_SECONDS_BUCKETS,
    BATCH_SIZE_BUCKETS,
    CHAIN_BREAK_REASONS,
    END_USE_LEVELS,
    ENROLL_REFUSAL_REASONS,
    NOT_PSEUDONYMISED,
    OPACITY_LEVELS,
    OTHER_TENANTS,
    REFUSAL_REASONS,
)
from collector.metrics.scrape import store_paths

__all__ = [
    "AGENT_DROP_REASONS",
    "BATCH_SECONDS_BUCKETS",
    "BATCH_SIZE_BUCKETS",
    "CHAIN_BREAK_REASONS",
    "END_USE_LEVELS",
    "ENROLL_REFUSAL_REASONS",
    "NOT_PSEUDONYMISED",
    "OPACITY_LEVELS",
    "OTHER_TENANTS",
    "REFUSAL_REASONS",
    "CollectorMetrics",
    "store_paths",
]
