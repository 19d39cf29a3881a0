"""Conversions between the DSSE envelope dataclass and its protobuf form (at the edges only)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from attestation.dsse import Envelope, Signature
from attestation.errors import SchemaError
from attestation.v1 import collector_pb2 as pb


def envelope_to_proto(env: Envelope) -> pb.Envelope:
    return pb.Envelope(
        payload=env.payload,
        payload_type=env.payload_type,
        signatures=[pb.Signature(sig=s.sig, keyid=s.keyid) for s in env.signatures],
    )


def envelope_from_proto(msg: pb.Envelope) -> Envelope:
    return Envelope(
        payload=bytes(msg.payload),
        payload_type=msg.payload_type,
        signatures=tuple(Signature(keyid=s.keyid, sig=bytes(s.sig)) for s in msg.signatures),
    )


def envelope_to_bytes(env: Envelope) -> bytes:
    data: bytes = envelope_to_proto(env).SerializeToString()
    return data


def envelope_from_bytes(data: bytes) -> Envelope:
    msg = pb.Envelope()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise SchemaError(f"not a serialised Envelope: {exc}", reason="malformed_envelope") from exc
    return envelope_from_proto(msg)
