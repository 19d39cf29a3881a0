"""Integrity findings (equivocation, rollback, unexplained reboot, energy reset) reach the
findings metrics as ingest records them, once per finding, and again after a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec

from attestation.chain import AGENT_START_EVENT
from attestation.dsse import Envelope
from attestation.statement import Chain, Event
from collector.ingest import Accepted, Ingestor, Refused
from collector.integrity import KINDS
from collector.metrics import CollectorMetrics

NOW_MS = 1_700_000_000_000  # the store fixture's clock (conftest.py)
NodeChain = Any  # conftest.py's NodeChain, reached through fixtures
Enroll = Callable[..., NodeChain]


def value(m: CollectorMetrics, name: str, **labels: str) -> float | None:
    for fam in m.registry.collect():
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def _counts(m: CollectorMetrics, kind: str) -> tuple[float | None, float | None]:
    return (
        value(m, "gpuaudit_findings", kind=kind, severity="high"),
        value(m, "gpuaudit_findings_raised_total", kind=kind, severity="high"),
    )


def _twin(node: NodeChain, seq: int, prev: str | None, start_ms: int) -> Envelope:
    """A second, different statement for ``seq``."""
    w = node.window(chain=Chain(node.key_id, seq, prev), start_ms=start_ms, end_ms=start_ms + 60_000)
    w = msgspec.structs.replace(w, gpus=(msgspec.structs.replace(w.gpus[0], util_mean_permille=1), *w.gpus[1:]))
    env: Envelope = node.sign(w)
    return env


def test_every_integrity_kind_exists_at_zero() -> None:
    m = CollectorMetrics("test")
    for kind in KINDS:
        assert _counts(m, kind) == (0, 0), f"{kind}: alerts take increase() of it, so it must exist at 0"


def test_an_equivocation_is_counted_once_and_survives_a_restart(store: Any, enroll: Enroll) -> None:
    m = CollectorMetrics("test")
    m.load_store(store)
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS, on_finding=m.observe_integrity_finding)
    node = enroll("n1", gpus=1)
    envs = node.take(3)
    assert all(isinstance(r, Accepted) for r in ingestor.ingest_batch([(node.key_id, e) for e in envs]))
    assert _counts(m, "equivocation") == (0, 0)
    w1 = json.loads(envs[1].payload)["predicate"]["window"]
    forged = _twin(node, 1, envs[0].digest(), w1["start_ms"])
    (res,) = ingestor.ingest_batch([(node.key_id, forged)])
    assert isinstance(res, Refused) and res.reason == "equivocation", res
    assert _counts(m, "equivocation") == (1, 1)
    ingestor.ingest_batch([(node.key_id, forged)])  # sent again: the same finding
    assert _counts(m, "equivocation") == (1, 1), "a finding recorded again must not count twice"
    assert _counts(m, "large_training") == (0, 0)

    restarted = CollectorMetrics("test")
    restarted.load_store(store)
    assert value(restarted, "gpuaudit_findings", kind="equivocation", severity="high") == 1
    again = Ingestor(store, clock_ms=lambda: NOW_MS, on_finding=restarted.observe_integrity_finding)
    again.ingest_batch([(node.key_id, forged)])
    assert value(restarted, "gpuaudit_findings", kind="equivocation", severity="high") == 1, (
        "a finding loaded from the store at start must not count again when it is recorded again"
    )


def test_rollback_reboot_and_energy_reset_are_counted_by_kind(store: Any, enroll: Enroll) -> None:
    m = CollectorMetrics("test")
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS, on_finding=m.observe_integrity_finding)
    # rollback: a reused seq for a window after the chain head
    a = enroll("n-a", gpus=1)
    envs = a.take(3)
    ingestor.ingest_batch([(a.key_id, e) for e in envs])
    ingestor.ingest_batch([(a.key_id, _twin(a, 1, envs[0].digest(), a.start_ms + 600_000))])
    # unexplained reboot: a new boot id without an agent_start event (the statement is stored)
    b = enroll("n-b", gpus=1)
    first = b.next()
    explained = b.next(boot_id="boot-2", events=(Event(AGENT_START_EVENT, "boot_id boot-2"),))
    unexplained = b.next(boot_id="boot-3")
    ingestor.ingest_batch([(b.key_id, e) for e in (first, explained, unexplained)])
    # energy reset: a GPU's counter goes back without an energy_counter_reset event
    c = enroll("n-c", gpus=1)
    ingestor.ingest_batch([(c.key_id, c.next())])
    w = c.window()
    back = msgspec.structs.replace(w, gpus=(msgspec.structs.replace(w.gpus[0], energy_start_mj=1, energy_end_mj=2),))
    (res,) = ingestor.ingest_batch([(c.key_id, c.sign(back))])
    assert isinstance(res, Refused) and res.reason == "energy_decrease", res
    got = {kind: _counts(m, kind) for kind in KINDS}
    assert got == {
        "equivocation": (0, 0),
        "rollback": (1, 1),
        "unexplained_reboot": (1, 1),
        "energy_reset": (1, 1),
    }, got
    assert {f.kind for f in store.findings()} == {"rollback", "unexplained_reboot", "energy_reset"}
