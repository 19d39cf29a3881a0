"""What the verifier reports: every ``Failure`` with its step and a stable reason, the
usage it counted per GPU serial and tenant, and the summaries of coverage per serial, node
and tenant (``Report``; ``Report.to_json`` is the ``--json`` output of gpuaudit-verify).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from attestation.checkpoint import Checkpoint
from attestation.coverage import Coverage
from attestation.errors import VerificationError
from attestation.heads import HeadsCommitment

MS_PER_HOUR = 3_600_000
MJ_PER_KWH = 3_600_000_000

# Steps, in the order they run; each failure names one.
STEPS = (
    "bundle",
    "checkpoint",
    "enrollment",
    "signature",
    "chain",
    "inclusion",
    "seen_checkpoints",
    "consistency",
    "cc_attestation",
    "tenants",
    "completeness",
)
TRUST_PINNED = "pinned"
TRUST_ON_FIRST_USE = "trust_on_first_use"


@dataclass(frozen=True)
class Failure:
    """One verification problem: the step, a stable reason, and what a person needs to know."""

    step: str
    reason: str
    message: str
    entry: int | None = None  # index into the bundle's entries
    key_id: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "reason": self.reason,
            "message": self.message,
            "entry": self.entry,
            "key_id": self.key_id,
            "seq": self.seq,
        }

    def __str__(self) -> str:
        where = []
        if self.entry is not None:
            where.append(f"entry {self.entry}")
        if self.key_id is not None:
            where.append(f"key {self.key_id[:19]}…")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        return f"[{self.step}] {self.reason}: " + (f"{', '.join(where)}: " if where else "") + self.message


@dataclass
class TenantUsage:
    gpu_ms: int = 0
    energy_mj: int = 0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_ms / MS_PER_HOUR

    @property
    def energy_kwh(self) -> float:
        return self.energy_mj / MJ_PER_KWH


@dataclass
class GpuUsage:
    """Usage of one GPU (by serial, or ``uuid:<UUID>`` when the serial could not be read)."""

    serial: str
    node_ids: set[str] = field(default_factory=set)
    key_ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    tenants: dict[str, TenantUsage] = field(default_factory=dict)
    windows: list[tuple[int, int]] = field(default_factory=list)
    windows_without_energy: int = 0

    def gaps(self) -> list[tuple[int, int]]:
        """Intervals between the first and last window that no statement covers."""
        out: list[tuple[int, int]] = []
        end: int | None = None
        for s, e in sorted(self.windows):
            if end is not None and s > end:
                out.append((end, s))
            end = e if end is None else max(end, e)
        return out

    def to_json(self) -> dict[str, Any]:
        ws = sorted(self.windows)
        return {
            "serial": self.serial,
            "nodes": sorted(self.node_ids),
            "models": sorted(self.models),
            "first_ms": ws[0][0] if ws else None,
            "last_ms": ws[-1][1] if ws else None,
            "windows": len(ws),
            "windows_without_energy": self.windows_without_energy,
            "tenants": {
                t: {
                    "gpu_ms": u.gpu_ms,
                    "gpu_hours": round(u.gpu_hours, 6),
                    "energy_mj": u.energy_mj,
                    "energy_kwh": round(u.energy_kwh, 6),
                }
                for t, u in sorted(self.tenants.items())
            },
            "gaps": [{"start_ms": s, "end_ms": e} for s, e in self.gaps()],
        }

    @property
    def gpu_ms(self) -> int:
        return sum(u.gpu_ms for u in self.tenants.values())

    @property
    def energy_mj(self) -> int:
        return sum(u.energy_mj for u in self.tenants.values())


@dataclass
class SerialSummary:
    """One GPU serial over the bundle's period: usage, coverage, integrity problems."""

    serial: str
    nodes: list[str]
    gpu_ms: int
    energy_mj: int
    coverage: Coverage | None
    problems: int

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "nodes": self.nodes,
            "gpu_hours": round(self.gpu_ms / MS_PER_HOUR, 6),
            "energy_kwh": round(self.energy_mj / MJ_PER_KWH, 6),
            "coverage": None if self.coverage is None else self.coverage.to_json(),
            "problems": self.problems,
        }


@dataclass
class NodeSummary:
    node_id: str
    keys: list[str]
    coverage: Coverage | None
    problems: int
    in_bundle: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "keys": self.keys,
            "in_bundle": self.in_bundle,
            "coverage": None if self.coverage is None else self.coverage.to_json(),
            "problems": self.problems,
        }


@dataclass
class TenantSummary:
    """One tenant (pseudonym) across the bundle: GPU-hours, energy, the coverage of the
    serials it used, and the integrity problems of the nodes that ran it."""

    tenant: str
    gpu_ms: int = 0
    energy_mj: int = 0
    serials: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    covered_ms: int = 0
    period_ms: int = 0
    problems: int = 0

    @property
    def coverage_text(self) -> str:
        tenths = self.covered_ms * 1000 // self.period_ms if self.period_ms else 1000
        return f"{tenths // 10}.{tenths % 10}%"

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "gpu_hours": round(self.gpu_ms / MS_PER_HOUR, 6),
            "energy_kwh": round(self.energy_mj / MJ_PER_KWH, 6),
            "serials": len(self.serials),
            "nodes": len(self.nodes),
            "coverage_of_its_serials": round(self.covered_ms / self.period_ms, 6) if self.period_ms else None,
            "problems": self.problems,
        }


@dataclass
class Report:
    failures: list[Failure] = field(default_factory=list)
    gpus: dict[str, GpuUsage] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    previous: Checkpoint | None = None
    entries: int = 0
    keys: int = 0
    selection: Any = None
    # Pseudonym -> KYC summary, signed by the log key (empty when the bundle carries none).
    tenant_summaries: dict[str, Any] = field(default_factory=dict)
    # Gaps in a chain that a signed ``dropped`` record explains (the agent's spool dropped
    # them unsent): not failures, but usage in them is unknown.
    explained_gaps: list[dict[str, Any]] = field(default_factory=list)
    # Where the log key came from, when the vendor pinned it (``PinnedLogKey.source``);
    # empty: the bundle's own key was trusted on first use.
    log_key_pinned_by: list[str] = field(default_factory=list)
    # The log key the checkpoint was checked with ("sha256:" + hex SHA-256 of its DER SPKI).
    log_key_fingerprint: str | None = None
    # The checkpoint's per-key heads (attestation/heads.py); None: it commits to none.
    heads: HeadsCommitment | None = None
    # What was checked for completeness, and what could not be (for a person).
    completeness_notes: list[str] = field(default_factory=list)
    period: tuple[int, int] | None = None
    serials: dict[str, SerialSummary] = field(default_factory=dict)
    nodes: dict[str, NodeSummary] = field(default_factory=dict)
    tenants: dict[str, TenantSummary] = field(default_factory=dict)
    missing_serials: list[str] = field(default_factory=list)  # requested, no statement names them

    @property
    def log_key_trust(self) -> str:
        return TRUST_PINNED if self.log_key_pinned_by else TRUST_ON_FIRST_USE

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, step: str, reason: str, message: str, **where: Any) -> None:
        self.failures.append(Failure(step, reason, message, **where))

    def reasons(self) -> set[str]:
        return {f.reason for f in self.failures}

    def raise_for_failures(self) -> None:
        if self.failures:
            first = self.failures[0]
            raise VerificationError(
                f"{len(self.failures)} verification failure(s); first: {first}", reason=first.reason
            )

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "ok": self.ok,
            "entries": self.entries,
            "keys": self.keys,
            "selection": self.selection,
            "checkpoint": None
            if cp is None
            else {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode("ascii")},
            "previous_checkpoint": None if self.previous is None else {"size": self.previous.size},
            "failures": [f.to_json() for f in self.failures],
            "explained_gaps": list(self.explained_gaps),
            "log_key_pinned_by": list(self.log_key_pinned_by),
            "log_key": {
                "fingerprint": self.log_key_fingerprint,
                "trust": self.log_key_trust,
                "pinned_by": list(self.log_key_pinned_by),
            },
            "period": None if self.period is None else {"start_ms": self.period[0], "end_ms": self.period[1]},
            "completeness": {
                "heads": None if self.heads is None else {"count": self.heads.count, "signed_ms": self.heads.signed_ms},
                "notes": list(self.completeness_notes),
                "missing_serials": list(self.missing_serials),
            },
            "tenants": [self.tenants[t].to_json() for t in sorted(self.tenants)],
            "serials": [self.serials[s].to_json() for s in sorted(self.serials)],
            "nodes": [self.nodes[n].to_json() for n in sorted(self.nodes)],
            "gpus": [self.gpus[s].to_json() for s in sorted(self.gpus)],
            "tenant_summaries": self.tenant_summaries,
        }
