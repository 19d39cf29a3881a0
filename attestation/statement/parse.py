"""The reference parser: verified payload bytes to a ``UsageWindow``, or a SchemaError
that names the path of what is wrong. A common, valid statement is first recognised by
the fast path (attestation.statement_fast); anything it cannot vouch for is parsed here.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

# The fast path imports the records and field tables of this package; it is imported as a
# module (not its names), so that importing attestation.statement_fast first works too.
from attestation import statement_fast as _fast
from attestation import strictjson
from attestation.errors import SchemaError
from attestation.statement.fields import Obj, parse_events
from attestation.statement.gpu import parse_gpu
from attestation.statement.records import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Chain,
    Dropped,
    LogCheckpointRef,
    NodeIo,
    Rotation,
    UsageWindow,
)


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
    st = Obj(doc, "$")
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
    gpus = tuple(parse_gpu(Obj(g, f"$.predicate.gpus[{i}]")) for i, g in enumerate(p.list_("gpus")))
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
        events=parse_events(p),
        log_checkpoint=log_checkpoint,
        key_assurance=p.str_("key_assurance", nullable=True, optional=True),
        dropped=_dropped(p, seq, prev),
        rotation=rotation,
    )


def _dropped(p: Obj, seq: int, prev: str | None) -> Dropped | None:
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
