"""The report page: CSS, the finding in plain words, its axes, charts, signals and tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.report.data import ReportData
from collector.report.fmt import duration, esc, parse_ms, sci, utc
from collector.report.options import ReportOptions
from collector.report.sections import (
    end_use_section,
    set_by_section,
    statements_section,
    verify_section,
    workflow_section,
)
from collector.report.svg import chart_flop, chart_gpus, chart_heatmap

_CSS = """
:root { --ink:#1b1f24; --muted:#5b6470; --line:#d8dde3; --accent:#08519c; --bg:#ffffff; }
* { box-sizing: border-box; }
body { margin:0; background:#f3f5f7; color:var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, "Liberation Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; background: var(--bg); padding: 36px 40px 48px;
  box-shadow: 0 0 0 1px var(--line); }
header.top { border-bottom: 3px solid var(--accent); padding-bottom: 14px; margin-bottom: 22px; }
.kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted); margin: 0; }
h1 { font-size: 26px; margin: 4px 0 6px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
.meta { color: var(--muted); font-size: 13px; }
.badge { display:inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; font-size: 13px;
  color: #fff; vertical-align: middle; text-transform: uppercase; letter-spacing: .04em; }
.sev-critical { background:#a50f15; } .sev-high { background:#de2d26; } .sev-medium { background:#e6550d; }
.sev-low { background:#6b7280; }
.summary { background:#f6f8fb; border-left: 4px solid var(--accent); padding: 12px 16px; font-size: 16px; }
.facts { display:grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 16px 0 4px; }
.fact { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.fact .v { font-size: 20px; font-weight: 600; } .fact .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f6f8fb; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.digest { word-break: break-all; }
.nowrap { white-space: nowrap; }
table.statements td { font-size: 12px; padding: 4px 6px; }
table.statements td.mono { font-size: 11px; line-height: 1.35; }
table.statements td.key { max-width: 250px; }
pre { background: #1b1f24; color: #e8eaed; padding: 12px 14px; border-radius: 6px; overflow-x: auto;
  font-size: 12.5px; line-height: 1.45; }
.yes { color: #a50f15; font-weight: 600; } .no { color: #2c7a3f; } .unknown { color: var(--muted); }
.chart { display:block; width: 100%; height: auto; margin: 6px 0 2px; }
.chart .axis { stroke: #6b7280; stroke-width: 1; }
.chart .grid { stroke: #e6e9ed; stroke-width: 1; }
.chart .tick, .chart .legend, .chart .axis-label { font-size: 11px; fill: #4b5563; }
.chart .legend.small { font-size: 10px; }
.chart .node { font-size: 9.5px; font-family: "DejaVu Sans Mono", Menlo, monospace; }
.chart .area-use { fill: #9ecae1; fill-opacity: .55; }
.chart .line-use { fill: none; stroke: #08519c; stroke-width: 2; }
rect.line-use { fill: #9ecae1; }
.chart .line-eq { fill: none; stroke: #e6550d; stroke-width: 1.6; stroke-dasharray: 5 3; }
.chart .threshold { stroke: #a50f15; stroke-width: 1; stroke-dasharray: 6 4; }
.chart .threshold-label { font-size: 11px; fill: #a50f15; }
.chart .marker { stroke: #111827; stroke-width: 1; stroke-dasharray: 2 3; }
.chart .marker-label { font-size: 11px; fill: #111827; font-weight: 600; }
.chart .band { fill: #fdae6b; fill-opacity: .6; }
.chart .nodata { fill: #fbfbfc; }
.chart .nodata-hatch { fill: none; stroke: #aeb6bf; stroke-width: 1; }
.chart .nodata-label { font-size: 12px; fill: #5b6470; font-style: italic; }
.chart .legend-bg { fill: #ffffff; fill-opacity: .9; }
.chart .line-hi, .chart .line-lo { fill: none; stroke: #e6550d; stroke-width: 1.6; }
.caption { color: var(--muted); font-size: 13px; margin: 0 0 8px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 10px; }
@media print { body { background: #fff; } main { box-shadow: none; padding: 0; } h2 { break-after: avoid; }
  .chart, table { break-inside: avoid; } }
"""


def _fired(v: Any) -> str:
    if v is True:
        return '<span class="yes">yes</span>'
    if v is False:
        return '<span class="no">no</span>'
    return '<span class="unknown">unknown</span>'


def _signal_value(s: dict[str, Any]) -> str:
    v = s.get("value")
    if v is None:
        return '<span class="unknown">not measured</span>'
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}"
    return f"{v:,.0f}"


_SIGNAL_NAMES = {
    "concurrent_training_gpus": "GPUs running training-shaped work at once",
    "size_alone": "Strong training-shaped GPUs (size alone)",
    "shared_workload_gpus": "GPUs under one workload id across nodes",
    "duration_at_size_s": "Time at that size (seconds)",
    "util_mean": "Mean GPU utilization",
    "power_fraction_of_limit": "Mean power as a fraction of the limit",
    "sm_active_mean": "Mean SM activity",
    "tensor_active_mean": "Mean tensor-core activity",
    "synchrony_corr": "Coupling across nodes (median pair correlation, common shocks removed)",
    "duty_cycle": "Share of the span at size actually at size",
    "infiniband_bytes_per_s": "East-west traffic per node (InfiniBand/RoCE and Ethernet)",
    "memory_footprint_cv": "Spread of GPU memory used across the run's GPUs",
}


def _coupling_note(s: dict[str, Any]) -> str:
    """The coupling signal's note: state, the scale that decided, and each scale's support."""
    scales = s.get("scales") or {}
    parts = [f"state: {s.get('state', 'unknown')}"]
    if s.get("decided_by"):
        parts.append(f"decided by {str(s['decided_by']).replace('_', ' ')}")
    for name, c in sorted(scales.items()):
        removed = c.get("common_share_removed")
        parts.append(
            f"{name.replace('_', ' ')}: r={c.get('corr')} (all episodes {c.get('corr_all_episodes')}), "
            f"z={c.get('z')}, {c.get('units')} nodes x {c.get('points')} points, {c.get('episodes')} episodes"
            + ("" if removed is None else f", {removed:.0%} of points masked as common")
        )
    if s.get("note"):
        parts.append(str(s["note"]))
    return "; ".join(parts)


def _threshold_sentence(lo: float, hi: float, thresholds: Sequence[tuple[float, str]]) -> str:
    below = [(v, n) for v, n in thresholds if hi < v]
    above = [(v, n) for v, n in thresholds if lo >= v]
    parts = []
    if above:
        v, n = above[-1]
        parts.append(f"at or above the {sci(v)} FLOP <em>{esc(n)}</em> threshold")
    straddle = [(v, n) for v, n in thresholds if lo < v <= hi]
    if straddle:
        parts.append("its range spans " + ", ".join(f"{sci(v)} (<em>{esc(n)}</em>)" for v, n in straddle))
    if below:
        v, n = below[0]
        parts.append(f"below the {sci(v)} FLOP <em>{esc(n)}</em> threshold")
    return "; ".join(parts)


def _no_data_sentence(data: ReportData) -> str:
    """When no node signed any statement, as a sentence for the captions ("" when always)."""
    runs = data.no_data_runs()
    if not runs:
        return ""
    spans = [f"{utc(data.bucket_starts[a])} to {utc(data.bucket_starts[b] + data.bucket_ms)}" for a, b in runs[:3]]
    more = f" and {len(runs) - 3} more stretches" if len(runs) > 3 else ""
    return (
        f" No node signed any statement from {esc(', from '.join(spans))}{more}: that time is hatched and "
        "labelled “no data”. It is not zero: nothing is known about it."
    )


def render(data: ReportData, options: ReportOptions, generated_ms: int, version: str) -> str:
    """The report as one HTML document."""
    f = data.finding
    tenants = data.tenants
    tenant_html = ", ".join(f"<strong>{esc(t)}</strong>" for t in tenants)
    started = parse_ms(f.get("started_at")) or data.span_from_ms
    detected = parse_ms(f.get("detected_at")) or started
    ev = f.get("evidence") or {}
    last_end = parse_ms(ev.get("last_window_end")) or detected
    sev = str(f.get("severity", "low"))
    flop = f.get("flop_estimate")
    lo_cum, hi_cum = data.flop_cum[-1] if data.flop_cum else (0.0, 0.0)
    models = ev.get("gpu_models") or {}
    model_text = ", ".join(f"{n:,} × {esc(m)}" for m, n in models.items()) if models else "GPUs"
    marks = [(started, "run started"), (detected, "detected")]

    if flop:
        flop_text = (
            f"Estimated compute of the run until {esc(utc(last_end))}: <strong>{sci(flop[0])} to {sci(flop[1])} "
            f"FLOP</strong>, {_threshold_sentence(flop[0], flop[1], options.thresholds)}."
        )
    else:
        why = (ev.get("flop") or {}).get("unavailable") or "the GPU model's peak throughput is not known"
        flop_text = f"The compute of the run could not be estimated: {esc(why)}."
    linked = ""
    if len(tenants) > 1:
        linked = (
            f" The tenants {tenant_html} were linked into one run because their load moved together "
            "(see “Linked tenants” below)."
        )
    plain = (
        f"Tenant {tenant_html} has been running a large training job on "
        f"<strong>{int(f.get('gpus', 0)):,} GPUs</strong> "
        f"({model_text}) across <strong>{int(f.get('nodes', 0)):,} nodes</strong> since "
        f"<strong>{esc(utc(started))}</strong>. gpuaudit detected it at <strong>{esc(utc(detected))}</strong>, "
        f"{duration(detected - started)} after it started, and its latest evidence runs to "
        f"{esc(utc(last_end))}. {flop_text}{linked}"
    )
    if ev.get("severity_reason"):
        plain += f" Severity <strong>{esc(sev)}</strong>: {esc(ev['severity_reason'])}."
    if ev.get("score_explained"):
        plain += f" Its score ({esc(f.get('score'))}) is {esc(ev['score_explained'])}."

    op = f.get("opacity") or {}
    reasons = op.get("reasons") or []
    by_tenant = ev.get("opacity_by_tenant") or {}
    eu = f.get("end_use_risk")

    facts = [
        (f"{int(f.get('gpus', 0)):,}", "GPUs at peak"),
        (f"{int(f.get('nodes', 0)):,}", "nodes"),
        (f"{float(f.get('gpu_hours', 0)):,.0f}", "GPU-hours in the run"),
        (f"{float(op.get('score', 0)):.2f}", "opacity score (0 = transparent, 1 = opaque)"),
    ]
    if eu is not None:
        facts.append((f"{float(eu.get('score', 0)):.2f}", "end-use risk (0 = nothing of concern known)"))

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: no scripts, no images or fonts from anywhere, styles inline only.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gpuaudit evidence report {esc(f.get('id'))}: {esc(', '.join(tenants))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        '<header class="top">',
        '<p class="kicker">gpuaudit evidence report</p>',
        f"<h1>Large training run by {_subject(ev.get('levels'), len(tenants) > 1)} "
        f'<span class="badge sev-{esc(sev)}">{esc(sev)}</span></h1>',
        f'<p class="meta">Finding <code>{esc(f.get("id"))}</code> · kind <code>{esc(f.get("kind"))}</code> · '
        f"detector score {float(f.get('score', 0)):.2f} · report generated {esc(utc(generated_ms))} by "
        f"gpuaudit {esc(version)}</p>",
        "</header>",
        "<h2>The finding in plain words</h2>",
        f'<p class="summary">{plain}</p>',
        '<div class="facts">',
        *(f'<div class="fact"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>' for v, k in facts),
        "</div>",
        *set_by_section(ev.get("severity_set_by")),
        *workflow_section(data),
        "<h2>Why the tenant counts as opaque</h2>",
    ]
    if reasons:
        parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>")
    else:
        parts.append("<p>No opacity reasons were recorded.</p>")
    if len(by_tenant) > 1:
        parts.append("<table><tr><th>tenant</th><th class=num>opacity</th><th>reasons</th></tr>")
        for t, o in by_tenant.items():
            parts.append(
                f"<tr><td>{esc(t)}</td><td class=num>{float(o.get('score', 0)):.2f}</td>"
                f"<td>{esc('; '.join(o.get('reasons', [])))}</td></tr>"
            )
        parts.append("</table>")
    parts += end_use_section(eu, ev.get("end_use_risk_by_tenant") or {})
    for t in tenants:
        known = options.tenant_facts.get(t)
        if known:
            parts.append(f"<h3>What the tenants file records about {esc(t)}</h3><table>")
            parts.extend(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in known.items())
            parts.append("</table>")

    parts += [
        "<h2>GPUs in use over time</h2>",
        f'<p class="caption">GPUs running the tenant’s work, averaged over {duration(data.bucket_ms)} steps '
        "(time-weighted), and the GPU time attributed to it expressed as whole GPUs. The dashed red line is the "
        f"detector’s size threshold.{_no_data_sentence(data)}</p>",
        chart_gpus(data, marks, options.min_gpus),
        "<h2>Utilization across the tenant’s nodes</h2>",
        f'<p class="caption">Mean utilization of the GPUs running the tenant’s work, '
        f"{'one row per node' if data.heat_nodes_per_row == 1 else f'one row per {data.heat_nodes_per_row} nodes'}"
        f" ({data.nodes:,} nodes), {duration(data.bucket_ms)} per column. A training job shows as a solid "
        "dark block: every node busy at once. Grey: the row’s GPUs ran none of the tenant’s work (not in use); "
        "hatched: the row’s nodes signed no statement for that time (no data).</p>",
        chart_heatmap(data, marks),
        "<h2>Cumulative compute against the thresholds</h2>",
        f'<p class="caption">Estimated floating-point operations of the tenant’s GPUs since '
        f"{esc(utc(data.span_from_ms))}, recomputed from the statements in this report: peak dense BF16 "
        "throughput of the GPU model × measured activity × attributed GPU time × model FLOP utilization "
        f"{options.mfu[0]:g} to {options.mfu[1]:g}. Now {sci(lo_cum)} to {sci(hi_cum)} FLOP. "
        "This counts every GPU the tenant used over the report’s span; the run’s estimate in the summary "
        "counts only the run’s training workloads from the run’s start, so the two differ by the tenant’s "
        "other work (serving, small jobs) and by what ran before the run.</p>",
        chart_flop(data, options, marks),
    ]
    if data.flop_unavailable_gpu_s > 0:
        parts.append(
            f'<p class="caption">{data.flop_unavailable_gpu_s / 3600:,.1f} GPU-hours have no estimate (GPU model of '
            "unknown peak, or no activity reading); they are not counted above.</p>"
        )
    proj = ev.get("projection") or {}
    if proj.get("total_after_30_days"):
        lo30, hi30 = proj["total_after_30_days"]
        parts.append(
            f"<p>If the run keeps its latest rate it reaches {sci(lo30)} to {sci(hi30)} FLOP after 30 days "
            f"({esc(proj.get('note', 'a projection, not a measurement'))}).</p>"
        )

    signals = ev.get("signals") or {}
    if signals:
        parts += [
            "<h2>What the detector measured</h2>",
            "<table><tr><th>signal</th><th class=num>measured</th><th class=num>threshold</th><th>unit</th>"
            "<th>met</th><th>note</th></tr>",
        ]
        for name, s in signals.items():
            thr = s.get("threshold")
            note = _coupling_note(s) if name == "synchrony_corr" else s.get("note", "")
            parts.append(
                f"<tr><td>{esc(_SIGNAL_NAMES.get(name, name))}</td><td class=num>{_signal_value(s)}</td>"
                f"<td class=num>{'' if thr is None else esc(f'{thr:,}')}</td><td>{esc(s.get('unit', ''))}</td>"
                f"<td>{_fired(s.get('fired'))}</td><td>{esc(note)}</td></tr>"
            )
        parts.append("</table>")
        if ev.get("memory_note"):
            parts.append(f'<p class="caption">{esc(ev["memory_note"])}.</p>')
    members = ev.get("members") or []
    if len(members) > 1:
        parts += [
            "<h3>Members of the run</h3>",
            "<table><tr><th>tenant</th><th class=num>share</th><th class=num>GPUs</th>"
            "<th class=num>GPU-hours</th><th class=num>opacity</th><th class=num>end-use risk</th>"
            "<th>material (can set the severity)</th></tr>",
        ]
        for m in members:
            op = m.get("opacity") or {}
            risk = m.get("end_use_risk") or {}
            parts.append(
                f"<tr><td>{esc(m.get('tenant'))}</td><td class=num>{float(m.get('share', 0)):.0%}</td>"
                f"<td class=num>{esc(m.get('gpus'))}</td><td class=num>{esc(m.get('gpu_hours'))}</td>"
                f"<td class=num>{esc(op.get('score'))}</td><td class=num>{esc(risk.get('score', 'n/a'))}</td>"
                f"<td>{'yes' if m.get('material') else 'no'}</td></tr>"
            )
        parts.append("</table>")
    link = ev.get("linked_tenants")
    if link:
        parts += [
            "<h3>Linked tenants</h3>",
            f"<p>{esc(link.get('how', ''))}</p><table><tr><th>tenants</th><th class=num>correlation</th>"
            "<th class=num>points</th><th class=num>windows</th><th class=num>z</th><th>scale</th>"
            "<th class=num>common share removed</th></tr>",
        ]
        for p in link.get("pairs", []):
            removed = p.get("common_share_removed")
            parts.append(
                f"<tr><td>{esc(' + '.join(p.get('tenants', [])))}</td><td class=num>{esc(p.get('corr'))}</td>"
                f"<td class=num>{esc(p.get('points'))}</td><td class=num>{esc(p.get('windows', ''))}</td>"
                f"<td class=num>{esc(p.get('z'))}</td><td>{esc(str(p.get('scale', '')).replace('_', ' '))}</td>"
                f"<td class=num>{'n/a' if removed is None else f'{removed:.0%}'}</td></tr>"
            )
        parts.append("</table>")

    parts += verify_section(data, options)
    parts += statements_section(data, options)
    parts.append(
        "<footer>Generated by gpuaudit from the collector’s store. Each GPU node signs one statement per window "
        "(an in-toto Statement in a DSSE envelope, Ed25519) with a key enrolled at the collector; statements are "
        "hash-chained per key and logged in an RFC 9162 transparency log. This report summarises them; the signed "
        "statements themselves are the evidence.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p)


def _subject(levels: Any, several: bool) -> str:
    """Who ran it, by the finding's levels on both axes: "an opaque tenant of end-use concern"."""
    lv = levels if isinstance(levels, dict) else {}
    opaque = lv.get("opacity", "opaque") in ("opaque", "partly_opaque")
    concern = lv.get("end_use") in ("elevated", "high")
    adj = "opaque " if opaque else "" if concern else "transparent "
    head = f"{adj}tenants" if several else f"{'an' if opaque else 'a'} {adj}tenant"
    return head + (" of end-use concern" if concern else "")
