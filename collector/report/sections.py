"""Sections of the page: what set the severity, end-use risk, the workflow, how to verify, the
statements appendix."""

from __future__ import annotations

import datetime as dt
from typing import Any

from collector.report.data import ReportData
from collector.report.fmt import MS, esc, rfc3339, utc
from collector.report.options import ReportOptions


def set_by_section(set_by: Any) -> list[str]:
    """Which member, axes and reasons set the severity (``evidence.severity_set_by``)."""
    if not isinstance(set_by, dict):
        return []
    axes = {"opacity": "opacity", "end_use": "end-use risk"}
    named = [axes.get(a, a) for a in set_by.get("axes") or []]
    out = ["<h2>What set the severity</h2>"]
    if not named:
        out.append(
            f"<p>Neither axis raised it: every material member is transparent and of no end-use concern; "
            f"the member that matters most is <strong>{esc(set_by.get('tenant'))}</strong>.</p>"
        )
        return out
    o = set_by.get("opacity") or {}
    u = set_by.get("end_use") or {}
    out.append(
        f"<p>The {' and the '.join(named)} of <strong>{esc(set_by.get('tenant'))}</strong>: opacity "
        f"{esc(o.get('score'))} ({esc(str(o.get('level', '')).replace('_', ' '))}, alone {esc(o.get('severity'))}), "
        f"end-use risk {esc(u.get('score'))} ({esc(u.get('level'))}, alone {esc(u.get('severity'))}"
        + (f"; {esc(u['floor'])}" if u.get("floor") else "")
        + ").</p>"
    )
    if set_by.get("reasons"):
        out.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in set_by["reasons"]) + "</ul>")
    return out


def workflow_section(data: ReportData) -> list[str]:
    """The finding's workflow: its state and assignee, and who acknowledged, assigned, closed
    or reopened it, when and why (the store's finding actions, oldest first)."""
    wf = data.workflow
    out = [
        "<h2>Workflow</h2>",
        f"<p>State: <strong>{esc(wf.state)}</strong>"
        + (f", assigned to <strong>{esc(wf.assignee)}</strong>" if wf.assignee else "")
        + ("" if data.actions else " (nobody has acted on this finding yet)")
        + ".</p>",
    ]
    if data.actions:
        out.append("<table><thead><tr><th>When (UTC)</th><th>Action</th><th>By</th><th>Why</th></tr></thead><tbody>")
        for a in data.actions:
            what = a.action + (f" to {a.assignee}" if a.assignee else "")
            out.append(
                f"<tr><td>{esc(utc(a.at_ms))}</td><td>{esc(what)}</td><td>{esc(a.actor)}</td>"
                f"<td>{esc(a.reason)}</td></tr>"
            )
        out.append("</tbody></table>")
    return out


def end_use_section(eu: Any, by_tenant: dict[str, Any]) -> list[str]:
    """End-use risk: reasons, the screening (list, its date, hits) and what a hit means."""
    out = ["<h2>End-use risk</h2>"]
    if not isinstance(eu, dict):
        out.append("<p>End-use risk was not assessed for this finding (it was raised before the collector did).</p>")
        return out
    reasons = eu.get("reasons") or []
    if reasons:
        out.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>")
    else:
        out.append(
            "<p>Nothing of end-use concern is recorded: no country of concern, no screening hit, no "
            "declared use the run contradicts.</p>"
        )
    if len(by_tenant) > 1:
        out.append("<table><tr><th>tenant</th><th class=num>end-use risk</th><th>reasons</th></tr>")
        for t, r in by_tenant.items():
            out.append(
                f"<tr><td>{esc(t)}</td><td class=num>{float(r.get('score', 0)):.2f}</td>"
                f"<td>{esc('; '.join(r.get('reasons', [])))}</td></tr>"
            )
        out.append("</table>")
    scr = eu.get("screening") or {}
    if scr.get("list"):
        screened = ", ".join(scr.get("screened") or []) or "no names"
        out.append(
            f"<h3>Restricted-party screening</h3><p>Screened ({esc(screened)}) against "
            f"<code>{esc(scr.get('list'))}</code> dated <strong>{esc(scr.get('list_date'))}</strong>"
            + (f" (SHA-256 <code class=digest>{esc(scr.get('list_sha256'))}</code>)" if scr.get("list_sha256") else "")
            + ".</p>"
        )
    else:
        out.append("<h3>Restricted-party screening</h3>")
    if scr.get("warning"):
        out.append(f"<p><strong>Warning:</strong> {esc(scr['warning'])}.</p>")
    hits = scr.get("hits") or []
    if hits:
        out.append(
            "<table><tr><th>whose name</th><th>name screened</th><th>list</th><th>entry</th><th>name matched</th>"
            "<th class=num>score</th></tr>"
        )
        for h in hits:
            url = h.get("source_information_url") or ""
            entry = f"{esc(h.get('entry_id'))}: {esc(h.get('entry_name'))}" + (f"<br>{esc(url)}" if url else "")
            out.append(
                f"<tr><td>{esc(h.get('role'))}</td><td>{esc(h.get('screened_name'))}</td><td>{esc(h.get('list'))}</td>"
                f"<td>{entry}</td><td>{esc(h.get('matched_name'))}</td>"
                f"<td class=num>{float(h.get('score', 0)):.2f}</td></tr>"
            )
        out.append("</table>")
        out.append(
            "<p>A hit is a reason to look, not a verdict: the same name may belong to another party. Check the "
            "entry on its list's own page (the address above) against what the tenant file records (addresses, "
            "registration numbers, owners) before acting, and record what was decided.</p>"
        )
    elif scr.get("list"):
        out.append("<p>No name matched an entry of the list.</p>")
    return out


def statements_section(data: ReportData, options: ReportOptions) -> list[str]:
    gaps = sum(1 for k in data.keys if not k.contiguous)
    out = [
        "<h2>Appendix: the signed statements behind this report</h2>",
        f"<p>{data.statements:,} signed statements from {len(data.keys):,} node keys name the tenant"
        f"{'s' if len(data.tenants) > 1 else ''} between {esc(utc(data.span_from_ms))} and "
        f"{esc(utc(data.span_to_ms))} ({data.statements_scanned:,} statements of all tenants were read for that "
        "span). Each row is one node key with its first and last statement in the span and the SHA-256 digest of "
        "their signed bytes (the DSSE pre-authentication encoding). "
        + (
            "Every key’s statements are consecutive in its chain."
            if not gaps
            else f"{gaps} key(s) signed statements in the span that do not name the tenant between their first "
            "and last: the column “consecutive” says which."
        )
        + "</p>",
        f'<p>Digest of the whole set: <code class="digest">sha256:{data.evidence_sha256}</code><br>'
        '<span class="meta">SHA-256 of the sorted lines “key_id seq digest”, one per statement, each ending in a '
        "line feed.</span></p>",
        '<table class="statements"><tr><th>node</th><th>key id</th><th class=num>statements</th>'
        "<th class=num>seqs</th><th>windows (UTC)</th><th>first and last statement digest</th>"
        "<th>consecutive</th></tr>",
    ]
    for k in data.keys[: options.max_keys]:
        t0 = dt.datetime.fromtimestamp(k.first_start_ms / MS, tz=dt.UTC)
        t1 = dt.datetime.fromtimestamp(k.last_end_ms / MS, tz=dt.UTC)
        windows = f"{t0:%Y-%m-%d %H:%M} – " + (f"{t1:%H:%M}" if t1.date() == t0.date() else f"{t1:%Y-%m-%d %H:%M}")
        out.append(
            f"<tr><td class='mono nowrap'>{esc(k.node_id)}</td><td class='mono digest key'>{esc(k.key_id)}</td>"
            f"<td class=num>{k.count:,}</td><td class='num nowrap'>{k.first_seq}–{k.last_seq}</td>"
            f"<td class=nowrap>{esc(windows)}</td>"
            f"<td class='mono digest'>{k.first_seq}: {esc(k.first_digest)}<br>{k.last_seq}: {esc(k.last_digest)}</td>"
            f"<td>{'yes' if k.contiguous else '<span class=yes>no</span>'}</td></tr>"
        )
    out.append("</table>")
    if len(data.keys) > options.max_keys:
        out.append(
            f"<p>… and {len(data.keys) - options.max_keys:,} more keys, left out to keep this file small; "
            "the export above contains all of them.</p>"
        )
    return out


LOG_KEY_FILE = "log-key.pem"


def verify_commands(data: ReportData, options: ReportOptions) -> tuple[str, str]:
    """Shell commands as the report prints them: the operator's (export the bundles and the log's
    public key, where the store is) and anyone's (verify them; no path of the operator's)."""
    store = f" {options.store_args}" if options.store_args else ""
    since = rfc3339(data.span_from_ms)
    until = rfc3339(data.span_to_ms)
    export = []
    verify = []
    for t in data.tenants:
        bundle = "bundle-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in t) + ".json"
        export.append(
            f"gpuaudit-collector export{store} --tenant {_shell(t)} \\\n    --since {since} --until {until} "
            f"--out {bundle}"
        )
        verify.append(f"gpuaudit-verify --log-key {LOG_KEY_FILE} {bundle}")
    export.append(f"gpuaudit-collector log public-key{store} > {LOG_KEY_FILE}")
    return "\n".join(export), "\n".join(verify)


def verify_section(data: ReportData, options: ReportOptions) -> list[str]:
    export, verify = verify_commands(data, options)
    return [
        "<h2>How to verify</h2>",
        "<p>Anyone can check the statements without trusting this report or the collector: the collector’s "
        "operator exports them as a bundle (the envelopes exactly as signed, the nodes’ enrolled public keys, a "
        "signed checkpoint of the transparency log and an inclusion proof for every statement), and "
        "<code>gpuaudit-verify</code> checks it offline: every signature, every chain, every window, the energy "
        "counters and the inclusion proofs. It prints GPU-hours and energy per GPU serial and tenant over the "
        "bundle’s period: every workload the tenant ran, so at least the run’s GPU-hours in this report, which "
        "count only the run’s training workloads from its start. Exit status 0 means verified.</p>",
        "<p>The operator, where the collector’s store is, writes the bundle and the log’s public key:</p>",
        f'<pre id="export-commands">{esc(export)}</pre>',
        "<p>Anyone given those files checks them, on any machine with gpuaudit installed and nothing else. "
        "<code>--log-key</code> makes the bundle’s log key the one the operator gave; "
        + (
            f"<code>gpuaudit-verify</code> prints its fingerprint, which must be "
            f"<code class=digest>{esc(options.log_key_fingerprint)}</code> (this report’s log key):</p>"
            if options.log_key_fingerprint
            else "compare the fingerprint <code>gpuaudit-verify</code> prints with the one the operator publishes:</p>"
        ),
        f'<pre id="verify-commands">{esc(verify)}</pre>',
        "<p>A chip vendor or regulator who kept an earlier checkpoint adds "
        "<code>--previous-checkpoint FILE</code> to the export and the verify command to prove the log was only "
        "ever appended to. "
        "To check that the bundle holds the statements listed in the appendix, compare the digests there with "
        "the bundle’s entries.</p>",
    ]


def _shell(s: str) -> str:
    if s and all(c.isalnum() or c in "-_.:@/" for c in s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"
