"""The verifier holds the log to what the nodes saw: checkpoints signed into statements
(predicate.log_checkpoint) must be prefixes of the bundle's checkpoint, and sizes never
go back along a node's chain. Confidential-computing reports must be bound to the chain."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from cc_factory import Pki
from test_verify_tamper import ORIGIN, Node, Site

from attestation.cc import CC_EVENT, CcReport, cc_nonce
from attestation.statement import Event, LogCheckpointRef
from attestation.verify import Report, verify_bundle


def _verify(doc: dict[str, Any]) -> Report:
    return verify_bundle(json.dumps(doc).encode())


def _failures(report: Report) -> list[str]:
    return [str(f) for f in report.failures]


def _seen(site: Site) -> LogCheckpointRef:
    cp = site.log.checkpoint(0).checkpoint
    return LogCheckpointRef(origin=ORIGIN, size=cp.size, root_sha256=cp.root.hex())


def test_checkpoints_the_nodes_saw_are_proven_prefixes_of_the_bundles() -> None:
    site = Site()
    a, b = site.enroll(Node("a")), site.enroll(Node("b"))
    site.send(a, 3)
    seen3 = _seen(site)
    site.send(b, 2, log_checkpoint=seen3)
    seen5 = _seen(site)
    site.send(a, 2, log_checkpoint=seen5)
    doc = site.bundle()
    assert sorted(s["size"] for s in doc["seen_checkpoints"]) == [3, 5]
    report = _verify(doc)
    assert report.ok, _failures(report)


def test_a_node_shown_a_smaller_log_later_is_a_rollback() -> None:
    site = Site()
    a = site.enroll(Node("a"))
    site.send(a, 2)
    seen2 = _seen(site)
    site.send(a, 2)
    seen4 = _seen(site)
    site.send(a, 1, log_checkpoint=seen4)
    site.send(a, 1, log_checkpoint=seen2)
    report = _verify(site.bundle())
    assert report.reasons() == {"checkpoint_rollback"}, _failures(report)
    (f,) = report.failures
    assert f.seq == 5 and "size 2 after one of size 4" in f.message, f


def test_a_log_rewritten_after_a_node_recorded_its_head() -> None:
    """The node signed (size 3, root R); the log now has another root at size 3."""
    site = Site()
    a = site.enroll(Node("a"))
    site.send(a, 3)
    real = _seen(site)
    forged = msgspec.structs.replace(real, root_sha256="ab" * 32)
    site.send(a, 1, log_checkpoint=forged)
    report = _verify(site.bundle())
    assert report.reasons() == {"seen_checkpoint_inconsistent"}, _failures(report)


def test_a_bundle_checkpoint_smaller_than_what_a_node_saw() -> None:
    site = Site()
    a = site.enroll(Node("a"))
    site.send(a, 1, log_checkpoint=LogCheckpointRef(ORIGIN, 99, "cd" * 32))
    report = _verify(site.bundle())
    assert report.reasons() == {"seen_checkpoint_beyond_bundle"}, _failures(report)


def test_checkpoints_of_another_log_are_not_held_against_this_one() -> None:
    site = Site()
    a = site.enroll(Node("a"))
    site.send(a, 1, log_checkpoint=LogCheckpointRef("gpuaudit/other", 99, "cd" * 32))
    report = _verify(site.bundle())
    assert report.ok, _failures(report)


def _with_cc(node: Node, nonce: bytes, pki: Pki) -> Any:
    w = node.window()
    cc = CcReport(nonce, pki.report(nonce), pki.chain_pem())  # signed SPDM report, test PKI
    g0 = msgspec.structs.replace(w.gpus[0], events=(Event(CC_EVENT, cc.detail()),))
    return (g0, *w.gpus[1:])


def test_a_cc_report_bound_to_the_chain_verifies_and_a_moved_one_fails() -> None:
    site = Site()
    pki = Pki()
    a = site.enroll(Node("a"))
    site.send(a, 1)
    good = cc_nonce(a.key_id, a.seq, a.prev)
    site.send(a, 1, gpus=_with_cc(a, good, pki))
    report = verify_bundle(json.dumps(site.bundle()).encode(), cc_root=pki.root)
    assert report.ok, _failures(report)
    stale = cc_nonce(a.key_id, a.seq - 1, None)  # a report made for an earlier chain position
    site.send(a, 1, gpus=_with_cc(a, stale, pki))
    report = verify_bundle(json.dumps(site.bundle()).encode(), cc_root=pki.root)
    assert report.reasons() == {"cc_report_unbound"}, _failures(report)
    assert report.failures[0].seq == 2
