"""``findings``: list the recorded findings with their workflow; ``findings ack|assign|close|
reopen``: record an action on one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attestation import exitcodes
from attestation.exitcodes import CliError, usage
from collector.cli.findings_text import format_findings
from collector.cli.settings import add_store_flags, load
from collector.cli.store_factory import open_store

if TYPE_CHECKING:
    from collector.store.records import FindingAction


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fd = sub.add_parser(
        "findings",
        help="list recorded findings; acknowledge, assign, close or reopen one",
        description="With no ACTION: list the recorded findings, each with its workflow state (open, "
        "acknowledged, closed) and assignee. With an ACTION: record who did it and why. Actions are kept as "
        "history beside the detector's finding, which they never change: open -> acknowledged (ack, or assign) "
        "-> closed; reopen -> open.",
    )
    add_store_flags(fd)
    fd.add_argument(
        "--json", action="store_true", help="Findings JSON (an array), each with its workflow: state, assignee, actions"
    )
    fd.set_defaults(func=_cmd_findings, findings_cmd=None)
    fdsub = fd.add_subparsers(dest="findings_cmd", metavar="ACTION")
    for name, aliases, text in (
        ("ack", ["acknowledge"], "acknowledge an open finding: someone is looking at it"),
        ("assign", [], "assign a finding that is not closed to someone (acknowledges an open one)"),
        ("close", [], "close a finding, saying why (e.g. reviewed: declared training run)"),
        ("reopen", [], "reopen a closed finding"),
    ):
        fa = fdsub.add_parser(name, aliases=aliases, help=text, description=text[0].upper() + text[1:] + ".")
        # Defaults suppressed: --config/--db given before ACTION must not be reset after it.
        fa.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="collector TOML config")
        fa.add_argument("--db", default=argparse.SUPPRESS, help="SQLite file, or a postgresql:// URL")
        fa.add_argument("finding_id", metavar="FINDING_ID", help="the finding's id, from `gpuaudit-collector findings`")
        fa.add_argument("--by", metavar="NAME", help="who acts (default: $USER)")
        if name == "assign":
            fa.add_argument("--to", metavar="NAME", required=True, help="whom the finding is assigned to")
        fa.add_argument(
            "--reason",
            metavar="TEXT",
            required=name != "assign",
            help="why" + (" (optional)" if name == "assign" else ""),
        )


def _cmd_findings(ns: argparse.Namespace) -> int:
    if getattr(ns, "findings_cmd", None) is not None:
        return _cmd_finding_action(ns)
    from collector.store.base import workflow_state

    cfg, _ = load(ns)
    store = open_store(cfg)
    try:
        records = store.findings()
        actions = store.finding_actions()
    finally:
        store.close()
    docs = [json.loads(r.json_text) for r in records]
    by_finding: dict[str, list[FindingAction]] = {}
    for a in actions:
        by_finding.setdefault(a.finding_id, []).append(a)
    for r, doc in zip(records, docs, strict=True):
        history = by_finding.get(r.finding_id, [])
        state = workflow_state(history)
        doc["workflow"] = {
            "state": state.state,
            "assignee": state.assignee,
            "actions": [_action_json(a) for a in history],
        }
    if ns.json:
        print(json.dumps(docs, indent=2))
    else:
        print(format_findings(docs))
    return 0


def _action_json(a: FindingAction) -> dict[str, Any]:
    from collector.detect.findings import rfc3339_ms

    return {
        "action": a.action,
        "by": a.actor,
        "assignee": a.assignee,
        "reason": a.reason,
        "at_ms": a.at_ms,
        "at": rfc3339_ms(a.at_ms),
    }


# The ``findings`` ACTION as typed -> the action stored (collector.store.base.FINDING_ACTIONS).
_FINDING_ACTIONS = {
    "ack": "acknowledge",
    "acknowledge": "acknowledge",
    "assign": "assign",
    "close": "close",
    "reopen": "reopen",
}


def _cmd_finding_action(ns: argparse.Namespace) -> int:
    """``findings ack|assign|close|reopen FINDING_ID --by NAME --reason TEXT``: one action
    appended to the finding's history (the store checks it fits the finding's state)."""
    import time

    from collector.errors import FindingWorkflowError
    from collector.store.base import workflow_state

    action = _FINDING_ACTIONS[ns.findings_cmd]
    actor = (ns.by if ns.by is not None else os.environ.get("USER", "")).strip()
    if not actor:
        raise usage(f"findings {ns.findings_cmd}: say who acts with --by NAME ($USER is not set)")
    reason = ns.reason if ns.reason is not None else ""
    if action != "assign" and not reason.strip():
        raise usage(f"findings {ns.findings_cmd}: say why with --reason TEXT")
    assignee = getattr(ns, "to", None)
    if action == "assign" and not (assignee or "").strip():
        raise usage("findings assign: say to whom with --to NAME")
    cfg, _ = load(ns)
    store = open_store(cfg)
    try:
        try:
            store.record_finding_action(
                ns.finding_id, action, actor, reason, time.time_ns() // 1_000_000, assignee=assignee
            )
        except FindingWorkflowError as exc:
            raise CliError(exitcodes.FAILED, str(exc)) from exc
        state = workflow_state(store.finding_actions(ns.finding_id))
    finally:
        store.close()
    print(
        f"finding {ns.finding_id}: {action} by {actor}; now {state.state}"
        + (f", assigned to {state.assignee}" if state.assignee else "")
    )
    return 0
