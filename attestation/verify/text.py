"""The verifier's report for a person (gpuaudit-verify without ``--json``): a summary per
tenant and per GPU serial, the least covered first, with gaps described in words; with
``details``, every serial's usage and gaps, every node, every failure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from attestation.coverage import Coverage
from attestation.verify.report import TRUST_PINNED, Report

SUMMARY_ROWS = 20  # serials and failures listed without --details


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(ms: int) -> str:
    s = ms // 1000
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _clock(ms: int, period: tuple[int, int] | None) -> str:
    """A time short enough for a summary line: HH:MM within a period of at most a day."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if period is not None and period[1] - period[0] <= 86_400_000:
        return t.strftime("%H:%M")
    return t.strftime("%Y-%m-%d %H:%M")


def describe_gaps(cov: Coverage, period: tuple[int, int] | None, limit: int | None = 3) -> str:
    """``dark 02:10–02:40 (30m00s, silent); nothing after 05:30 (proven)`` for a coverage."""
    parts: list[str] = []
    for g in cov.gaps:
        proven = "" if g.proven is None else (", proven" if g.proven else ", not proven")
        if g.position == "all":
            parts.append(f"no statement in the period ({g.cause}{proven})")
        elif g.position == "end":
            parts.append(f"nothing after {_clock(g.start_ms, period)} ({g.cause}{proven})")
        elif g.position == "start":
            parts.append(f"nothing before {_clock(g.end_ms, period)} ({g.cause}{proven})")
        else:
            parts.append(
                f"dark {_clock(g.start_ms, period)}–{_clock(g.end_ms, period)} ({_duration(g.duration_ms)}, {g.cause})"
            )
    if limit is not None and len(parts) > limit:
        parts = parts[:limit] + [f"{len(parts) - limit} more gaps"]
    if not parts:
        tail = "proven" if cov.end_proven else "not proven"
        return f"no gaps (end {tail})"
    return "; ".join(parts)


def _selection_text(sel: Any) -> str:
    if not isinstance(sel, dict):
        return "not stated"
    if sel.get("all") is True:
        return "all statements"
    for name in ("serials", "nodes"):
        items = sel.get(name)
        if isinstance(items, list) and items:
            shown = ", ".join(str(x)[:40] for x in items[:5])
            return f"{name} {shown}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    if isinstance(sel.get("tenant"), str):
        return f"tenant {sel['tenant'][:64]}"
    return "not stated"


def _trust_line(report: Report) -> str:
    fp = report.log_key_fingerprint or "(no usable log key)"
    if report.log_key_trust == TRUST_PINNED:
        return f"log key pinned by {' and '.join(report.log_key_pinned_by)}: fingerprint {fp}"
    return (
        f"log key trusted on first use (the bundle's own key): fingerprint {fp}; compare it with the data "
        "center's, then pin the key with --log-key"
    )


def format_report(report: Report, path: str, *, details: bool = False) -> str:
    """The report for a person: a summary per tenant and per serial first; with ``details``,
    every serial's usage and gaps, every node, every failure."""
    lines = [f"bundle {path}"]
    cp = report.checkpoint
    if cp is not None:
        heads = "" if report.heads is None else (
            f"; heads of {report.heads.count} keys committed at {_time(report.heads.signed_ms)}"
        )  # fmt: skip
        lines.append(f"log {cp.origin}: checkpoint of {cp.size} leaves, root {cp.root.hex()[:16]}…{heads}")
    lines.append(_trust_line(report))
    if report.previous is not None:
        lines.append(f"earlier checkpoint of {report.previous.size} leaves checked for consistency")
    period = report.period
    if period is not None:
        lines.append(
            f"period {_time(period[0])} .. {_time(period[1])} ({_duration(period[1] - period[0])}); "
            f"selection: {_selection_text(report.selection)}"
        )
    lines.append(
        f"{report.entries} envelopes, {report.keys} enrolled keys: {len(report.gpus)} GPU serials on "
        f"{sum(1 for n in report.nodes.values() if n.in_bundle)} nodes"
    )
    # Tenants.
    if report.tenants:
        lines.append("")
        lines.append(
            f"{'tenant':34s} {'GPU-h':>10s} {'kWh':>10s} {'serials':>8s} {'nodes':>6s} {'coverage':>9s} "
            f"{'problems':>9s}"
        )
        for name, t in sorted(report.tenants.items(), key=lambda kv: (kv[0] == "unattributed", -kv[1].gpu_ms, kv[0])):
            if name == "unattributed":
                lines.append(f"{'(unattributed energy)':34s} {'':>10s} {t.energy_mj / 3_600_000_000:10.3f}")
                continue
            cov = t.coverage_text if t.period_ms else "-"
            lines.append(
                f"{name[:34]:34s} {t.gpu_ms / 3_600_000:10.3f} {t.energy_mj / 3_600_000_000:10.3f} "
                f"{len(t.serials):8d} {len(t.nodes):6d} {cov:>9s} {t.problems:9d}"
            )
    for pseudonym, kyc in sorted(report.tenant_summaries.items()):
        if isinstance(kyc, dict):
            lines.append(
                f"tenant {pseudonym[:64]}: "
                f"ultimate parent {str(kyc.get('ultimate_parent_country') or 'unknown')[:64]}, "
                f"KYC {str(kyc.get('kyc_level') or 'unknown')[:64]}; opacity {str(kyc.get('opacity_score'))[:20]}: "
                + ("; ".join(str(r)[:200] for r in (kyc.get("opacity_reasons") or [])[:10]) or "none")
                + " (signed by the collector)"
            )
    # Serials: the least covered first.
    serials = sorted(
        report.serials.values(),
        key=lambda s: (s.coverage.fraction if s.coverage else 1.0, -s.problems, s.serial),
    )
    if serials:
        lines.append("")
        header = len(lines)
        lines.append(f"{'serial':24s} {'coverage':>9s} {'GPU-h':>9s} {'kWh':>9s} {'problems':>8s}  gaps")
        shown = 0
        rest = 0
        for sv in serials:
            full = sv.coverage is None or not sv.coverage.gaps
            if not details and (shown >= SUMMARY_ROWS or (full and sv.problems == 0)):
                rest += 1
                continue
            shown += 1
            cov = sv.coverage.percent_text if sv.coverage else "-"
            gaps = describe_gaps(sv.coverage, period, None if details else 3) if sv.coverage else "period unknown"
            lines.append(
                f"{sv.serial[:24]:24s} {cov:>9s} {sv.gpu_ms / 3_600_000:9.3f} {sv.energy_mj / 3_600_000_000:9.3f} "
                f"{sv.problems:8d}  {gaps}"
            )
        if not shown:
            del lines[header]
        if rest:
            full_rest = sum(1 for sv in serials if (sv.coverage is None or not sv.coverage.gaps) and sv.problems == 0)
            lines.append(
                f"{'  … ' + str(rest) + ' more serials' if shown else 'serials: ' + str(rest)} ({full_rest} of all "
                f"{len(serials)} fully covered, no problems); --details lists each"
            )
    if report.missing_serials:
        lines.append(
            f"requested serials with no statement at all ({len(report.missing_serials)}): "
            + ", ".join(report.missing_serials[:SUMMARY_ROWS])
            + (" …" if len(report.missing_serials) > SUMMARY_ROWS else "")
        )
    dark_nodes = [n for n in report.nodes.values() if not n.in_bundle]
    if dark_nodes:
        lines.append(
            f"nodes selected but silent the whole period ({len(dark_nodes)}; their last statement ended before it): "
            + ", ".join(sorted(n.node_id for n in dark_nodes)[:SUMMARY_ROWS])
        )
    if details:
        _details(report, lines)
    lines.append("")
    lines.extend(f"note: {n}" for n in report.completeness_notes)
    if report.ok:
        lines.append("VERIFIED: every signature, chain and inclusion check passed")
        if report.previous is None:
            lines.append(
                "  (no --previous-checkpoint: the log's consistency with an earlier checkpoint was not checked)"
            )
        else:
            lines.append(f"  the log extends the earlier checkpoint of {report.previous.size} leaves")
        if not report.log_key_pinned_by:
            lines.append(
                "  (log key trusted on first use: compare it with the data center's, then pin it with --log-key)"
            )
    else:
        counts: dict[str, int] = {}
        for f in report.failures:
            counts[f.reason] = counts.get(f.reason, 0) + 1
        lines.append(
            f"FAILED: {len(report.failures)} verification failure(s): "
            + ", ".join(f"{r} ×{n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        )
        listed = report.failures if details else report.failures[:SUMMARY_ROWS]
        lines.extend(f"  {f}" for f in listed)
        if len(listed) < len(report.failures):
            lines.append(f"  … {len(report.failures) - len(listed)} more (--details or --json lists every one)")
    return "\n".join(lines)


def _details(report: Report, lines: list[str]) -> None:
    period = report.period
    for serial in sorted(report.gpus):
        g = report.gpus[serial]
        ws = sorted(g.windows)
        lines.append("")
        lines.append(
            f"GPU {serial}  {', '.join(sorted(g.models))} on {', '.join(sorted(g.node_ids))}  "
            f"{_time(ws[0][0])} .. {_time(ws[-1][1])}, {len(ws)} windows"
        )
        for tenant, u in sorted(g.tenants.items()):
            lines.append(f"  {tenant:32s} {u.gpu_hours:10.3f} GPU-h {u.energy_kwh:10.3f} kWh")
        if g.windows_without_energy:
            lines.append(f"  energy unavailable in {g.windows_without_energy} window(s)")
        cov = report.serials[serial].coverage if serial in report.serials else None
        if cov is not None:
            lines.append(f"  coverage {cov.percent_text} of the period; {describe_gaps(cov, period, None)}")
        gaps = g.gaps()
        if gaps:
            lines.append(f"  gaps ({len(gaps)}):")
            lines.extend(f"    {_time(s)} .. {_time(e)} ({_duration(e - s)})" for s, e in gaps)
        else:
            lines.append("  gaps: none")
    if report.nodes:
        lines.append("")
        for node_id in sorted(report.nodes):
            n = report.nodes[node_id]
            cov = n.coverage
            text = f"{cov.percent_text}; {describe_gaps(cov, period, None)}" if cov is not None else "period unknown"
            where = "" if n.in_bundle else " (no statement in the bundle)"
            lines.append(f"node {node_id}{where}: {text}; problems {n.problems}")
    for gap in report.explained_gaps:
        lines.append(
            f"explained gap: node {gap['node_id']} seq {gap['from_seq']}..{gap['to_seq']} dropped unsent by its "
            f"agent ({gap['reason']}), signed in seq {gap['explained_by_seq']}: usage in that time is unknown"
        )
