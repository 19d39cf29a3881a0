"""DSSE v1 envelopes (github.com/secure-systems-lab/dsse, envelope.md and protocol.md).

Signatures are computed over the Pre-Authentication Encoding (PAE) of the payload type
and the payload bytes. A verifier checks the signature over the PAE of the bytes it was
given and parses only those bytes afterwards; nothing is ever re-serialised to be checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from attestation.errors import SchemaError
from attestation.keys import PublicKey, Signer

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.

    LEN is the byte length as ASCII decimal without leading zeros (DSSE protocol.md).
    """
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def _b64decode(value: Any) -> bytes:
    """Standard or URL-safe base64: DSSE protocol.md says verifiers MUST accept either."""
    if not isinstance(value, str):
        raise TypeError(f"expected a base64 string, got {type(value).__name__}")
    return base64.b64decode(value, altchars=b"-_" if ("-" in value or "_" in value) else None, validate=True)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def digest(self) -> str:
        """SHA-256 of the PAE, lower-case hex: the chain's ``prev`` and the log's leaf input."""
        return hashlib.sha256(self.pae()).hexdigest()

    # JSON form, exactly as DSSE envelope.md defines it.
    def to_json(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        if not isinstance(obj, dict):
            raise SchemaError("envelope must be a JSON object", reason="malformed_envelope")
        try:
            payload = _b64decode(obj["payload"])
            ptype = obj["payloadType"]
            raw_sigs = obj["signatures"]
            if not isinstance(raw_sigs, list):
                raise TypeError(f"signatures must be a list, got {type(raw_sigs).__name__}")
            sigs = []
            for s in raw_sigs:
                keyid = s.get("keyid", "")
                if not isinstance(keyid, str):
                    raise TypeError(f"keyid must be a string, got {type(keyid).__name__}")
                sigs.append(Signature(keyid=keyid, sig=_b64decode(s["sig"])))
        except (KeyError, TypeError, AttributeError, binascii.Error, ValueError) as exc:
            raise SchemaError(f"malformed DSSE envelope: {exc!r}", reason="malformed_envelope") from exc
        if not isinstance(ptype, str):
            raise SchemaError("payloadType must be a string", reason="malformed_envelope")
        return cls(payload=payload, payload_type=ptype, signatures=tuple(sigs))

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def sign(payload: bytes, signer: Signer, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> Envelope:
    sig = signer.sign(pae(payload_type, payload))
    return Envelope(payload=payload, payload_type=payload_type, signatures=(Signature(signer.key_id, sig),))


def verify(envelope: Envelope, key: PublicKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> bytes:
    """Verify ``envelope`` against ``key`` and return the verified payload bytes.

    Steps (DSSE protocol.md, "Verification"):
    1. the payload type is the one expected;
    2. some signature verifies with ``key`` over PAE(payloadType, payload). A signature's
       ``keyid`` is an optional, unauthenticated hint that "MUST NOT be used for security
       decisions": signatures naming ``key`` are tried first, then those naming no key
       (absent or empty ``keyid``) or another one;
    3. only then are the payload bytes handed back to be parsed.
    Raises VerificationError ("unknown_key" when no signature names ``key`` and none
    verifies with it, "bad_signature" when one naming it does not verify); never returns
    a failure value.
    """
    from attestation.errors import VerificationError

    # 1.
    if envelope.payload_type != payload_type:
        raise VerificationError(
            f"payloadType {envelope.payload_type!r}, expected {payload_type!r}",
            reason="bad_payload_type",
        )
    # 2.
    named = [s for s in envelope.signatures if s.keyid == key.key_id]
    others = [s for s in envelope.signatures if s.keyid != key.key_id]
    message = envelope.pae()
    first: VerificationError | None = None
    for s in named + others:
        try:
            key.verify(s.sig, message)
        except VerificationError as exc:
            if first is None and s.keyid == key.key_id:
                first = exc
            continue
        # 3.
        return envelope.payload
    if first is not None:
        raise first
    raise VerificationError(
        f"no signature verifies with key {key.key_id} (envelope names {[s.keyid for s in envelope.signatures]})",
        reason="unknown_key",
    )
