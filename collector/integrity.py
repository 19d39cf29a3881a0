"""Integrity findings: a node's own signed records that contradict each other.

Ingest raises one of these when two validly signed statements of one key cannot both be
honest, and keeps both envelopes inside the finding (Findings JSON ``evidence``), so the
finding proves itself to anyone holding the node's public key:

- ``equivocation``: two different statements with the same (key, seq) for the same time;
- ``rollback``: a statement reusing an already used seq for a later window (the agent's
  chain state was restored from an older copy);
- ``unexplained_reboot``: a new boot id on an unbroken chain without the ``agent_start``
  event a restarted agent puts into its first statement;
- ``energy_reset``: a GPU's energy counter went back with no ``energy_counter_reset``
  event (the statement is refused; the finding keeps it).

Severity is always ``high``: each means the node, its agent or its key is not behaving
as enrolled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from attestation.dsse import Envelope

KINDS = ("equivocation", "rollback", "unexplained_reboot", "energy_reset")
SEVERITY = "high"


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class IntegrityFinding:
    kind: str
    node_id: str
    key_id: str
    seq: int
    detected_ms: int
    started_ms: int
    message: str
    # The two signed records that prove it: (earlier/stored, later/offending).
    evidence: tuple[Envelope, Envelope]

    @property
    def id(self) -> str:
        h = hashlib.sha256()
        for part in (self.kind, self.key_id, str(self.seq), *(e.digest() for e in self.evidence)):
            h.update(part.encode() + b"\n")
        return f"{self.kind}-{h.hexdigest()[:16]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": SEVERITY,
            "tenant": "",
            "node": self.node_id,
            "key_id": self.key_id,
            "seq": self.seq,
            "started_at": _rfc3339(self.started_ms),
            "detected_at": _rfc3339(self.detected_ms),
            "message": self.message,
            "evidence": [{"digest": e.digest(), "envelope": e.to_json()} for e in self.evidence],
        }

    def json_text(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def format_integrity(doc: dict[str, Any]) -> list[str]:
    """Lines for ``gpuaudit-collector findings``."""
    return [
        f"{doc['id']}  {str(doc['severity']).upper():8s} {doc['kind']}  node {doc.get('node')} key "
        f"{str(doc.get('key_id'))[:19]}… seq {doc.get('seq')}",
        f"    {doc.get('message')} (detected {doc.get('detected_at')}; {len(doc.get('evidence', []))} signed "
        "records kept as evidence)",
    ]
