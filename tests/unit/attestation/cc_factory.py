"""Synthetic but structurally real GPU attestation evidence for tests: a P-384 test PKI
(root -> intermediate -> leaf, shaped like NVIDIA's device chain) and SPDM 1.1
GET_MEASUREMENTS reports laid out as attestation/spdm.py documents, signed by the leaf."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from attestation.cc import NVIDIA_DEVICE_ROOT_PEM

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cc"
GENUINE_REPORT = bytes.fromhex((FIXTURES / "nvtrust_hopper_report.hex").read_text().strip())
GENUINE_CHAIN_PEM = (FIXTURES / "nvtrust_hopper_chain.pem").read_bytes()
assert NVIDIA_DEVICE_ROOT_PEM.strip() in GENUINE_CHAIN_PEM  # the sample chain ends in the pinned root

NOT_BEFORE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)
SHA384_FWID_PREFIX = bytes.fromhex("0609608648016503040202" + "0430")  # OID sha384, OCTET STRING (48)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "T")])


def _tcb_info(fwid: bytes) -> x509.UnrecognizedExtension:
    """A TCG DICE TcbInfo extension whose fwids end with (sha384, fwid), as NVIDIA's leaf has."""
    fwid_der = SHA384_FWID_PREFIX + fwid  # OID sha384, OCTET STRING (48)
    fwids = b"\x30" + bytes([len(fwid_der)]) + fwid_der
    fwid_list = b"\xa6" + bytes([len(fwids)]) + fwids
    body = b"\x02\x01\x01" + fwid_list
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), b"\x30" + bytes([len(body)]) + body)


def cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool | None,
    path_length: int | None = None,
    not_before: dt.datetime = NOT_BEFORE,
    not_after: dt.datetime = NOT_AFTER,
    fwid: bytes | None = None,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    b = b.add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=bool(ca), **usage), critical=True)
    if fwid is not None:
        b = b.add_extension(_tcb_info(fwid), critical=False)
    return b.sign(issuer_key, hash_alg or hashes.SHA384())


def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@dataclass
class Pki:
    """root -> intermediate -> leaf; the leaf's key signs reports."""

    fwid: bytes | None = bytes(range(48))
    leaf_not_after: dt.datetime = NOT_AFTER
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=p384)
    inter_key: ec.EllipticCurvePrivateKey = field(default_factory=p384)
    leaf_key: ec.EllipticCurvePrivateKey = field(default_factory=p384)

    def __post_init__(self) -> None:
        self.root = cert("Test Device Identity CA", self.root_key, None, self.root_key, ca=True)
        self.inter = cert("Test GPU Identity", self.inter_key, self.root, self.root_key, ca=True, path_length=0)
        self.leaf = cert(
            "Test GPU attestation", self.leaf_key, self.inter, self.inter_key, ca=None,
            fwid=self.fwid, not_after=self.leaf_not_after,
        )  # fmt: skip

    def chain_pem(self, *certs: x509.Certificate) -> bytes:
        """PEM, leaf first; by default leaf, intermediate, root (as NVML gives it)."""
        return b"".join(c.public_bytes(Encoding.PEM) for c in (certs or (self.leaf, self.inter, self.root)))

    def report(self, nonce: bytes, **kw: Any) -> bytes:
        return build_report(nonce, self.leaf_key, fwid=self.fwid, **kw)


def request(nonce: bytes, *, version: int = 0x11, code: int = 0xE0, param1: int = 0x01) -> bytes:
    return bytes([version, code, param1, 0xFF]) + nonce + b"\x00"


def block(index: int, value: bytes, *, spec: int = 0x01, value_type: int = 0x01) -> bytes:
    m = bytes([value_type]) + len(value).to_bytes(2, "little") + value
    return bytes([index, spec]) + len(m).to_bytes(2, "little") + m


def opaque_field(field_id: int, value: bytes) -> bytes:
    return field_id.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def response_body(
    *,
    blocks: list[bytes] | None = None,
    count: int | None = None,
    opaque: bytes | None = None,
    fwid: bytes | None = None,
    version: int = 0x11,
    code: int = 0x60,
) -> bytes:
    """The MEASUREMENTS response up to (without) the signature."""
    blocks = blocks if blocks is not None else [block(i, bytes([i]) * 48) for i in range(1, 5)]
    record = b"".join(blocks)
    if opaque is None:
        opaque = opaque_field(3, b"550.90.07\0") + opaque_field(6, bytes.fromhex("009f009601000000"))
        if fwid is not None:
            opaque += opaque_field(20, fwid)
    return (
        bytes([version, code, 0x00, 0x00, len(blocks) if count is None else count])
        + len(record).to_bytes(3, "little")
        + record
        + b"\xa5" * 32
        + len(opaque).to_bytes(2, "little")
        + opaque
    )


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def build_report(
    nonce: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    fwid: bytes | None = None,
    req: bytes | None = None,
    body: bytes | None = None,
) -> bytes:
    """request || response || signature, signed by ``key`` the way the GPU signs."""
    signed = (req if req is not None else request(nonce)) + (body if body is not None else response_body(fwid=fwid))
    return signed + sign(key, signed)
