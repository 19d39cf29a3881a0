"""The fast path of ``attestation.statement.parse_statement``: a recogniser of the common,
valid usage-window statement.

Parsing is the costliest step of ingest after the signature check, and the part of it
that holds the interpreter. The reference parser (``statement._parse_doc`` over the
standard library's ``json``) checks each field in Python; here ``msgspec`` decodes the
bytes straight into the statement's own records (``GpuWindow``, ``Workload``, ``Series``,
``Event``, ``NodeIo``, ``LogCheckpointRef``: msgspec structs), checking types, presence,
nulls and the integer bounds their annotations carry in C, and the few rules across
fields are checked after. The contract is one-sided: ``recognise`` returns the
``UsageWindow`` the reference would return, or None — for anything it cannot vouch for (a
malformed or unusual statement, MIG layouts, rotations, dropped records) — and then the
reference parser decides, with its own errors. It never refuses anything itself, so error
messages and reasons are always the reference's, and what is accepted is exactly what the
reference accepts (tests/unit/attestation/test_statement_decode.py holds the two to one
answer).

Where a record's field may be absent its default is the reference's; where the reference
lets a value be null that the record's type does not (``unavailable``, ``events``, an
empty ``split_method``), decoding fails and the reference parser decides. The wrapper
structs below mirror the rest of the schema. Unknown fields are ignored, as readers of v1
must.
"""

from __future__ import annotations

from typing import Any

import msgspec

from attestation.statement import (
    _GPU_INTS,
    PREDICATE_TYPE,
    SHARING_MODES,
    STATEMENT_TYPE,
    WORKLOAD_KINDS,
    Chain,
    Count,
    Event,
    GpuWindow,
    LogCheckpointRef,
    NodeIo,
    UsageWindow,
)

Reasons = dict[str, str]

_HEX = frozenset("0123456789abcdef")
# Split methods recognised here; "mig_slices" (and MIG layouts) are left to the reference.
_SPLITS = frozenset(("exclusive", "process_sm", "memory", "equal"))
_KINDS = frozenset(WORKLOAD_KINDS)
# The core readings a GPU's type lets be null (index and samples never are): null only with a reason.
_NULLABLE_CORE = tuple(name for name, nullable, optional in _GPU_INTS if nullable and not optional)


class _Struct(msgspec.Struct, kw_only=True, gc=False):
    """Decoded once and dropped; no cycles, so not tracked by the garbage collector."""


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


class _Predicate(_Struct, kw_only=True):
    node: _Node
    window: _Window
    chain: _Chain
    gpus: tuple[GpuWindow, ...]
    node_io: NodeIo | None = None
    unavailable: Reasons | None = None
    events: tuple[Event, ...] | None = None
    log_checkpoint: LogCheckpointRef | None = None
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
    for g in p.gpus:
        if not _common_gpu(g):
            return None
    lc = p.log_checkpoint
    if lc is not None and (len(lc.root_sha256) != 64 or not _HEX.issuperset(lc.root_sha256)):
        return None
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
        gpus=p.gpus,
        node_io=p.node_io,
        unavailable=p.unavailable or {},
        events=p.events or (),
        log_checkpoint=lc,
        key_assurance=p.key_assurance,
        dropped=None,
        rotation=None,
    )


def _common_gpu(g: GpuWindow) -> bool:
    """The rules across a decoded GPU's fields that its types cannot say."""
    if g.split_method not in _SPLITS or g.mig is not None:
        return False  # "" (the reference reads it as exclusive), mig_slices, MIG layouts
    if g.sharing is not None and g.sharing not in SHARING_MODES:
        return False
    unavailable = g.unavailable
    if "readings" not in unavailable:
        # A null core reading must say why (attestation.statement._parse_gpu).
        for name in _NULLABLE_CORE:
            if getattr(g, name) is None and name not in unavailable:
                return False
        if g.serial is None and "serial" not in unavailable:
            return False
    return all(wl.kind in _KINDS for wl in g.workloads)
