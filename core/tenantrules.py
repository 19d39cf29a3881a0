"""Tenant rules: the operator's mapping from workloads to tenants, and its file format.

The ``[tenants]`` table of the agent config (docs/formats.md, "Tenant rules"), parsed by one
parser (:func:`parse_tenant_rules`) for both readers: the agent, which maps its processes'
workloads (``agent.attribution``), and the collector, which maps dcgm-exporter's labels
(``collector.prometheus.rules``). Example::

    [tenants.namespaces]
    team-a = "t-17"
    [tenants.slurm_accounts]
    physics = "t-3"
    [tenants.uids]
    1000 = "t-4"
    [[tenants.lease]]
    tenant = "t-17"
    start = 2026-03-01T00:00:00Z
    end = 2026-04-01T00:00:00Z
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from attestation.statement import UNATTRIBUTED
from core.errors import ConfigError


def _covers(start: float | None, end: float | None, t: float) -> bool:
    return (start is None or start <= t) and (end is None or t < end)


@dataclass(frozen=True)
class Lease:
    """The whole node belongs to ``tenant`` for Unix seconds in [start, end). None: unbounded."""

    tenant: str
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if not self.tenant or self.tenant == UNATTRIBUTED:
            raise ValueError(f"lease tenant must be a tenant name, got {self.tenant!r}")
        if self.start is not None and self.end is not None and not self.start < self.end:
            raise ValueError(f"lease for {self.tenant!r}: start {self.start} is not before end {self.end}")

    def active(self, t: float) -> bool:
        """Whether the lease covers Unix time ``t`` (seconds)."""
        return _covers(self.start, self.end, t)


def _overlap(a: Lease, b: Lease) -> bool:
    lo = max(x for x in (a.start, b.start, float("-inf")) if x is not None)
    hi = min(x for x in (a.end, b.end, float("inf")) if x is not None)
    return lo < hi


@dataclass(frozen=True)
class TenantRules:
    """The operator's mapping from workloads to tenants (built once from the agent config).

    ``namespaces``: Kubernetes namespace -> tenant. ``slurm_accounts``: Slurm account ->
    tenant. ``uids``: host uid -> tenant (user slices, Slurm jobs, bare processes).
    ``containers``: container-id prefix -> tenant (the longest matching prefix wins; names
    would need a runtime resolver, which this agent does not have yet). ``leases``: whole-node
    leases; they must not overlap.
    """

    namespaces: dict[str, str] = field(default_factory=dict)
    slurm_accounts: dict[str, str] = field(default_factory=dict)
    uids: dict[int, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)
    leases: tuple[Lease, ...] = ()

    def __post_init__(self) -> None:
        for name, table in (
            ("namespaces", self.namespaces),
            ("slurm_accounts", self.slurm_accounts),
            ("uids", self.uids),
            ("containers", self.containers),
        ):
            for key, tenant in table.items():
                if not tenant or tenant == UNATTRIBUTED:
                    raise ValueError(f"tenant rule {name}[{key!r}]: {tenant!r} is not a tenant name")
        for key in self.containers:
            if not key:
                raise ValueError("tenant rule containers: an empty prefix would match every container")
        for i, a in enumerate(self.leases):
            for b in self.leases[i + 1 :]:
                if _overlap(a, b):
                    raise ValueError(
                        f"leases overlap: {a.tenant!r} [{a.start}, {a.end}) and {b.tenant!r} [{b.start}, {b.end})"
                    )

    def lease_at(self, t: float) -> Lease | None:
        """The lease active at Unix time ``t`` (seconds), if any."""
        for lease in self.leases:
            if lease.active(t):
                return lease
        return None

    def container_tenant(self, container_id: str) -> str | None:
        best: tuple[int, str] | None = None
        for prefix, tenant in self.containers.items():
            if container_id.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), tenant)
        return best[1] if best else None


def _time(v: Any, what: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            raise ConfigError(f"{what}: give a time zone (e.g. 2026-03-01T00:00:00Z)")
        return v.timestamp()
    raise ConfigError(f"{what}: expected an RFC 3339 date-time, got {v!r}")


def _str_map(v: Any, what: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise ConfigError(f"{what}: expected a table of strings")
    return dict(v)


def parse_tenant_rules(t: Any) -> TenantRules:
    """The ``[tenants]`` table (as ``tomllib`` read it) as TenantRules; ConfigError names the key."""
    if not isinstance(t, dict):
        raise ConfigError("[tenants] must be a table")
    known = {"namespaces", "slurm_accounts", "uids", "containers", "lease"}
    for k in t:
        if k not in known:
            raise ConfigError(f"tenants: unknown key {k!r} (known: {', '.join(sorted(known))})")
    uids = {}
    for k, v in _str_map(t.get("uids", {}), "tenants.uids").items():
        if not k.isdigit():
            raise ConfigError(f"tenants.uids: {k!r} is not a uid")
        uids[int(k)] = v
    leases = []
    raw = t.get("lease", [])
    if not isinstance(raw, list):
        raise ConfigError("tenants.lease: expected [[tenants.lease]] tables")
    for i, lease in enumerate(raw):
        if not isinstance(lease, dict) or not isinstance(lease.get("tenant"), str):
            raise ConfigError(f'tenants.lease[{i}]: needs tenant = "..."')
        extra = set(lease) - {"tenant", "start", "end"}
        if extra:
            raise ConfigError(f"tenants.lease[{i}]: unknown key(s) {sorted(extra)}")
        start = _time(lease.get("start"), f"tenants.lease[{i}].start")
        end = _time(lease.get("end"), f"tenants.lease[{i}].end")
        try:
            leases.append(Lease(tenant=lease["tenant"], start=start, end=end))
        except ValueError as exc:
            raise ConfigError(f"tenants.lease[{i}]: {exc}") from exc
    try:
        return TenantRules(
            namespaces=_str_map(t.get("namespaces", {}), "tenants.namespaces"),
            slurm_accounts=_str_map(t.get("slurm_accounts", {}), "tenants.slurm_accounts"),
            uids=uids,
            containers=_str_map(t.get("containers", {}), "tenants.containers"),
            leases=tuple(leases),
        )
    except ValueError as exc:
        raise ConfigError(f"tenants: {exc}") from exc
