"""The fast path of ``attestation.statement.parse_statement``: a recogniser of the common,
valid usage-window statement.

Parsing is the costliest step of ingest after the signature check, and the part of it
that holds the interpreter. The reference parser (``attestation.statement.parse`` over the
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
structs below mirror the rest of the schema.

The reference refuses JSON that conforming parsers may read differently
(attestation.strictjson: duplicate names, lone surrogates, integers beyond 2**53 - 1, ...),
and msgspec, like most decoders, silently keeps the last of two equal names. So the fast
path vouches only for a payload that is exactly the compact encoding of what it decoded:
the decoded document is encoded again and compared byte for byte. An encoding never
repeats a name, so a payload with a duplicate name (or insignificant whitespace, or an
escape msgspec would not write) differs from it and goes to the reference parser. For the
comparison to hold, what was decoded must say which fields were present: the wrapper
structs below mark an absent optional field ``UNSET`` (omitted again when encoded), and a
GPU and its ``node_io`` decode first into TypedDicts with the record's own field types
(``_present``: only the fields present, in their order), from which the records are then
built. Every struct forbids unknown fields, and a TypedDict drops them (so the encoding
differs): a statement with a field this version does not know is left to the reference,
which ignores it, as readers of v1 must. So every number the payload holds sits in a typed
field whose bounds (at most 2**53 - 1) msgspec checks; msgspec refuses lone surrogates,
bytes that are not UTF-8, a byte-order mark, NaN and infinities itself. Agents write
statements compactly with ``json.dumps`` (ASCII, escaping non-ASCII characters, which
msgspec does not): their statements are the encoding of themselves unless a name is not
ASCII, and such a statement is parsed by the reference (docs/benchmarks.md, "Sixth
session", for what the check costs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import msgspec
from msgspec import UNSET, UnsetType

from attestation.statement.fields import GPU_INTS
from attestation.statement.records import (
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
_NULLABLE_CORE = tuple(name for name, nullable, optional in GPU_INTS if nullable and not optional)


class _Struct(msgspec.Struct, kw_only=True, gc=False, forbid_unknown_fields=True):
    """Decoded once and dropped; no cycles, so not tracked by the garbage collector."""


class _Subject(_Struct, kw_only=True):
    """An in-toto ResourceDescriptor as agents write it (anything else: the reference)."""

    name: str
    digest: dict[str, str]


class _Node(_Struct, kw_only=True):
    id: str
    boot_id: str
    agent_version: str


class _Window(_Struct, kw_only=True):
    start_ms: Count
    end_ms: Count
    sample_interval_ms: Count


def _present(cls: type[msgspec.Struct]) -> Any:
    """A TypedDict with ``cls``'s fields and types, its fields with a default not required:
    decoded, it holds exactly the fields the payload has, so it encodes back to the same
    bytes; ``cls(**decoded)`` is then the record."""
    fields = {f.name: f.type if f.required else NotRequired[f.type] for f in msgspec.structs.fields(cls)}
    return TypedDict(f"_{cls.__name__}Present", fields)  # type: ignore[operator]


if TYPE_CHECKING:
    _GpuPresent = dict[str, Any]
    _NodeIoPresent = dict[str, Any]
else:
    _GpuPresent = _present(GpuWindow)
    _NodeIoPresent = _present(NodeIo)


class _Chain(_Struct, kw_only=True):
    key_id: str
    seq: Count
    prev: str | None
    epoch: Count | None | UnsetType = UNSET
    prev_key_id: str | None | UnsetType = UNSET
    prev_key_digest: str | None | UnsetType = UNSET


class _Predicate(_Struct, kw_only=True):
    node: _Node
    window: _Window
    chain: _Chain
    gpus: tuple[_GpuPresent, ...]
    node_io: _NodeIoPresent | None | UnsetType = UNSET
    unavailable: Reasons | None | UnsetType = UNSET
    events: tuple[Event, ...] | None | UnsetType = UNSET
    log_checkpoint: LogCheckpointRef | None | UnsetType = UNSET
    key_assurance: str | None | UnsetType = UNSET
    # Rare; left to the reference parser whenever present.
    dropped: Any = UNSET
    rotation: Any = UNSET


class _Statement(_Struct, kw_only=True, rename={"type_": "_type", "predicate_type": "predicateType"}):
    type_: str
    subject: tuple[_Subject, ...]
    predicate_type: str
    predicate: _Predicate


_decoder = msgspec.json.Decoder(_Statement)
_encoder = msgspec.json.Encoder()


def recognise(payload: bytes) -> UsageWindow | None:
    """The statement in ``payload`` if it is valid and of the common shape, else None
    (see the module docstring: None means "ask the reference parser", not "invalid")."""
    try:
        st = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None
    # Only the exact encoding of what was decoded: no duplicate names (module docstring).
    if _encoder.encode(st) != payload:
        return None
    if st.type_ != STATEMENT_TYPE or st.predicate_type != PREDICATE_TYPE or not st.subject:
        return None
    p = st.predicate
    if p.dropped not in (None, UNSET) or p.rotation not in (None, UNSET):
        return None
    w, c = p.window, p.chain
    if w.end_ms <= w.start_ms or (c.seq == 0) != (c.prev is None):
        return None
    if c.prev is not None and (len(c.prev) != 64 or not _HEX.issuperset(c.prev)):
        return None
    epoch = c.epoch if isinstance(c.epoch, int) else 0
    prev_key_id = None if c.prev_key_id is UNSET else c.prev_key_id
    prev_key_digest = None if c.prev_key_digest is UNSET else c.prev_key_digest
    if (prev_key_id is None) != (prev_key_digest is None):
        return None
    if prev_key_id is not None and (c.seq != 0 or epoch == 0):
        return None
    gpus = tuple([GpuWindow(**g) for g in p.gpus])
    for g in gpus:
        if not _common_gpu(g):
            return None
    lc = None if p.log_checkpoint is UNSET else p.log_checkpoint
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
            prev_key_id=prev_key_id,
            prev_key_digest=prev_key_digest,
        ),
        gpus=gpus,
        node_io=NodeIo(**p.node_io) if isinstance(p.node_io, dict) else None,
        unavailable=p.unavailable or {},
        events=p.events or (),
        log_checkpoint=lc,
        key_assurance=None if p.key_assurance is UNSET else p.key_assurance,
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
        # A null core reading must say why (attestation.statement.gpu.parse_gpu).
        for name in _NULLABLE_CORE:
            if getattr(g, name) is None and name not in unavailable:
                return False
        if g.serial is None and "serial" not in unavailable:
            return False
    return all(wl.kind in _KINDS for wl in g.workloads)
