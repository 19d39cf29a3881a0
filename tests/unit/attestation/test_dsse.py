"""DSSE v1: PAE against the spec's test vector, signing with both key types, and tampering.

Every tampered envelope must raise VerificationError with the reason the collector reports
(bad_signature, bad_payload_type, unknown_key); every malformed JSON envelope must raise
SchemaError, never a bare KeyError/TypeError.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation import dsse
from attestation.dsse import Envelope, Signature
from attestation.errors import SchemaError, VerificationError
from attestation.keys import ECDSA_P256, ED25519, Ed25519Signer, PublicKey

# secure-systems-lab/dsse protocol.md, "Test Vectors".
SPEC_TYPE = "http://example.com/HelloWorld"
SPEC_BODY = b"hello world"
SPEC_PAE = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
SPEC_X = 46950820868899156662930047687818585632848591499744589407958293238635476079160
SPEC_Y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
SPEC_SIG_RAW_B64 = "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="
SPEC_PAYLOAD_B64 = "aGVsbG8gd29ybGQ="

PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1","predicate":{}}'


class P256Signer:
    """A test-side ECDSA P-256 signer (what a tpm:/pkcs11: backend will be), DER signatures."""

    assurance = "software"
    algorithm = ECDSA_P256

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        spki = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._public = PublicKey.from_spki(spki)

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def _spec_public_key() -> PublicKey:
    key = ec.EllipticCurvePublicNumbers(SPEC_X, SPEC_Y, ec.SECP256R1()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey.from_spki(spki)


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


# -- PAE -------------------------------------------------------------------------------


def test_pae_matches_the_spec_test_vector_byte_for_byte() -> None:
    assert dsse.pae(SPEC_TYPE, SPEC_BODY) == SPEC_PAE


@pytest.mark.parametrize(
    ("ptype", "body", "expected"),
    [
        ("", b"", b"DSSEv1 0  0 "),
        ("t", b"\x00\xff", b"DSSEv1 1 t 2 \x00\xff"),
        # LEN is the UTF-8 byte length, not the character count.
        ("é", b"x", b"DSSEv1 2 \xc3\xa9 1 x"),
        ("a b", b"c d", b"DSSEv1 3 a b 3 c d"),
        ("x", b"y" * 100, b"DSSEv1 1 x 100 " + b"y" * 100),
    ],
    ids=["empty", "binary-body", "utf8-type-length-in-bytes", "spaces", "three-digit-length"],
)
def test_pae_encodes_lengths_in_bytes_without_leading_zeros(ptype: str, body: bytes, expected: bytes) -> None:
    assert dsse.pae(ptype, body) == expected


def test_spec_test_vector_signature_verifies_with_the_spec_key() -> None:
    # The spec's signature is raw r||s; PublicKey.verify takes DER (what cryptography emits).
    raw = base64.b64decode(SPEC_SIG_RAW_B64)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = _spec_public_key()
    assert key.algorithm == ECDSA_P256
    sig_b64 = base64.b64encode(der).decode()
    env = Envelope.from_json(
        {"payload": SPEC_PAYLOAD_B64, "payloadType": SPEC_TYPE, "signatures": [{"keyid": key.key_id, "sig": sig_b64}]}
    )
    assert env.payload == SPEC_BODY
    assert env.pae() == SPEC_PAE
    assert dsse.verify(env, key, payload_type=SPEC_TYPE) == SPEC_BODY


# -- sign / verify ---------------------------------------------------------------------


@pytest.mark.parametrize("make_signer", [Ed25519Signer.generate, P256Signer], ids=[ED25519, ECDSA_P256])
def test_sign_then_verify_returns_the_payload(make_signer: Callable[[], Any]) -> None:
    signer = make_signer()
    env = dsse.sign(PAYLOAD, signer)
    assert env.payload_type == dsse.IN_TOTO_PAYLOAD_TYPE
    assert [s.keyid for s in env.signatures] == [signer.key_id]
    assert dsse.verify(env, signer.public_key()) == PAYLOAD


def test_digest_is_sha256_of_the_pae() -> None:
    import hashlib

    env = dsse.sign(PAYLOAD, Ed25519Signer.generate())
    assert env.digest() == hashlib.sha256(dsse.pae(env.payload_type, PAYLOAD)).hexdigest()


_SIGNER = Ed25519Signer.generate()
_OTHER = Ed25519Signer.generate()


def _good() -> Envelope:
    return dsse.sign(PAYLOAD, _SIGNER)


TAMPER: list[tuple[str, Callable[[], Envelope], str]] = [
    (
        "flipped-payload-byte",
        lambda: dataclasses.replace(_good(), payload=_flip(PAYLOAD, 5)),
        "bad_signature",
    ),
    (
        "flipped-signature-byte",
        lambda: dataclasses.replace(
            _good(), signatures=(Signature(_SIGNER.key_id, _flip(_good().signatures[0].sig, 10)),)
        ),
        "bad_signature",
    ),
    (
        "payload-type-changed-after-signing",
        lambda: dataclasses.replace(_good(), payload_type="application/json"),
        "bad_payload_type",
    ),
    (
        "signed-over-another-type-relabelled",
        # The PAE binds the type: a signature made for another type does not carry over.
        lambda: dataclasses.replace(
            dsse.sign(PAYLOAD, _SIGNER, payload_type="application/json"), payload_type=dsse.IN_TOTO_PAYLOAD_TYPE
        ),
        "bad_signature",
    ),
    (
        "signed-by-another-key-claiming-ours",
        lambda: Envelope(PAYLOAD, dsse.IN_TOTO_PAYLOAD_TYPE, (Signature(_SIGNER.key_id, _OTHER.sign(_good().pae())),)),
        "bad_signature",
    ),
    (
        "signed-by-another-key-under-its-own-id",
        lambda: dsse.sign(PAYLOAD, _OTHER),
        "unknown_key",
    ),
    (
        "no-signatures",
        lambda: dataclasses.replace(_good(), signatures=()),
        "unknown_key",
    ),
    (
        "bad-signature-without-keyid",
        lambda: dataclasses.replace(_good(), signatures=(Signature("", _flip(_good().signatures[0].sig, 0)),)),
        "unknown_key",
    ),
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in TAMPER], ids=[n for n, _, _ in TAMPER])
def test_tampered_envelope_raises_with_its_reason(make: Callable[[], Envelope], reason: str) -> None:
    env = make()
    with pytest.raises(VerificationError) as exc:
        dsse.verify(env, _SIGNER.public_key())
    assert exc.value.reason == reason, f"expected reason {reason!r}, got {exc.value.reason!r}: {exc.value}"


def test_verify_expects_the_in_toto_type_unless_told_otherwise() -> None:
    env = dsse.sign(PAYLOAD, _SIGNER, payload_type="application/vnd.example+json")
    with pytest.raises(VerificationError) as exc:
        dsse.verify(env, _SIGNER.public_key())
    assert exc.value.reason == "bad_payload_type"
    assert dsse.verify(env, _SIGNER.public_key(), payload_type="application/vnd.example+json") == PAYLOAD


@pytest.mark.parametrize(
    "keyid",
    ["", "unknown-key-id", "sha256:" + "0" * 64, _OTHER.key_id],
    ids=["empty", "unknown", "unknown-sha256", "another-key"],
)
def test_keyid_is_only_a_hint_a_signature_verifies_whatever_it_names(keyid: str) -> None:
    """DSSE protocol.md: KEYID is optional and unauthenticated, and "MUST NOT be used for
    security decisions": a good signature without it, or naming no key or another, verifies."""
    env = dataclasses.replace(_good(), signatures=(Signature(keyid, _good().signatures[0].sig),))
    assert dsse.verify(env, _SIGNER.public_key()) == PAYLOAD


def test_a_signature_without_keyid_in_json_verifies() -> None:
    sig = base64.b64encode(_good().signatures[0].sig).decode()
    payload = base64.b64encode(PAYLOAD).decode()
    env = Envelope.from_json(
        {"payload": payload, "payloadType": dsse.IN_TOTO_PAYLOAD_TYPE, "signatures": [{"sig": sig}]}
    )
    assert env.signatures[0].keyid == ""
    assert dsse.verify(env, _SIGNER.public_key()) == PAYLOAD


def test_one_good_signature_among_bad_ones_for_the_same_key_verifies() -> None:
    good = _good().signatures[0]
    bad = Signature(_SIGNER.key_id, _flip(good.sig, 0))
    env = dataclasses.replace(_good(), signatures=(bad, Signature(_OTHER.key_id, b"x"), good))
    assert dsse.verify(env, _SIGNER.public_key()) == PAYLOAD


# -- JSON envelope ---------------------------------------------------------------------


@pytest.mark.parametrize("make_signer", [Ed25519Signer.generate, P256Signer], ids=[ED25519, ECDSA_P256])
def test_json_envelope_round_trip_still_verifies(make_signer: Callable[[], Any]) -> None:
    signer = make_signer()
    env = dsse.sign(PAYLOAD, signer)
    back = Envelope.from_json(json.loads(env.to_json_bytes()))
    assert back == env
    assert dsse.verify(back, signer.public_key()) == PAYLOAD


def test_json_envelope_has_exactly_the_dsse_fields() -> None:
    doc = _good().to_json()
    assert set(doc) == {"payload", "payloadType", "signatures"}
    assert base64.b64decode(doc["payload"]) == PAYLOAD
    assert set(doc["signatures"][0]) == {"keyid", "sig"}


def test_json_envelope_accepts_url_safe_base64() -> None:
    # DSSE protocol.md: "Either standard or URL-safe base64 encodings are allowed. [...]
    # verifiers MUST accept either."  b"\xfb\xff" is "+/8=" standard, "-_8=" URL-safe.
    payload = b"\xfb\xff"
    env = dsse.sign(payload, _SIGNER, payload_type="application/octet-stream")
    doc = env.to_json()
    assert doc["payload"] == "+/8="
    doc["payload"] = base64.urlsafe_b64encode(payload).decode()
    doc["signatures"][0]["sig"] = base64.urlsafe_b64encode(env.signatures[0].sig).decode()
    back = Envelope.from_json(doc)
    assert back.payload == payload
    assert dsse.verify(back, _SIGNER.public_key(), payload_type="application/octet-stream") == payload


def _doc(**changes: Any) -> dict[str, Any]:
    doc = _good().to_json()
    for k, v in changes.items():
        if v is _DELETE:
            del doc[k]
        else:
            doc[k] = v
    return doc


_DELETE = object()
_SIG_B64 = base64.b64encode(b"s" * 64).decode()

MALFORMED: list[tuple[str, Any]] = [
    ("not-an-object", ["payload"]),
    ("null", None),
    ("payload-missing", _doc(payload=_DELETE)),
    ("payloadType-missing", _doc(payloadType=_DELETE)),
    ("signatures-missing", _doc(signatures=_DELETE)),
    ("payload-bad-base64", _doc(payload="not base64!")),
    ("payload-bad-padding", _doc(payload="aGVsbG8")),
    ("payload-not-a-string", _doc(payload=12345)),
    ("payloadType-not-a-string", _doc(payloadType=7)),
    ("signatures-a-string", _doc(signatures="abc")),
    ("signatures-an-object", _doc(signatures={})),
    ("signature-not-an-object", _doc(signatures=["abc"])),
    ("sig-missing", _doc(signatures=[{"keyid": "k"}])),
    ("sig-bad-base64", _doc(signatures=[{"keyid": "k", "sig": "@@@@"}])),
    ("sig-not-a-string", _doc(signatures=[{"keyid": "k", "sig": 5}])),
    ("keyid-not-a-string", _doc(signatures=[{"keyid": 5, "sig": _SIG_B64}])),
]


@pytest.mark.parametrize("doc", [d for _, d in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_json_envelope_raises_schema_error(doc: Any) -> None:
    with pytest.raises(SchemaError) as exc:
        Envelope.from_json(doc)
    assert exc.value.reason == "malformed_envelope", f"reason {exc.value.reason!r}: {exc.value}"


def test_keyid_may_be_absent_in_json() -> None:
    # envelope.md makes keyid optional; an absent keyid names no key (and so verifies with none).
    env = Envelope.from_json(
        {"payload": SPEC_PAYLOAD_B64, "payloadType": SPEC_TYPE, "signatures": [{"sig": SPEC_SIG_RAW_B64}]}
    )
    assert env.signatures[0].keyid == ""
    with pytest.raises(VerificationError) as exc:
        dsse.verify(env, _spec_public_key(), payload_type=SPEC_TYPE)
    assert exc.value.reason == "unknown_key"
