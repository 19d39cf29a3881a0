"""Integrity findings raised on ingest, each carrying the two signed records that prove it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from attestation import dsse
from attestation.chain import AGENT_START_EVENT
from attestation.dsse import Envelope
from attestation.statement import Chain, Event
from collector.cli import format_findings
from collector.ingest import Accepted, Ingestor, Refused

NodeChain = Any  # conftest.py's NodeChain, reached through fixtures
Enroll = Callable[..., NodeChain]


def _findings(store: Any) -> list[dict[str, Any]]:
    return [json.loads(r.json_text) for r in store.findings()]


def _proves(doc: dict[str, Any], earlier: Envelope, later: Envelope, node: NodeChain) -> None:
    """The finding's evidence is exactly the two envelopes, and both verify with the node's key."""
    digests = [e["digest"] for e in doc["evidence"]]
    assert digests == [earlier.digest(), later.digest()], f"evidence {digests} is not the two conflicting records"
    for e in doc["evidence"]:
        dsse.verify(Envelope.from_json(e["envelope"]), node.signer.public_key())
    assert doc["severity"] == "high"


def _twin(node: NodeChain, seq: int, prev: str | None, start_ms: int) -> Envelope:
    """A second, different statement for ``seq``."""
    w = node.window(chain=Chain(node.key_id, seq, prev), start_ms=start_ms, end_ms=start_ms + 60_000)
    w = msgspec.structs.replace(w, gpus=(msgspec.structs.replace(w.gpus[0], util_mean_permille=1), *w.gpus[1:]))
    return node.sign(w)


def test_equivocation_keeps_both_statements(store: Any, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll("n1", gpus=1)
    envs = node.take(3)
    assert all(isinstance(r, Accepted) for r in ingestor.ingest_batch([(node.key_id, e) for e in envs]))
    w1 = json.loads(envs[1].payload)["predicate"]["window"]
    forged = _twin(node, 1, envs[0].digest(), w1["start_ms"])
    (res,) = ingestor.ingest_batch([(node.key_id, forged)])
    assert isinstance(res, Refused) and res.reason == "equivocation", res
    (doc,) = _findings(store)
    assert doc["kind"] == "equivocation" and doc["seq"] == 1
    _proves(doc, envs[1], forged, node)
    # Sent again (an agent retrying): still one finding.
    ingestor.ingest_batch([(node.key_id, forged)])
    assert len(_findings(store)) == 1
    assert "equivocation" in format_findings(_findings(store))


def test_a_reused_seq_for_a_later_window_is_a_rollback(store: Any, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll("n1", gpus=1)
    envs = node.take(3)
    ingestor.ingest_batch([(node.key_id, e) for e in envs])
    forged = _twin(node, 1, envs[0].digest(), node.start_ms + 600_000)
    (res,) = ingestor.ingest_batch([(node.key_id, forged)])
    assert isinstance(res, Refused)
    (doc,) = _findings(store)
    assert doc["kind"] == "rollback", doc["kind"]
    _proves(doc, envs[1], forged, node)


def test_a_new_boot_id_needs_an_agent_start(store: Any, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll("n1", gpus=1)
    first = node.next()
    explained = node.next(boot_id="boot-2", events=(Event(AGENT_START_EVENT, "boot_id boot-2"),))
    unexplained = node.next(boot_id="boot-3")
    results = ingestor.ingest_batch([(node.key_id, e) for e in (first, explained, unexplained)])
    assert all(isinstance(r, Accepted) for r in results), "a reboot finding must not cost the statement"
    (doc,) = _findings(store)
    assert doc["kind"] == "unexplained_reboot" and doc["seq"] == 2, doc
    _proves(doc, explained, unexplained, node)


def test_an_energy_counter_going_back_without_a_reason(store: Any, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll("n1", gpus=1)
    first = node.next()
    w = node.window()
    w = msgspec.structs.replace(w, gpus=(msgspec.structs.replace(w.gpus[0], energy_start_mj=5, energy_end_mj=10),))
    reset = node.sign(w)
    results = ingestor.ingest_batch([(node.key_id, first), (node.key_id, reset)])
    assert isinstance(results[1], Refused) and results[1].reason == "energy_decrease"
    (doc,) = _findings(store)
    assert doc["kind"] == "energy_reset"
    _proves(doc, first, reset, node)


@pytest.mark.parametrize("kind", ["equivocation", "rollback", "unexplained_reboot", "energy_reset"])
def test_findings_cli_lists_integrity_findings(kind: str) -> None:
    doc = {"id": f"{kind}-0", "kind": kind, "severity": "high", "node": "n1", "key_id": "sha256:ab", "seq": 3,
           "message": "m", "detected_at": "2026-01-01T00:00:00Z", "evidence": [{}, {}]}  # fmt: skip
    text = format_findings([doc])
    assert kind in text and "node n1" in text and "2 signed records" in text, text
