"""The fast path of ``attestation.statement.parse_statement``: a recogniser of the common,
valid usage-window statement.

Parsing is the costliest step of ingest after the signature check. The reference parser
(``statement._parse_doc`` over the standard library's ``json``) checks each field in
Python; here ``msgspec`` decodes the bytes straight into typed structs, checking types,
presence, nulls and integer ranges in C, and the few rules across fields are checked
after. The contract is one-sided: ``recognise`` returns the ``UsageWindow`` the reference
would return, or None — for anything it cannot vouch for (a malformed or unusual
statement, MIG layouts, rotations, dropped records) — and then the reference parser
decides, with its own errors. It never refuses anything itself, so error messages and
reasons are always the reference's, and what is accepted is exactly what the reference
accepts (tests/unit/attestation/test_statement_decode.py holds the two to one answer).

The structs below mirror the schema in attestation/statement.py: a field that the
reference requires has no default; one it lets be absent has a default; one it lets be
null is ``X | None``; integer bounds are ``msgspec.Meta`` constraints. Unknown fields are
ignored, as readers of v1 must.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from attestation.statement import (
    _GPU_CORE,
    PREDICATE_TYPE,
    SHARING_MODES,
    SPLIT_METHODS,
    STATEMENT_TYPE,
    WORKLOAD_KINDS,
    Chain,
    Event,
    GpuWindow,
    LogCheckpointRef,
    NodeIo,
    Series,
    UsageWindow,
    Workload,
    _new,
)

Count = Annotated[int, msgspec.Meta(ge=0)]
Permille = Annotated[int, msgspec.Meta(ge=0, le=1000)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Reasons = dict[str, str]

_HEX = frozenset("0123456789abcdef")


class _Struct(msgspec.Struct, kw_only=True, gc=False):
    """Decoded once and dropped; no cycles, so not tracked by the garbage collector."""


class _Event(_Struct, kw_only=True):
    kind: str
    detail: str


class _Workload(_Struct, kw_only=True):
    tenant: str
    kind: str
    workload: str
    processes: Count
    mem_max_bytes: Count | None
    share_permille: Permille
    gpu_ms: Count


class _Series(_Struct, kw_only=True):
    bucket_ms: Positive
    util_permille: list[Permille | None]
    power_mw: list[Count | None]


class _Gpu(_Struct, kw_only=True):
    index: Count
    uuid: str
    serial: str | None = None
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
    series: _Series | None = None
    split_method: str | None = None
    workloads: list[_Workload]
    unavailable: Reasons | None = None
    events: list[_Event] | None = None
    identity: Reasons | None = None
    health: dict[str, Count] = msgspec.field(default_factory=dict)
    mem_reserved_bytes: Count | None = None
    sharing: str | None = None
    mig: Any = None


class _Node(_Struct, kw_only=True):
    id: str
    boot_id: str
    agent_version: str


class _Window(_Struct, kw_only=True):
    start_ms: Count
    end_ms: Count
    sample_interval_ms: Count


class _Chain(_Struct, kw_only=True):
    key_id: str
    seq: Count
    prev: str | None = None
    epoch: Count | None = None
    prev_key_id: str | None = None
    prev_key_digest: str | None = None


class _NodeIo(_Struct, kw_only=True):
    ib_tx_bytes: Count | None = None
    ib_rx_bytes: Count | None = None
    net_tx_bytes: Count | None = None
    net_rx_bytes: Count | None = None
    disk_read_bytes: Count | None = None
    disk_write_bytes: Count | None = None


class _LogCheckpoint(_Struct, kw_only=True):
    origin: str
    size: Count
    root_sha256: str


class _Predicate(_Struct, kw_only=True):
    node: _Node
    window: _Window
    chain: _Chain
    gpus: list[_Gpu]
    node_io: _NodeIo | None = None
    unavailable: Reasons | None = None
    events: list[_Event] | None = None
    log_checkpoint: _LogCheckpoint | None = None
    key_assurance: str | None = None
    # Rare; left to the reference parser whenever present.
    dropped: Any = None
    rotation: Any = None


class _Statement(_Struct, kw_only=True, rename={"type_": "_type", "predicate_type": "predicateType"}):
    type_: str
    subject: list[Any]
    predicate_type: str
    predicate: _Predicate


_decoder = msgspec.json.Decoder(_Statement)


def recognise(payload: bytes) -> UsageWindow | None:
    """The statement in ``payload`` if it is valid and of the common shape, else None
    (see the module docstring: None means "ask the reference parser", not "invalid")."""
    try:
        st = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None
    if st.type_ != STATEMENT_TYPE or st.predicate_type != PREDICATE_TYPE or not st.subject:
        return None
    p = st.predicate
    if p.dropped is not None or p.rotation is not None:
        return None
    w, c = p.window, p.chain
    if w.end_ms <= w.start_ms or (c.seq == 0) != (c.prev is None):
        return None
    if c.prev is not None and (len(c.prev) != 64 or not _HEX.issuperset(c.prev)):
        return None
    epoch = c.epoch or 0
    if (c.prev_key_id is None) != (c.prev_key_digest is None):
        return None
    if c.prev_key_id is not None and (c.seq != 0 or epoch == 0):
        return None
    gpus = []
    for g in p.gpus:
        gpu = _gpu(g)
        if gpu is None:
            return None
        gpus.append(gpu)
    lc = p.log_checkpoint
    if lc is not None and (len(lc.root_sha256) != 64 or not _HEX.issuperset(lc.root_sha256)):
        return None
    io = p.node_io
    return UsageWindow(
        node_id=p.node.id,
        boot_id=p.node.boot_id,
        agent_version=p.node.agent_version,
        start_ms=w.start_ms,
        end_ms=w.end_ms,
        sample_interval_ms=w.sample_interval_ms,
        chain=Chain(
            key_id=c.key_id,
            seq=c.seq,
            prev=c.prev,
            epoch=epoch,
            prev_key_id=c.prev_key_id,
            prev_key_digest=c.prev_key_digest,
        ),
        gpus=tuple(gpus),
        node_io=None if io is None else NodeIo(**msgspec.structs.asdict(io)),
        unavailable=p.unavailable or {},
        events=_events(p.events),
        log_checkpoint=None
        if lc is None
        else LogCheckpointRef(origin=lc.origin, size=lc.size, root_sha256=lc.root_sha256),
        key_assurance=p.key_assurance,
        dropped=None,
        rotation=None,
    )


def _events(events: list[_Event] | None) -> tuple[Event, ...]:
    if not events:
        return ()
    return tuple(_new(Event, {"kind": e.kind, "detail": e.detail}) for e in events)


def _gpu(g: _Gpu) -> GpuWindow | None:
    split = g.split_method or "exclusive"  # as the reference: absent, null or "" is exclusive
    if split not in SPLIT_METHODS or split == "mig_slices" or g.mig is not None:
        return None  # MIG layouts are left to the reference parser
    if g.sharing is not None and g.sharing not in SHARING_MODES:
        return None
    values = msgspec.structs.asdict(g)
    unavailable = g.unavailable or {}
    if "readings" not in unavailable:
        for name in _GPU_CORE:
            if values[name] is None and name not in unavailable:
                return None
        if g.serial is None and "serial" not in unavailable:
            return None
    workloads = []
    for wl in g.workloads:
        if wl.kind not in WORKLOAD_KINDS:
            return None
        workloads.append(_new(Workload, msgspec.structs.asdict(wl)))
    s = g.series
    values.update(
        series=None
        if s is None
        else _new(
            Series,
            {"bucket_ms": s.bucket_ms, "util_permille": tuple(s.util_permille), "power_mw": tuple(s.power_mw)},
        ),
        split_method=split,
        workloads=tuple(workloads),
        unavailable=unavailable,
        events=_events(g.events),
        identity=g.identity or {},
    )
    return _new(GpuWindow, values)
