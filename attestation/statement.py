"""The usage-window statement: an in-toto Statement v1 with gpuaudit's predicate.

One statement per node per window says which tenant used which GPU how much. Everything
signed is an integer with its unit in its name, a string, a list or an object: there are
no floats. A reading the node could not take is ``null`` and its reason is recorded in the
``unavailable`` map beside it, so that "0" and "not measured" are never confused.

Schema (predicate type ``https://gpuaudit.dev/usage-window/v1``; docs/formats.md)::

    {"node": {"id", "boot_id", "agent_version"},
     "window": {"start_ms", "end_ms", "sample_interval_ms"},
     "chain": {"key_id", "seq", "prev"},          # prev: hex SHA-256 of the previous PAE, null at seq 0
     "gpus": [GpuWindow...],
     "node_io": NodeIo | null,
     "unavailable": {field: reason},             # node-level blind spots
     "events": [{"kind", "detail"}],
     "log_checkpoint": {"origin", "size", "root_sha256"},  # optional: latest log checkpoint seen
     "key_assurance": "software" | "tpm" | "hsm"}          # optional: where the signing key lives

A GPU may carry ``sharing`` (``exclusive``, ``time_slice``, ``mps``, ``mig``) and, with MIG
mode on, ``mig``: ``{"slices_total", "instances": [...], "unavailable"}``; its
``split_method`` is then ``mig_slices`` when every process could be placed in an instance
of known size (docs/formats.md).

Readers MUST ignore unknown fields (additions within v1 are additive) and MUST reject a
known field of the wrong type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any

import msgspec

from attestation import strictjson
from attestation.errors import SchemaError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://gpuaudit.dev/usage-window/v1"
UNATTRIBUTED = "unattributed"


# Integer bounds of the schema, as the types carry them (attestation.statement_fast decodes
# straight into these classes and msgspec checks the bounds; the reference parser below
# checks the same ones by hand).
# No integer is above 2**53 - 1 (attestation.strictjson.MAX_SAFE_INTEGER): beyond it, JSON
# readers differ on the value (RFC 7493 §2.2), and the reference refuses the payload.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
Permille = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class _Record(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The statement's records: immutable values, equal when their fields are.

    ``msgspec`` structs rather than frozen dataclasses: ingest parses one statement per
    node per window, and on the fast path (attestation.statement_fast) the decoder builds
    these records itself, in C; a GpuWindow built from keywords takes about 1 us against 5
    for a frozen dataclass, and the whole parse of an 8-GPU statement went from about 70 to
    about 35 us. They hold no reference cycles, so the cyclic garbage collector does not
    track them (``gc=False``). Copy with changes: ``msgspec.structs.replace(record, ...)``;
    field names: ``msgspec.structs.fields(cls)``. Only the fast path decodes into them, and
    it leaves a statement with a field it does not know to the reference parser
    (``forbid_unknown_fields``; attestation.statement_fast)."""


# Kinds of workload a GPU process can belong to.
WORKLOAD_KINDS = ("k8s_pod", "container", "slurm_job", "user", "lease", "process")
# How a GPU's use is split between the workloads on it. ``mig_slices`` (additive within v1):
# each workload's share is the slices of the MIG GPU instances it ran in over the GPU's
# slices, so the shares of a MIG GPU add up to the part of it in use (at most 1000).
SPLIT_METHODS = ("exclusive", "process_sm", "memory", "equal", "mig_slices")
# How the GPU was shared (optional ``sharing``, additive within v1): one workload, or several
# by time-slicing, through MPS, or in MIG instances.
SHARING_MODES = ("exclusive", "time_slice", "mps", "mig")


class Workload(_Record, frozen=True):
    tenant: str
    kind: str
    workload: str
    processes: Count
    mem_max_bytes: Count | None
    share_permille: Permille
    # GPU time attributed to this workload in the window (sum over samples of the sample
    # interval times the workload's fraction of the GPU in that sample).
    gpu_ms: Count


class Series(_Record, frozen=True):
    """Per-bucket means inside the window, for synchronisation analysis. None: no sample."""

    bucket_ms: Positive
    util_permille: tuple[Permille | None, ...]
    power_mw: tuple[Count | None, ...]


class Event(_Record, frozen=True):
    kind: str
    detail: str


class MigInstance(_Record, frozen=True):
    """One MIG device (compute instance ``compute_instance_id`` of GPU instance
    ``gpu_instance_id``) over the window. ``slices`` is its GPU instance's slice count;
    ``sm_active_mean_permille`` and ``tensor_active_mean_permille`` are the GPU instance's
    GPM activity (NVML has no utilisation rate for MIG devices). A null field has its
    reason in ``unavailable``."""

    gpu_instance_id: Count
    compute_instance_id: Count | None
    uuid: str | None
    slices: Positive | None  # at most the GPU's slices_total
    samples: Count  # samples in which the instance was seen
    mem_total_bytes: Count | None
    mem_used_max_bytes: Count | None
    sm_active_mean_permille: Permille | None
    tensor_active_mean_permille: Permille | None
    processes: Count  # distinct PIDs seen in the instance
    # (tenant, kind, workload) of each workload seen in the instance, as in ``workloads``.
    workloads: tuple[tuple[str, str, str], ...] = ()
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)


class Mig(_Record, frozen=True):
    """A MIG-enabled GPU's instances over the window. ``slices_total`` is the GPU's slice
    count (null with ``unavailable["slices_total"]``)."""

    slices_total: Positive | None
    instances: tuple[MigInstance, ...] = ()
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)


class GpuWindow(_Record, frozen=True, kw_only=True):
    index: Count
    uuid: str
    serial: str | None
    model: str
    mem_total_bytes: Count | None
    power_limit_mw: Count | None
    samples: Count
    energy_start_mj: Count | None
    energy_end_mj: Count | None
    power_mean_mw: Count | None
    power_max_mw: Count | None
    util_mean_permille: Permille | None
    mem_used_max_bytes: Count | None
    sm_active_mean_permille: Permille | None = None
    tensor_active_mean_permille: Permille | None = None
    nvlink_tx_bytes: Count | None = None
    nvlink_rx_bytes: Count | None = None
    pcie_tx_bytes: Count | None = None
    pcie_rx_bytes: Count | None = None
    series: Series | None = None
    split_method: str = "exclusive"
    workloads: tuple[Workload, ...]  # required, even when empty
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)
    events: tuple[Event, ...] = ()
    # Optional, additive within v1 (omitted from the JSON when empty; docs/formats.md):
    # identity text by key (pci_bus_id, vbios_version, driver_version, ...), health integers
    # by key (maximum over the window's samples; bitwise OR for *_mask), reserved memory.
    identity: dict[str, str] = msgspec.field(default_factory=dict)
    health: dict[str, Count] = msgspec.field(default_factory=dict)
    mem_reserved_bytes: Count | None = None
    # Optional, additive within v1 (omitted when None): how the GPU was shared
    # (SHARING_MODES), and its MIG instances when MIG mode is on.
    sharing: str | None = None
    mig: Mig | None = None


class NodeIo(_Record, frozen=True):
    """Bytes moved during the window (totals, not rates). None: not measured."""

    ib_tx_bytes: Count | None = None
    ib_rx_bytes: Count | None = None
    net_tx_bytes: Count | None = None
    net_rx_bytes: Count | None = None
    disk_read_bytes: Count | None = None
    disk_write_bytes: Count | None = None


class Chain(_Record, frozen=True):
    key_id: str
    seq: int
    prev: str | None
    # Key epochs (optional, additive): a chain started by rotation names the key it
    # replaces and the digest of that key's last statement (the one carrying ``rotation``).
    epoch: int = 0
    prev_key_id: str | None = None
    prev_key_digest: str | None = None


class Rotation(_Record, frozen=True):
    """In a chain's last statement: the key that continues the node's record, signed by the old key."""

    new_key_id: str
    new_key_spki: bytes
    new_key_assurance: str = "software"


class Dropped(_Record, frozen=True):
    """Statements of this chain the agent had to drop before they were delivered.

    The agent's spool is bounded (agent/spool.py); when it must drop, the next statement it
    signs says which seqs (``from_seq``..``to_seq``, always ending right before the
    statement that carries this record), how many, why (``reason``: ``spool_size``,
    ``spool_age``) and the digest of the last one dropped, which is also the carrier's
    ``chain.prev``: the hash chain runs through the dropped statements, so a collector or
    verifier missing them sees a signed, explained gap instead of a silent hole.
    """

    from_seq: int
    to_seq: int
    count: int
    reason: str
    last_digest: str


class LogCheckpointRef(_Record, frozen=True):
    """The latest collector log checkpoint the node had received when it signed (origin,
    tree size, hex root hash): a rewritten log contradicts the nodes' own records."""

    origin: str
    size: Count
    root_sha256: str


class UsageWindow(_Record, frozen=True):
    """The predicate, as agent, collector and verifier see it."""

    node_id: str
    boot_id: str
    agent_version: str
    start_ms: Count
    end_ms: Count  # after start_ms
    sample_interval_ms: Count
    chain: Chain
    gpus: tuple[GpuWindow, ...]
    node_io: NodeIo | None = None
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)
    events: tuple[Event, ...] = ()
    # Optional, additive within v1 (omitted from the JSON when None):
    log_checkpoint: LogCheckpointRef | None = None
    # Where the signing key lives: "software", "tpm" or "hsm" (attestation.keys.Signer.assurance).
    key_assurance: str | None = None
    # Optional, additive within v1 (omitted when None): statements the agent dropped unsent.
    dropped: Dropped | None = None
    # Optional, additive within v1 (omitted when None): this is the key's last statement;
    # the node's record continues under the new key (docs/formats.md, "Key rotation").
    rotation: Rotation | None = None


# ---------------------------------------------------------------------------
# Serialisation


def _workload_json(w: Workload) -> dict[str, Any]:
    return {
        "tenant": w.tenant,
        "kind": w.kind,
        "workload": w.workload,
        "processes": w.processes,
        "mem_max_bytes": w.mem_max_bytes,
        "share_permille": w.share_permille,
        "gpu_ms": w.gpu_ms,
    }


def _gpu_json(g: GpuWindow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": g.index,
        "uuid": g.uuid,
        "serial": g.serial,
        "model": g.model,
        "mem_total_bytes": g.mem_total_bytes,
        "power_limit_mw": g.power_limit_mw,
        "samples": g.samples,
        "energy_start_mj": g.energy_start_mj,
        "energy_end_mj": g.energy_end_mj,
        "power_mean_mw": g.power_mean_mw,
        "power_max_mw": g.power_max_mw,
        "util_mean_permille": g.util_mean_permille,
        "mem_used_max_bytes": g.mem_used_max_bytes,
        "sm_active_mean_permille": g.sm_active_mean_permille,
        "tensor_active_mean_permille": g.tensor_active_mean_permille,
        "nvlink_tx_bytes": g.nvlink_tx_bytes,
        "nvlink_rx_bytes": g.nvlink_rx_bytes,
        "pcie_tx_bytes": g.pcie_tx_bytes,
        "pcie_rx_bytes": g.pcie_rx_bytes,
        "series": None
        if g.series is None
        else {
            "bucket_ms": g.series.bucket_ms,
            "util_permille": list(g.series.util_permille),
            "power_mw": list(g.series.power_mw),
        },
        "split_method": g.split_method,
        "workloads": [_workload_json(w) for w in g.workloads],
        "unavailable": dict(sorted(g.unavailable.items())),
        "events": [{"kind": e.kind, "detail": e.detail} for e in g.events],
    }
    if g.identity:
        out["identity"] = dict(sorted(g.identity.items()))
    if g.health:
        out["health"] = dict(sorted(g.health.items()))
    if g.mem_reserved_bytes is not None:
        out["mem_reserved_bytes"] = g.mem_reserved_bytes
    if g.sharing is not None:
        out["sharing"] = g.sharing
    if g.mig is not None:
        out["mig"] = _mig_json(g.mig)
    return out


def _mig_json(m: Mig) -> dict[str, Any]:
    return {
        "slices_total": m.slices_total,
        "instances": [
            {
                "gpu_instance_id": x.gpu_instance_id,
                "compute_instance_id": x.compute_instance_id,
                "uuid": x.uuid,
                "slices": x.slices,
                "samples": x.samples,
                "mem_total_bytes": x.mem_total_bytes,
                "mem_used_max_bytes": x.mem_used_max_bytes,
                "sm_active_mean_permille": x.sm_active_mean_permille,
                "tensor_active_mean_permille": x.tensor_active_mean_permille,
                "processes": x.processes,
                "workloads": [{"tenant": t, "kind": k, "workload": w} for t, k, w in x.workloads],
                "unavailable": dict(sorted(x.unavailable.items())),
            }
            for x in m.instances
        ],
        "unavailable": dict(sorted(m.unavailable.items())),
    }


def predicate_json(p: UsageWindow) -> dict[str, Any]:
    out = _predicate_core_json(p)
    if p.log_checkpoint is not None:
        c = p.log_checkpoint
        out["log_checkpoint"] = {"origin": c.origin, "size": c.size, "root_sha256": c.root_sha256}
    if p.key_assurance is not None:
        out["key_assurance"] = p.key_assurance
    if p.dropped is not None:
        d = p.dropped
        out["dropped"] = {
            "from_seq": d.from_seq,
            "to_seq": d.to_seq,
            "count": d.count,
            "reason": d.reason,
            "last_digest": d.last_digest,
        }
    ch = p.chain
    if ch.epoch or ch.prev_key_id is not None:
        out["chain"]["epoch"] = ch.epoch
        out["chain"]["prev_key_id"] = ch.prev_key_id
        out["chain"]["prev_key_digest"] = ch.prev_key_digest
    if p.rotation is not None:
        r = p.rotation
        out["rotation"] = {
            "new_key_id": r.new_key_id,
            "new_key_spki": base64.b64encode(r.new_key_spki).decode("ascii"),
            "new_key_assurance": r.new_key_assurance,
        }
    return out


def _predicate_core_json(p: UsageWindow) -> dict[str, Any]:
    return {
        "node": {"id": p.node_id, "boot_id": p.boot_id, "agent_version": p.agent_version},
        "window": {"start_ms": p.start_ms, "end_ms": p.end_ms, "sample_interval_ms": p.sample_interval_ms},
        "chain": {"key_id": p.chain.key_id, "seq": p.chain.seq, "prev": p.chain.prev},
        "gpus": [_gpu_json(g) for g in p.gpus],
        "node_io": None
        if p.node_io is None
        else {
            "ib_tx_bytes": p.node_io.ib_tx_bytes,
            "ib_rx_bytes": p.node_io.ib_rx_bytes,
            "net_tx_bytes": p.node_io.net_tx_bytes,
            "net_rx_bytes": p.node_io.net_rx_bytes,
            "disk_read_bytes": p.node_io.disk_read_bytes,
            "disk_write_bytes": p.node_io.disk_write_bytes,
        },
        "unavailable": dict(sorted(p.unavailable.items())),
        "events": [{"kind": e.kind, "detail": e.detail} for e in p.events],
    }


def subject_for(g: GpuWindow) -> dict[str, Any]:
    """One in-toto subject per GPU: named by serial (or UUID), digest of the UUID."""
    name = f"nvidia-gpu:{g.serial}" if g.serial else f"nvidia-gpu-uuid:{g.uuid}"
    return {"name": name, "digest": {"sha256": hashlib.sha256(g.uuid.encode()).hexdigest()}}


def statement_bytes(p: UsageWindow) -> bytes:
    """The in-toto Statement v1 around ``p``, as the bytes that get signed."""
    subjects = [subject_for(g) for g in p.gpus]
    if not subjects:
        # in-toto requires at least one subject; a node with no GPU readable names itself.
        subjects = [{"name": f"node:{p.node_id}", "digest": {"sha256": hashlib.sha256(p.node_id.encode()).hexdigest()}}]
    stmt = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate_json(p),
    }
    return json.dumps(stmt, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------
# Strict parsing


class _Obj:
    """Typed accessors over one JSON object, naming the path in every error."""

    __slots__ = ("d", "path")

    def __init__(self, d: Any, path: str) -> None:
        if not isinstance(d, dict):
            raise SchemaError(f"{path}: expected an object, got {type(d).__name__}")
        self.d = d
        self.path = path

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.d:
            if optional:
                return None
            raise SchemaError(f"{self.path}.{key}: required field missing")
        return self.d[key]

    def int_(self, key: str, *, nullable: bool = False, optional: bool = False, minimum: int | None = 0) -> Any:
        v = self._get(key, optional or nullable)
        if v is None:
            if nullable or optional:
                return None
            raise SchemaError(f"{self.path}.{key}: must not be null")
        if type(v) is not int:
            raise SchemaError(f"{self.path}.{key}: expected an integer, got {type(v).__name__} ({v!r})")
        if minimum is not None and v < minimum:
            raise SchemaError(f"{self.path}.{key}: {v} is below {minimum}")
        return v

    def str_(self, key: str, *, nullable: bool = False, optional: bool = False) -> Any:
        v = self._get(key, optional or nullable)
        if v is None:
            if nullable or optional:
                return None
            raise SchemaError(f"{self.path}.{key}: must not be null")
        if not isinstance(v, str):
            raise SchemaError(f"{self.path}.{key}: expected a string, got {type(v).__name__}")
        return v

    def list_(self, key: str, *, optional: bool = False) -> list[Any]:
        v = self._get(key, optional)
        if v is None and optional:
            return []
        if not isinstance(v, list):
            raise SchemaError(f"{self.path}.{key}: expected a list")
        return v

    def obj(self, key: str, *, nullable: bool = False, optional: bool = False) -> _Obj | None:
        v = self._get(key, optional or nullable)
        if v is None:
            if nullable or optional:
                return None
            raise SchemaError(f"{self.path}.{key}: must not be null")
        return _Obj(v, f"{self.path}.{key}")

    def reasons(self, key: str) -> dict[str, str]:
        v = self._get(key, True)
        if v is None:
            return {}
        if type(v) is not dict:
            raise SchemaError(f"{self.path}.{key}: expected an object of field -> reason strings")
        for r in v.values():
            if type(r) is not str:  # keys of a decoded JSON object are always str
                raise SchemaError(f"{self.path}.{key}: expected an object of field -> reason strings")
        return dict(v)


def _events(o: _Obj) -> tuple[Event, ...]:
    out = []
    for i, e in enumerate(o.list_("events", optional=True)):
        eo = _Obj(e, f"{o.path}.events[{i}]")
        out.append(Event(eo.str_("kind"), eo.str_("detail")))
    return tuple(out)


def _int_list(v: Any, parent: str, key: str, maximum: int | None = None) -> tuple[int | None, ...]:
    if type(v) is not list:
        raise SchemaError(f"{parent}.{key}: expected a list")
    for x in v:
        if x is not None and (type(x) is not int or x < 0 or (maximum is not None and x > maximum)):
            raise SchemaError(f"{parent}.{key}: expected integers in 0..{maximum or 'inf'} or null, got {x!r}")
    return tuple(v)


# GpuWindow integer fields: (name, nullable, optional). Checked in one loop: this is the
# hot path of ingest (one call per GPU per statement).
_GPU_INTS: tuple[tuple[str, bool, bool], ...] = (
    ("index", False, False),
    ("mem_total_bytes", True, False),
    ("power_limit_mw", True, False),
    ("samples", False, False),
    ("energy_start_mj", True, False),
    ("energy_end_mj", True, False),
    ("power_mean_mw", True, False),
    ("power_max_mw", True, False),
    ("util_mean_permille", True, False),
    ("mem_used_max_bytes", True, False),
    ("sm_active_mean_permille", True, True),
    ("tensor_active_mean_permille", True, True),
    ("nvlink_tx_bytes", True, True),
    ("nvlink_rx_bytes", True, True),
    ("pcie_tx_bytes", True, True),
    ("pcie_rx_bytes", True, True),
)
# The core readings: null only with a reason (see _parse_gpu).
_GPU_CORE = tuple(n for n, _, optional in _GPU_INTS if not optional)
_WORKLOAD_INTS: tuple[tuple[str, bool, bool], ...] = (
    ("processes", False, False),
    ("mem_max_bytes", True, False),
    ("share_permille", False, False),
    ("gpu_ms", False, False),
)


def _ints(d: dict[str, Any], spec: tuple[tuple[str, bool, bool], ...], path: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, nullable, optional in spec:
        v = d.get(name)
        if type(v) is int and v >= 0 and (v <= 1000 or name not in _PERMILLE):
            out[name] = v
        else:
            out[name] = _int_field(d, name, nullable, optional, v, path)
    return out


# Integer fields bounded by 1000 (their names end in _permille; MIG instances use the same names).
_PERMILLE = frozenset(n for spec in (_GPU_INTS, _WORKLOAD_INTS) for n, _, _ in spec if n.endswith("_permille"))


def _int_field(d: dict[str, Any], name: str, nullable: bool, optional: bool, v: Any, path: str) -> int | None:
    """The checks of ``_ints`` for a value that is not an integer in 0..1000."""
    if type(v) is int and v >= 0:
        if v > 1000 and name.endswith("_permille"):
            raise SchemaError(f"{path}.{name}: {v} exceeds 1000")
        return v
    if v is None:
        if name not in d and not optional:
            raise SchemaError(f"{path}.{name}: required field missing")
        if not nullable and name in d:
            raise SchemaError(f"{path}.{name}: must not be null")
        if not nullable and not optional:
            raise SchemaError(f"{path}.{name}: required field missing")
        return None
    if type(v) is int:
        raise SchemaError(f"{path}.{name}: {v} is below 0")
    raise SchemaError(f"{path}.{name}: expected an integer, got {type(v).__name__} ({v!r})")


def _parse_workload(w: Any, path: str) -> Workload:
    if not isinstance(w, dict):
        raise SchemaError(f"{path}: expected an object, got {type(w).__name__}")
    ints = _ints(w, _WORKLOAD_INTS, path)
    kind = w.get("kind")
    if kind not in WORKLOAD_KINDS:
        raise SchemaError(f"{path}.kind: unknown workload kind {kind!r}")
    tenant, workload = w.get("tenant"), w.get("workload")
    if not isinstance(tenant, str):
        raise SchemaError(f"{path}.tenant: expected a string, got {type(tenant).__name__}")
    if not isinstance(workload, str):
        raise SchemaError(f"{path}.workload: expected a string, got {type(workload).__name__}")
    share = ints["share_permille"]
    assert share is not None
    if share > 1000:
        raise SchemaError(f"{path}.share_permille: {share} exceeds 1000")
    ints["tenant"], ints["kind"], ints["workload"] = tenant, kind, workload  # type: ignore[assignment]
    return Workload(**ints)  # type: ignore[arg-type]


_MIG_INSTANCE_INTS: tuple[tuple[str, bool, bool], ...] = (
    ("gpu_instance_id", False, False),
    ("compute_instance_id", True, False),
    ("slices", True, False),
    ("samples", False, False),
    ("mem_total_bytes", True, False),
    ("mem_used_max_bytes", True, False),
    ("sm_active_mean_permille", True, False),
    ("tensor_active_mean_permille", True, False),
    ("processes", False, False),
)


def _parse_mig(o: _Obj) -> Mig:
    """The optional ``mig`` object: every null reading MUST have its reason beside it."""
    un = o.reasons("unavailable")
    slices_total = o.int_("slices_total", nullable=True, minimum=1)
    if slices_total is None and "slices_total" not in un:
        raise SchemaError(f"{o.path}.slices_total: null with no reason in unavailable")
    instances = []
    for k, raw in enumerate(o.list_("instances")):
        io = _Obj(raw, f"{o.path}.instances[{k}]")
        ints = _ints(io.d, _MIG_INSTANCE_INTS, io.path)
        iun = io.reasons("unavailable")
        uuid = io.str_("uuid", nullable=True)
        nulls = [n for n, nullable, _ in _MIG_INSTANCE_INTS if nullable and ints[n] is None]
        nulls += ["uuid"] if uuid is None else []
        unexplained = [n for n in nulls if n not in iun]
        if unexplained:
            raise SchemaError(f"{io.path}: null field(s) {', '.join(unexplained)} with no reason in unavailable")
        if ints["slices"] is not None and (ints["slices"] < 1 or (slices_total and ints["slices"] > slices_total)):
            raise SchemaError(f"{io.path}.slices: {ints['slices']} is not in 1..slices_total ({slices_total})")
        workloads = []
        for j, w in enumerate(io.list_("workloads", optional=True)):
            wo = _Obj(w, f"{io.path}.workloads[{j}]")
            kind = wo.str_("kind")
            if kind not in WORKLOAD_KINDS:
                raise SchemaError(f"{wo.path}.kind: unknown workload kind {kind!r}")
            workloads.append((wo.str_("tenant"), kind, wo.str_("workload")))
        instances.append(
            MigInstance(
                uuid=uuid,
                workloads=tuple(workloads),
                unavailable=iun,
                **ints,  # type: ignore[arg-type]
            )
        )
    return Mig(slices_total=slices_total, instances=tuple(instances), unavailable=un)


def _parse_gpu(o: _Obj) -> GpuWindow:
    d = o.d
    ints = _ints(d, _GPU_INTS, o.path)
    workloads = tuple(_parse_workload(w, f"{o.path}.workloads[{i}]") for i, w in enumerate(o.list_("workloads")))
    so = o.obj("series", nullable=True, optional=True)
    series = None
    if so is not None:
        series = Series(
            so.int_("bucket_ms", minimum=1),
            _int_list(so.d.get("util_permille"), so.path, "util_permille", 1000),
            _int_list(so.d.get("power_mw"), so.path, "power_mw"),
        )
    split = o.str_("split_method", optional=True) or "exclusive"
    if split not in SPLIT_METHODS:
        raise SchemaError(f"{o.path}.split_method: unknown method {split!r}")
    unavailable = o.reasons("unavailable")
    serial = o.str_("serial", nullable=True)
    # A core reading that is null must say why (its own reason, or "readings": the GPU was
    # not read in this window), so "not measured" is never mistaken for a number.
    missing = [n for n in _GPU_CORE if ints[n] is None]
    if serial is None:
        missing.append("serial")
    if missing and "readings" not in unavailable:
        unexplained = [n for n in missing if n not in unavailable]
        if unexplained:
            raise SchemaError(f"{o.path}: null reading(s) {', '.join(unexplained)} with no reason in unavailable")
    health = d.get("health", {})
    if type(health) is not dict:
        raise SchemaError(f"{o.path}.health: expected an object of key -> non-negative integer")
    for v in health.values():  # keys of a decoded JSON object are always str
        if type(v) is not int or v < 0:
            raise SchemaError(f"{o.path}.health: expected an object of key -> non-negative integer")
    sharing = mig = None
    if "sharing" in d or "mig" in d:  # optional, additive within v1
        sharing = o.str_("sharing", nullable=True, optional=True)
        if sharing is not None and sharing not in SHARING_MODES:
            raise SchemaError(f"{o.path}.sharing: unknown sharing mode {sharing!r}")
        mo = o.obj("mig", nullable=True, optional=True)
        mig = _parse_mig(mo) if mo is not None else None
    if split == "mig_slices":
        if mig is None or mig.slices_total is None:
            raise SchemaError(f"{o.path}.split_method: mig_slices needs mig.slices_total")
        if sum(w.share_permille for w in workloads) > 1000:
            raise SchemaError(f"{o.path}.workloads: mig_slices shares add up to more than 1000")
    values: dict[str, Any] = ints
    values.update(
        uuid=o.str_("uuid"),
        serial=serial,
        model=o.str_("model"),
        series=series,
        split_method=split,
        workloads=workloads,
        unavailable=unavailable,
        events=_events(o),
        identity=o.reasons("identity"),
        health=dict(health),
        mem_reserved_bytes=o.int_("mem_reserved_bytes", nullable=True, optional=True),
        sharing=sharing,
        mig=mig,
    )
    return GpuWindow(**values)


def parse_statement(payload: bytes) -> UsageWindow:
    """Parse verified payload bytes into a ``UsageWindow``. Raises SchemaError with a path.

    The reference reading is the standard library's ``json``, held to JSON that every
    conforming parser reads the same way (``attestation.strictjson``: a duplicate name at
    any depth, a lone surrogate, an integer beyond 2**53 - 1, NaN or an infinity, a
    byte-order mark or bytes that are not UTF-8 are refused as ``bad_schema``), and the
    checks of ``_parse_doc`` below: what they accept is a statement, nothing else. Parsing is the
    costliest step of ingest after the signature check, so a common, valid statement is
    first recognised by ``attestation.statement_fast`` (decoding and checking in C, about
    3x faster); anything it cannot vouch for, valid or not, is parsed here, with this
    parser's errors. Either way a payload gives the same ``UsageWindow`` or the same error,
    for the collector and for an offline verifier alike
    (tests/unit/attestation/test_statement_decode.py)."""
    try:
        window = _fast.recognise(payload)
    except Exception:  # the fast path must never decide; a bug in it leaves the answer to the reference
        window = None
    if window is not None:
        return window
    return _parse_doc(_reference_decode(payload))


def _reference_decode(payload: bytes) -> Any:
    """The payload as JSON that every conforming parser reads the same way
    (attestation.strictjson: no duplicate names, lone surrogates, integers beyond 2**53 - 1,
    NaN or infinities, byte-order mark or bytes that are not UTF-8)."""
    try:
        return strictjson.loads(payload)
    except strictjson.NotIJSONError as exc:
        raise SchemaError(f"payload is not JSON that every parser reads alike: {exc}") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SchemaError(f"payload is not JSON: {exc}") from exc


def _parse_doc(doc: Any) -> UsageWindow:
    st = _Obj(doc, "$")
    if st.str_("_type") != STATEMENT_TYPE:
        raise SchemaError(f"$._type: expected {STATEMENT_TYPE!r}")
    if st.str_("predicateType") != PREDICATE_TYPE:
        raise SchemaError(f"$.predicateType: expected {PREDICATE_TYPE!r}", reason="bad_predicate_type")
    if not st.list_("subject"):
        raise SchemaError("$.subject: in-toto requires at least one subject")
    p = st.obj("predicate")
    assert p is not None
    node = p.obj("node")
    win = p.obj("window")
    chain = p.obj("chain")
    assert node is not None and win is not None and chain is not None
    start_ms = win.int_("start_ms")
    end_ms = win.int_("end_ms")
    if end_ms <= start_ms:
        raise SchemaError(f"$.predicate.window: end_ms {end_ms} is not after start_ms {start_ms}")
    seq = chain.int_("seq")
    prev = chain.str_("prev", nullable=True)
    if (seq == 0) != (prev is None):
        raise SchemaError("$.predicate.chain: prev must be null exactly at seq 0")
    if prev is not None and (len(prev) != 64 or any(c not in "0123456789abcdef" for c in prev)):
        raise SchemaError("$.predicate.chain.prev: expected 64 lower-case hex digits")
    gpus = tuple(_parse_gpu(_Obj(g, f"$.predicate.gpus[{i}]")) for i, g in enumerate(p.list_("gpus")))
    io = p.obj("node_io", nullable=True, optional=True)
    node_io = None
    if io is not None:
        node_io = NodeIo(
            ib_tx_bytes=io.int_("ib_tx_bytes", optional=True),
            ib_rx_bytes=io.int_("ib_rx_bytes", optional=True),
            net_tx_bytes=io.int_("net_tx_bytes", optional=True),
            net_rx_bytes=io.int_("net_rx_bytes", optional=True),
            disk_read_bytes=io.int_("disk_read_bytes", optional=True),
            disk_write_bytes=io.int_("disk_write_bytes", optional=True),
        )
    epoch = chain.int_("epoch", optional=True) or 0
    prev_key_id = chain.str_("prev_key_id", nullable=True, optional=True)
    prev_key_digest = chain.str_("prev_key_digest", nullable=True, optional=True)
    if (prev_key_id is None) != (prev_key_digest is None):
        raise SchemaError("$.predicate.chain: prev_key_id and prev_key_digest go together")
    if prev_key_id is not None and (seq != 0 or epoch == 0):
        raise SchemaError("$.predicate.chain: prev_key_id only at seq 0 of a chain with epoch > 0")
    ro = p.obj("rotation", nullable=True, optional=True)
    rotation = None
    if ro is not None:
        try:
            spki = base64.b64decode(ro.str_("new_key_spki"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SchemaError("$.predicate.rotation.new_key_spki: not base64") from exc
        rotation = Rotation(
            new_key_id=ro.str_("new_key_id"),
            new_key_spki=spki,
            new_key_assurance=ro.str_("new_key_assurance", optional=True) or "software",
        )
    lc = p.obj("log_checkpoint", nullable=True, optional=True)
    log_checkpoint = None
    if lc is not None:
        root = lc.str_("root_sha256")
        if len(root) != 64 or any(c not in "0123456789abcdef" for c in root):
            raise SchemaError("$.predicate.log_checkpoint.root_sha256: expected 64 lower-case hex digits")
        log_checkpoint = LogCheckpointRef(origin=lc.str_("origin"), size=lc.int_("size"), root_sha256=root)
    return UsageWindow(
        node_id=node.str_("id"),
        boot_id=node.str_("boot_id"),
        agent_version=node.str_("agent_version"),
        start_ms=start_ms,
        end_ms=end_ms,
        sample_interval_ms=win.int_("sample_interval_ms"),
        chain=Chain(
            key_id=chain.str_("key_id"),
            seq=seq,
            prev=prev,
            epoch=epoch,
            prev_key_id=prev_key_id,
            prev_key_digest=prev_key_digest,
        ),
        gpus=gpus,
        node_io=node_io,
        unavailable=p.reasons("unavailable"),
        events=_events(p),
        log_checkpoint=log_checkpoint,
        key_assurance=p.str_("key_assurance", nullable=True, optional=True),
        dropped=_dropped(p, seq, prev),
        rotation=rotation,
    )


def _dropped(p: _Obj, seq: int, prev: str | None) -> Dropped | None:
    """The optional ``dropped`` record, consistent with the chain of the statement carrying it."""
    o = p.obj("dropped", nullable=True, optional=True)
    if o is None:
        return None
    d = Dropped(
        from_seq=o.int_("from_seq"),
        to_seq=o.int_("to_seq"),
        count=o.int_("count", minimum=1),
        reason=o.str_("reason"),
        last_digest=o.str_("last_digest"),
    )
    if not d.reason or len(d.reason) > 64 or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in d.reason):
        raise SchemaError("$.predicate.dropped.reason: expected 1-64 characters of a-z, 0-9 and _")
    if d.from_seq > d.to_seq or d.count != d.to_seq - d.from_seq + 1:
        raise SchemaError(f"$.predicate.dropped: count {d.count} does not match seqs {d.from_seq}..{d.to_seq}")
    if d.to_seq != seq - 1 or d.last_digest != prev:
        raise SchemaError(
            "$.predicate.dropped: must end right before the statement carrying it "
            f"(to_seq {d.to_seq}, seq {seq}) with last_digest equal to chain.prev"
        )
    return d


# The fast path needs the classes and rules above; it is imported last for that reason, as a
# module, so that importing attestation.statement_fast first works too.
from attestation import statement_fast as _fast  # noqa: E402
