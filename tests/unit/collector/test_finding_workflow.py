"""The findings workflow (issue 17): acknowledge, assign, close and reopen a finding, with who
and why, kept as append-only history in the store (both backends, through the ``store`` and
``open_store`` fixtures of conftest.py), listed by ``gpuaudit-collector findings`` and shown
in the evidence report."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attestation import exitcodes
from attestation.statement import Chain, GpuWindow, UsageWindow, Workload, statement_bytes
from collector import cli as collector_cli
from collector.detect.findings import rfc3339_ms
from collector.errors import StoreError
from collector.report import ReportOptions, build_report
from collector.store.base import (
    FindingAction,
    FindingRecord,
    FindingWorkflowError,
    StatementRecord,
    WorkflowState,
    check_finding_action,
    workflow_state,
)

T0 = 1_772_424_000_000  # 2026-03-02T04:00:00Z
WINDOW = 60_000
FID = "f-0123456789abcdef"
TENANT = "t-kestrel"


def _doc(fid: str = FID, windows: int = 5) -> dict[str, Any]:
    return {
        "id": fid,
        "kind": "large_training",
        "tenant": TENANT,
        "tenants": [TENANT],
        "severity": "critical",
        "started_at": rfc3339_ms(T0),
        "detected_at": rfc3339_ms(T0 + 2 * WINDOW),
        "gpus": 2,
        "nodes": 1,
        "gpu_hours": 0.2,
        "flop_estimate": [1.0e18, 2.0e18],
        "score": 0.8,
        "opacity": {"score": 0.8, "reasons": ["nominee directors"]},
        "evidence": {"last_window_end": rfc3339_ms(T0 + windows * WINDOW)},
    }


def _save_finding(store: Any, fid: str = FID) -> FindingRecord:
    store.save_finding(fid, "large_training", TENANT, "critical", T0, T0 + 2 * WINDOW, json.dumps(_doc(fid)))
    records: list[FindingRecord] = [r for r in store.findings() if r.finding_id == fid]
    return records[0]


def _act(action: str, assignee: str | None = None, reason: str = "why") -> FindingAction:
    return FindingAction(FID, action, "alice", assignee, reason, T0)


# -- the rules: state derived from the history -------------------------------------


@pytest.mark.parametrize(
    ("history", "state"),
    [
        ([], WorkflowState("open", None)),
        (["acknowledge"], WorkflowState("acknowledged", None)),
        (["assign"], WorkflowState("acknowledged", "bob")),
        (["acknowledge", "assign"], WorkflowState("acknowledged", "bob")),
        (["acknowledge", "close"], WorkflowState("closed", None)),
        (["assign", "close"], WorkflowState("closed", "bob")),
        (["close"], WorkflowState("closed", None)),
        (["close", "reopen"], WorkflowState("open", None)),
        (["assign", "close", "reopen"], WorkflowState("open", "bob")),
        (["acknowledge", "close", "reopen", "acknowledge", "close"], WorkflowState("closed", None)),
    ],
)
def test_state_is_derived_from_the_actions_in_order(history: list[str], state: WorkflowState) -> None:
    actions = [_act(a, "bob" if a == "assign" else None) for a in history]
    assert workflow_state(actions) == state
    current = WorkflowState()
    for a in actions:  # every history above is one the rules allow, step by step
        current = check_finding_action(current, a)
    assert current == state


@pytest.mark.parametrize(
    ("state", "action", "reason"),
    [
        ("acknowledged", _act("acknowledge"), "bad_transition"),
        ("closed", _act("acknowledge"), "bad_transition"),
        ("closed", _act("assign", "bob"), "bad_transition"),
        ("closed", _act("close"), "bad_transition"),
        ("open", _act("reopen"), "bad_transition"),
        ("acknowledged", _act("reopen"), "bad_transition"),
        ("open", _act("close", reason="  "), "bad_action"),
        ("open", _act("assign"), "bad_action"),
        ("open", _act("acknowledge", assignee="bob"), "bad_action"),
        ("open", FindingAction(FID, "acknowledge", "", None, "why", T0), "bad_action"),
        ("open", _act("delete"), "bad_action"),
    ],
)
def test_actions_that_do_not_fit_the_state_are_refused(state: str, action: FindingAction, reason: str) -> None:
    with pytest.raises(FindingWorkflowError) as err:
        check_finding_action(WorkflowState(state), action)
    assert err.value.reason == reason, f"{action.action} on an {state} finding: {err.value}"


# -- the store, on both backends ---------------------------------------------------


def test_actions_are_recorded_and_read_back_in_order(store: Any) -> None:
    _save_finding(store)
    _save_finding(store, "f-other")
    store.record_finding_action(FID, "acknowledge", "alice", "looking into it", T0 + 1)
    store.record_finding_action("f-other", "close", "carol", "declared run", T0 + 2)
    store.record_finding_action(FID, "assign", "alice", "", T0 + 3, assignee="bob")
    store.record_finding_action(FID, "close", "bob", "reviewed: licensed lab", T0 + 4)
    store.record_finding_action(FID, "reopen", "dave", "new evidence", T0 + 5)
    mine = store.finding_actions(FID)
    assert [(a.action, a.actor, a.assignee, a.reason, a.at_ms) for a in mine] == [
        ("acknowledge", "alice", None, "looking into it", T0 + 1),
        ("assign", "alice", "bob", "", T0 + 3),
        ("close", "bob", None, "reviewed: licensed lab", T0 + 4),
        ("reopen", "dave", None, "new evidence", T0 + 5),
    ], "actions come back in the order they were recorded"
    assert [a.finding_id for a in store.finding_actions()] == [FID, "f-other", FID, FID, FID]
    assert workflow_state(mine) == WorkflowState("open", "bob")
    assert workflow_state(store.finding_actions("f-other")) == WorkflowState("closed", None)
    assert store.finding_actions("f-none") == []


def test_the_detectors_finding_row_is_unchanged_by_actions(store: Any) -> None:
    before = _save_finding(store)
    store.record_finding_action(FID, "acknowledge", "alice", "looking", T0 + 1)
    store.record_finding_action(FID, "close", "alice", "done", T0 + 2)
    assert store.findings() == [before], "actions are history beside the finding, never an edit of it"
    # The detector updating its finding keeps the history.
    store.save_finding(FID, "large_training", TENANT, "critical", T0, T0 + 9 * WINDOW, json.dumps(_doc()))
    assert [a.action for a in store.finding_actions(FID)] == ["acknowledge", "close"]


def test_refused_actions_store_nothing(store: Any) -> None:
    _save_finding(store)
    with pytest.raises(FindingWorkflowError) as err:
        store.record_finding_action("f-nope", "acknowledge", "alice", "why", T0)
    assert err.value.reason == "unknown_finding" and "f-nope" in str(err.value)
    store.record_finding_action(FID, "close", "alice", "done", T0 + 1)
    with pytest.raises(FindingWorkflowError, match="reopen it first"):
        store.record_finding_action(FID, "close", "bob", "again", T0 + 2)
    with pytest.raises(FindingWorkflowError):
        store.record_finding_action(FID, "reopen", "bob", "", T0 + 3)
    assert [a.actor for a in store.finding_actions()] == ["alice"]


def test_actions_cannot_be_edited_or_deleted_in_the_database(store: Any) -> None:
    _save_finding(store)
    store.record_finding_action(FID, "acknowledge", "alice", "looking", T0 + 1)
    for statement in ("UPDATE finding_actions SET actor = 'mallory'", "DELETE FROM finding_actions"):
        with pytest.raises(StoreError, match="append-only"), store._tx() as conn:
            conn.execute(statement)
    assert [a.actor for a in store.finding_actions()] == ["alice"]


def test_actions_survive_reopening_the_store(open_store: Any) -> None:
    with open_store(now_ms=T0) as store:
        _save_finding(store)
        store.record_finding_action(FID, "assign", "alice", "", T0 + 1, assignee="bob")
    with open_store(now_ms=T0 + 1) as store:
        assert workflow_state(store.finding_actions(FID)) == WorkflowState("acknowledged", "bob")


# -- the CLI -----------------------------------------------------------------------


@pytest.fixture
def db_arg(backend: str, request: pytest.FixtureRequest, tmp_path: Path, open_store: Any) -> str:
    """--db for the CLI: the store of ``open_store`` (a SQLite file or a PostgreSQL URL), with a finding."""
    with open_store(now_ms=T0) as store:
        _save_finding(store)
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "collector.db")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = collector_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip(db_arg: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    code, out, err = _run(capsys, "findings", "ack", FID, "--db", db_arg, "--reason", "looking into it")
    assert code == exitcodes.OK, err
    assert "acknowledge by alice" in out and "now acknowledged" in out
    # --db before the action works too; --by overrides $USER.
    code, out, err = _run(capsys, "findings", "--db", db_arg, "assign", FID, "--to", "bob", "--by", "carol")
    assert code == exitcodes.OK and "assigned to bob" in out, err
    code, out, err = _run(capsys, "findings", "close", FID, "--db", db_arg, "--by", "bob", "--reason", "licensed")
    assert code == exitcodes.OK and "now closed" in out, err

    code, out, err = _run(capsys, "findings", "--db", db_arg)
    assert code == exitcodes.OK, err
    assert "workflow: closed, assigned to bob (last: close by bob at" in out and ": licensed)" in out
    code, out, err = _run(capsys, "findings", "--db", db_arg, "--json")
    (doc,) = json.loads(out)
    assert doc["id"] == FID and doc["workflow"]["state"] == "closed" and doc["workflow"]["assignee"] == "bob"
    assert [(a["action"], a["by"], a["assignee"]) for a in doc["workflow"]["actions"]] == [
        ("acknowledge", "alice", None),
        ("assign", "carol", "bob"),
        ("close", "bob", None),
    ]
    assert doc["workflow"]["actions"][0]["reason"] == "looking into it"
    assert {k for k in doc if k != "workflow"} == set(_doc()), "the finding's own JSON is as the detector wrote it"

    code, out, err = _run(capsys, "findings", "reopen", FID, "--db", db_arg, "--reason", "new evidence")
    assert code == exitcodes.OK and "now open, assigned to bob" in out, err


def test_cli_unknown_finding_and_refused_transition_answer_no(db_arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "findings", "close", "f-nope", "--db", db_arg, "--by", "a", "--reason", "x")
    assert code == exitcodes.FAILED, "a finding that is not there: the answer is no (exit 1)"
    assert err.count("\n") == 1 and err.startswith("error:") and "f-nope" in err, err
    code, out, err = _run(capsys, "findings", "reopen", FID, "--db", db_arg, "--by", "a", "--reason", "x")
    assert code == exitcodes.FAILED and "is open: cannot reopen" in err, err


def test_cli_usage_errors(db_arg: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USER", raising=False)
    code, _, err = _run(capsys, "findings", "ack", FID, "--db", db_arg, "--reason", "r")
    assert code == exitcodes.USAGE and "--by" in err, "no --by and no $USER: say who acts"
    with pytest.raises(SystemExit) as exc:
        collector_cli.main(["findings", "close", FID, "--db", db_arg, "--by", "a"])
    assert exc.value.code == exitcodes.USAGE, "close without --reason is a usage error"
    capsys.readouterr()
    code, _, err = _run(capsys, "findings", "close", FID, "--db", db_arg, "--by", "a", "--reason", " ")
    assert code == exitcodes.USAGE and "--reason" in err


# -- the report ----------------------------------------------------------------------


@dataclass
class _ReportSource:
    """The real store's findings and actions, with hand-made statements for the charts."""

    store: Any
    statements: list[StatementRecord]

    def findings(self, tenant: str | None = None) -> list[FindingRecord]:
        return list(self.store.findings(tenant))

    def finding_actions(self, finding_id: str | None = None) -> list[FindingAction]:
        return list(self.store.finding_actions(finding_id))

    def iter_statements(self, key_id: str | None = None, **_: Any) -> Iterator[StatementRecord]:
        return iter(self.statements)


def _statements(windows: int = 5) -> list[StatementRecord]:
    out = []
    for seq in range(windows):
        start = T0 + seq * WINDOW
        gpus = tuple(
            GpuWindow(
                index=i,
                uuid=f"GPU-{i}",
                serial=f"1650{i}",
                model="NVIDIA H100 80GB HBM3",
                mem_total_bytes=85_520_809_984,
                power_limit_mw=700_000,
                samples=60,
                energy_start_mj=0,
                energy_end_mj=36_000_000,
                power_mean_mw=600_000,
                power_max_mw=650_000,
                util_mean_permille=900,
                mem_used_max_bytes=1,
                workloads=(Workload(TENANT, "k8s_pod", "ns/train-0", 1, 1, 1000, WINDOW),),
            )
            for i in range(2)
        )
        w = UsageWindow(
            node_id="n1",
            boot_id="b",
            agent_version="0.1.0",
            start_ms=start,
            end_ms=start + WINDOW,
            sample_interval_ms=1000,
            chain=Chain("sha256:k", seq, None if seq == 0 else "0" * 64),
            gpus=gpus,
        )
        payload = statement_bytes(w)
        out.append(
            StatementRecord(
                "sha256:k",
                seq,
                "n1",
                start,
                start + WINDOW,
                hashlib.sha256(payload).hexdigest(),
                payload,
                "application/vnd.in-toto+json",
                (),
                start + WINDOW,
            )  # fmt: skip
        )
    return out


def test_report_shows_the_state_and_the_history(store: Any) -> None:
    _save_finding(store)
    source = _ReportSource(store, _statements())
    text, data = build_report(source, FID, ReportOptions(), generated_ms=T0 + 10 * WINDOW, version="test")
    assert data.workflow == WorkflowState("open", None)
    assert "<h2>Workflow</h2>" in text and "State: <strong>open</strong>" in text and "nobody has acted" in text

    store.record_finding_action(FID, "assign", "alice", "", T0 + 1, assignee="bob")
    store.record_finding_action(FID, "close", "bob", "reviewed: <licensed> lab", T0 + 2)
    text, data = build_report(source, FID, ReportOptions(), generated_ms=T0 + 10 * WINDOW, version="test")
    assert [a.action for a in data.actions] == ["assign", "close"]
    assert "State: <strong>closed</strong>, assigned to <strong>bob</strong>" in text
    assert "<td>assign to bob</td><td>alice</td>" in text
    assert "reviewed: &lt;licensed&gt; lab" in text, "a reason is escaped like everything a person typed"
