"""Findings and their JSON form (Findings JSON, issue 2 / README "Formats").

A finding is immutable; the engine replaces it with an updated copy as a run goes on.
``id``, ``started_at`` and ``detected_at`` never change once raised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from collector.detect.enduse import SEVERITIES as SEVERITIES  # re-exported: one list of severities
from collector.detect.enduse import EndUseRisk
from collector.detect.opacity import Opacity

_logger = logging.getLogger(__name__)

KIND_LARGE_TRAINING = "large_training"


def rfc3339_ms(ms: int) -> str:
    """Event time in ms since the epoch as RFC 3339 UTC with a 'Z' (milliseconds only if any)."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    if ms % 1000:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339_ms(text: str) -> int:
    """The inverse of ``rfc3339_ms``: ms since the epoch, exact (no float rounding). Raises ValueError."""
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(t.timestamp()) * 1000 + t.microsecond // 1000


def finding_id(kind: str, tenants: Iterable[str], started_at_ms: int) -> str:
    """Stable id: the same run (tenants, start) gets the same id on every replay."""
    key = f"{kind}|{'+'.join(sorted(tenants))}|{started_at_ms}"
    return "f-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Finding:
    id: str
    kind: str
    tenant: str
    tenants: tuple[str, ...]
    severity: str
    started_at_ms: int
    detected_at_ms: int
    updated_at_ms: int
    gpus: int
    nodes: int
    gpu_hours: float
    flop_estimate: tuple[float, float] | None
    score: float
    opacity: Opacity
    evidence: dict[str, Any] = field(default_factory=dict)
    end_use_risk: EndUseRisk | None = None
    """None: not assessed (a finding stored before end-use risk existed); ``end_use_risk``
    is then absent from the JSON."""

    def to_json(self) -> dict[str, Any]:
        """Findings JSON: the fields of issue 2, plus ``tenants`` (the linked group) and
        ``end_use_risk`` (issue 20) where assessed."""
        doc = {
            "id": self.id,
            "kind": self.kind,
            "tenant": self.tenant,
            "tenants": list(self.tenants),
            "severity": self.severity,
            "started_at": rfc3339_ms(self.started_at_ms),
            "detected_at": rfc3339_ms(self.detected_at_ms),
            "gpus": self.gpus,
            "nodes": self.nodes,
            "gpu_hours": round(self.gpu_hours, 2),
            "flop_estimate": None if self.flop_estimate is None else [self.flop_estimate[0], self.flop_estimate[1]],
            "score": round(self.score, 3),
            "opacity": self.opacity.to_json(),
            "evidence": self.evidence,
        }
        if self.end_use_risk is not None:
            doc["end_use_risk"] = self.end_use_risk.to_json()
        return doc
