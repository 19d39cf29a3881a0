"""``detect``: the detector offline, on a Trace v1 file (``--trace``) or on the dcgm-exporter
history a Prometheus holds (``--prometheus``; collector/prometheus/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attestation.exitcodes import unavailable, usage
from collector.cli.directory import screened, tenants
from collector.cli.findings_text import format_findings
from collector.cli.settings import load, rfc3339_ms


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dt_ = sub.add_parser(
        "detect",
        help="run the detector offline: on a trace, or on the dcgm-exporter history in your Prometheus",
        description="Run the detector offline and print its findings. Either on a Trace v1 file (--trace), "
        "or on a span of the dcgm-exporter series a Prometheus already holds (--prometheus URL --start T --end T): "
        "each host's GPUs become one unsigned usage window per 60 s and go through the same detector as signed "
        'statements. Findings from Prometheus carry "source": "prometheus" and a note that the data is '
        "unsigned and has no process-level attribution; what could not be read (series without a host or UUID "
        "label, metrics not exported, hosts with gaps) is reported on stderr. See README, 'Try it on your history'.",
        epilog="Here: 0 whether there are findings or not, unless --fail-on-findings; 1 findings listed with "
        "--fail-on-findings; 2 a bad trace, time, step, rules file, label map or tenants file; 3 the trace or "
        "another file cannot be read, or Prometheus cannot be (unreachable, credentials or TLS refused, query "
        "error).",
    )
    dt_.add_argument("--config", type=Path, help="collector config (its [detect] table is used)")
    src = dt_.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", type=Path, help="trace v1 file")
    src.add_argument(
        "--prometheus", metavar="URL", help="Prometheus base URL (http:// or https://, with any path prefix)"
    )
    dt_.add_argument("--tenants", type=Path, help="tenants v1 TOML file (KYC facts; required with --prometheus)")
    dt_.add_argument(
        "--screening-list",
        type=Path,
        metavar="PATH",
        help="the Consolidated Screening List (trade.gov consolidated.csv or .json) to screen tenants, parents and "
        "beneficial owners against; overrides screening_list of --config (docs/operator-guide.md, 'Screening list')",
    )
    dt_.add_argument("--json", action="store_true", help="Findings JSON (an array)")
    dt_.add_argument("--window-s", type=int, default=60, help="statement window of --trace (default 60)")
    dt_.add_argument("--fail-on-findings", action="store_true", help="exit 1 when there are findings")
    pg = dt_.add_argument_group("Prometheus history (with --prometheus)")
    pg.add_argument("--start", type=rfc3339_ms, help="start of the span, RFC 3339 (2026-03-01T00:00:00Z)")
    pg.add_argument("--end", type=rfc3339_ms, help="end of the span, RFC 3339")
    pg.add_argument(
        "--step",
        type=float,
        metavar="SECONDS",
        help="query resolution in seconds; must divide 60 (default 30). Each step averages the samples in it; "
        "30 or less gives every window per-step series for the synchrony tests, 60 one point per window",
    )
    pg.add_argument(
        "--tenant-rules",
        type=Path,
        metavar="FILE",
        help="TOML with the agent's [tenants] table (namespaces, slurm_accounts), or an agent config itself",
    )
    pg.add_argument(
        "--slurm-accounts",
        type=Path,
        metavar="FILE",
        help="hpc_job -> account, as `sacct -a -X -n -P -o JobID,Account` prints it (for [tenants.slurm_accounts])",
    )
    pg.add_argument(
        "--label-map",
        action="append",
        metavar="NAME=LABEL",
        help="a label your relabelling renamed: NAME one of host, uuid, gpu, model, pci_bus_id, namespace, pod, "
        "container, hpc_job (e.g. host=instance; repeat or comma-separate)",
    )
    pg.add_argument(
        "--bearer-token-file", type=Path, metavar="FILE", help="send the token in this file as a bearer token"
    )
    pg.add_argument("--basic-auth-user", metavar="USER", help="basic auth user (with --basic-auth-password-file)")
    pg.add_argument("--basic-auth-password-file", type=Path, metavar="FILE", help="basic auth password, from a file")
    pg.add_argument("--ca-file", type=Path, metavar="FILE", help="PEM CA bundle to verify an https:// Prometheus")
    pg.add_argument("--timeout-s", type=float, default=120.0, help="per request (default 120)")
    pg.add_argument(
        "--no-pipeline",
        action="store_true",
        help="read and window every chunk in the detector's own process (by default, with fork and two or more "
        "CPUs, a second process reads and windows the next chunk while the detector runs; the findings are the same)",
    )
    dt_.set_defaults(func=_cmd_detect)


def _cmd_detect(ns: argparse.Namespace) -> int:
    from collector.detect.engine import run_offline
    from core.errors import TraceError, TraceUnreadableError
    from core.pipeline import windows_from_trace

    if ns.prometheus is not None:
        return _cmd_detect_prometheus(ns)
    for flag in ("start", "end", "tenant_rules", "step", "label_map", "slurm_accounts"):
        if getattr(ns, flag) not in (None, []):
            print(f"error: --{flag.replace('_', '-')} is for --prometheus, not --trace", file=sys.stderr)
            return 2
    cfg, dcfg = load(ns)
    try:
        directory = screened(tenants(ns.tenants), cfg)
        findings = run_offline(windows_from_trace(ns.trace, window_s=ns.window_s), dcfg, directory)
    except TraceUnreadableError as exc:
        raise unavailable(f"{exc}: give --trace a trace v1 file (.jsonl or .jsonl.gz)") from exc
    except TraceError as exc:
        raise usage(f"{exc} (trace v1: docs/formats.md)") from exc
    docs = [f.to_json() for f in findings]
    if ns.json:
        print(json.dumps(docs, indent=2))
    else:
        print(format_findings(docs))
    return 1 if (ns.fail_on_findings and docs) else 0


def _cmd_detect_prometheus(ns: argparse.Namespace) -> int:
    """``detect --prometheus URL --start T --end T``: the detector on dcgm-exporter history."""
    from collector.detect.findings import rfc3339_ms
    from collector.prometheus.client import ClientConfig, PrometheusClient, PrometheusError
    from collector.prometheus.rules import load_slurm_accounts, load_tenant_rules
    from collector.prometheus.source import NOTE, PrometheusHistory, Span, detect, wrap_finding
    from collector.prometheus.windows import LabelMap, WindowBuilder

    if ns.start is None or ns.end is None:
        print("error: --prometheus needs --start and --end (RFC 3339 times)", file=sys.stderr)
        return 2
    if ns.end <= ns.start:
        print("error: --end must be after --start", file=sys.stderr)
        return 2
    if ns.tenants is None:
        print("error: --prometheus needs --tenants (the tenants v1 file with the KYC facts)", file=sys.stderr)
        return 2
    step_s = 30.0 if ns.step is None else ns.step
    step_ms = round(step_s * 1000)
    if step_ms <= 0 or 60_000 % step_ms:
        print(f"error: --step {step_s:g}: must divide the 60 s window (e.g. 10, 15, 20, 30, 60)", file=sys.stderr)
        return 2
    cfg, dcfg = load(ns)
    client = PrometheusClient(
        ClientConfig(
            url=ns.prometheus,
            bearer_token_file=ns.bearer_token_file,
            basic_auth_user=ns.basic_auth_user,
            basic_auth_password_file=ns.basic_auth_password_file,
            ca_file=ns.ca_file,
            timeout_s=ns.timeout_s,
        )
    )
    builder = WindowBuilder(
        load_tenant_rules(ns.tenant_rules),
        step_ms=step_ms,
        labels=LabelMap.parse(ns.label_map or []),
        slurm_accounts=load_slurm_accounts(ns.slurm_accounts),
    )
    history = PrometheusHistory(client, builder, Span(ns.start, ns.end, step_ms))
    try:
        findings = detect(history, dcfg, screened(tenants(ns.tenants), cfg), pipeline=not ns.no_pipeline)
    except PrometheusError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 3
    cov = history.coverage
    context = {
        "url": ns.prometheus,
        "start": rfc3339_ms(history.chunks[0].start_ms),
        "end": rfc3339_ms(history.chunks[-1].end_ms),
        "step_s": step_ms / 1000,
        "coverage": {k: v for k, v in cov.to_json().items() if k != "hosts_with_windows_missing"}
        | {"hosts_with_windows_missing": len(cov.to_json()["hosts_with_windows_missing"])},
    }
    docs = [wrap_finding(f.to_json(), context) for f in findings]
    for line in cov.summary_lines():
        print(line, file=sys.stderr)
    if ns.json:
        print(json.dumps(docs, indent=2))
    else:
        print(f"source: prometheus {ns.prometheus} ({NOTE})")
        print(format_findings(docs))
    return 1 if (ns.fail_on_findings and docs) else 0
