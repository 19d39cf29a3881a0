"""Findings (their JSON documents) as text for a person: ``findings`` and ``detect`` print it."""

from __future__ import annotations

from typing import Any


def _workflow_line(f: dict[str, Any]) -> list[str]:
    wf = f.get("workflow")
    if not isinstance(wf, dict):
        return []
    line = f"    workflow: {wf.get('state')}" + (f", assigned to {wf['assignee']}" if wf.get("assignee") else "")
    last = (wf.get("actions") or [None])[-1]
    if last:
        line += f" (last: {last['action']} by {last['by']} at {last['at']}" + (
            f": {last['reason']})" if last.get("reason") else ")"
        )
    return [line]


def format_findings(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return "no findings"
    from collector.integrity import KINDS, format_integrity

    lines = []
    for f in docs:
        if f.get("kind") in KINDS and "evidence" in f:
            lines.extend(format_integrity(f))
            lines.extend(_workflow_line(f))
            continue
        flop = f.get("flop_estimate")
        flop_s = f"{flop[0]:.2e}..{flop[1]:.2e} FLOP" if flop else "FLOP unavailable"
        lines.append(
            f"{f['id']}  {f['severity'].upper():8s} {f['kind']}  tenant {f['tenant']}"
            + (f" (linked: {', '.join(f['tenants'])})" if len(f.get("tenants", [])) > 1 else "")
        )
        lines.append(
            f"    {f['gpus']} GPUs on {f['nodes']} nodes, started {f['started_at']}, detected {f['detected_at']}, "
            f"{f['gpu_hours']} GPU-h, {flop_s}, score {f['score']}"
        )
        op = f.get("opacity", {})
        if op.get("reasons"):
            lines.append(f"    opacity {op.get('score')}: " + "; ".join(op["reasons"]))
        eu = f.get("end_use_risk")
        if eu is not None:
            scr = eu.get("screening") or {}
            lines.append(
                f"    end-use risk {eu.get('score')}: "
                + ("; ".join(eu.get("reasons") or []) or "no reasons")
                + f" (screened against {scr.get('list') or 'no list'}"
                + (f" of {scr['list_date']}" if scr.get("list_date") else "")
                + (f"; {scr['warning']}" if scr.get("warning") else "")
                + ")"
            )
        set_by = (f.get("evidence") or {}).get("severity_set_by") or {}
        if set_by.get("axes"):
            lines.append(f"    severity set by {' and '.join(set_by['axes'])} of {set_by.get('tenant')}")
        lines.extend(_workflow_line(f))
    return "\n".join(lines)
