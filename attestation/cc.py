"""Confidential-computing evidence: binding a node's chain to its GPUs' hardware.

Where a GPU runs in confidential-computing (CC) mode, the agent asks it for an SPDM
attestation report (NVML ``nvmlDeviceGetConfComputeGpuAttestationReport``) over a
32-byte nonce derived from the chain position of the statement that will carry it::

    nonce = SHA-256("gpuaudit-cc-nonce-v1\\n" || key_id || "\\n" || seq || "\\n" || prev)

so a report cannot be made before the chain reached that point, nor moved to another
chain. With the report the agent collects the GPU's attestation certificate chain (NVML
``nvmlDeviceGetConfComputeGpuCertificate``, ``attestationCertChain``: leaf first, as PEM or
DER). Both travel in the statement, as a GPU event of kind ``cc_attestation`` whose detail
is the JSON ``{"nonce_hex": ..., "report_b64": ..., "cert_chain_b64": ...}``;
``cert_chain_b64`` is absent where the chain could not be read (and in details written
before it existed). Statements without a report say why in the node-level
``unavailable["cc_attestation"]`` (``cc_mode_off``, an NVML error name, ``no_nvml``, or
``see_seq_<n>`` for the statement that carried the last one).

``verify_cc_report`` checks a report offline, and reports every problem with a stable
reason:

1. the detail's nonce, and the nonce in the report's SPDM request, are the one derived
   from the statement's own chain position (``cc_report_unbound``);
2. the report parses as an SPDM GET_MEASUREMENTS request and response (attestation.spdm;
   ``cc_report_malformed``);
3. there is a certificate chain (``cc_no_chain``) and it parses (``cc_chain_malformed``);
4. the chain leads to the pinned root, NVIDIA's "NVIDIA Device Identity CA" (or the root
   given to the verifier): each certificate signed by the next, ECDSA P-384 keys and
   ecdsa-with-SHA384 signatures, issuers marked CA with room in their path length and, when
   they have key usage, keyCertSign; no unknown critical extension (``cc_chain_untrusted``);
5. every certificate of the chain, the root included, is valid at the end of the window
   of the statement that carries the report, the time the report was made, not at the
   time of verification (``cc_cert_expired``): a bundle checked years later still verifies
   if its certificates were valid then;
6. the report's ECDSA P-384 signature verifies with the leaf's key (``cc_bad_signature``);
7. where the report carries a firmware identity (opaque field ``fwid``), the leaf
   certificate certifies the same one in its TCG DICE TcbInfo extension
   (``cc_fwid_mismatch``).

Revocation (NVIDIA's OCSP service) and the comparison of measurements with NVIDIA's
reference values (RIMs) need the network and are not done offline.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from attestation import spdm
from attestation.errors import SchemaError

CC_EVENT = "cc_attestation"
CC_UNAVAILABLE_FIELD = "cc_attestation"
# A GPU whose report is carried without its certificate chain says why under this key.
CC_CHAIN_UNAVAILABLE_FIELD = "cc_cert_chain"
NONCE_BYTES = 32
MAX_CHAIN_CERTS = 8  # NVIDIA's GPU attestation chains have 5

# NVIDIA's Device Identity root: nvtrust guest_tools/gpu_verifiers/local_gpu_verifier/src/
# verifier/certs/verifier_device_root.pem (CN=NVIDIA Device Identity CA, O=NVIDIA,
# ECDSA P-384, valid 2021-11-05 to 9999-12-31).
NVIDIA_DEVICE_ROOT_PEM = b"""-----BEGIN CERTIFICATE-----
MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw
IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE
SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM
GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG
ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX
gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB
2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY
MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3
TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+
EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=
-----END CERTIFICATE-----
"""
# SHA-256 of the root's DER encoding.
NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"

# TCG DICE TcbInfo (2.23.133.5.4.1): its fwids end with the SHA-384 digest of the firmware,
# DER: OID sha384 (2.16.840.1.101.3.4.2.2), OCTET STRING of 48 bytes.
_TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
_FWID_SHA384_PREFIX = bytes.fromhex("0609608648016503040202" + "0430")  # OID sha384, then OCTET STRING (48)
_KNOWN_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    ExtensionOID.CERTIFICATE_POLICIES,
}


def cc_nonce(key_id: str, seq: int, prev: str | None) -> bytes:
    """The 32-byte nonce for the statement (key_id, seq, prev)."""
    text = f"gpuaudit-cc-nonce-v1\n{key_id}\n{seq}\n{prev or ''}"
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True)
class CcReport:
    nonce: bytes
    report: bytes
    cert_chain: bytes | None = None  # as NVML returned it (PEM or DER), leaf first

    def detail(self) -> str:
        doc = {"nonce_hex": self.nonce.hex(), "report_b64": base64.b64encode(self.report).decode("ascii")}
        if self.cert_chain is not None:
            doc["cert_chain_b64"] = base64.b64encode(self.cert_chain).decode("ascii")
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def parse_cc_detail(detail: str) -> CcReport:
    """The report of a ``cc_attestation`` event. Raises SchemaError."""
    try:
        doc = json.loads(detail)
        nonce = bytes.fromhex(doc["nonce_hex"])
        report = base64.b64decode(doc["report_b64"], validate=True)
        raw_chain = doc.get("cert_chain_b64")
        chain = None if raw_chain is None else base64.b64decode(raw_chain, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise SchemaError(
            f"cc_attestation event detail is not {{nonce_hex, report_b64[, cert_chain_b64]}}: {exc}"
        ) from exc
    if len(nonce) != NONCE_BYTES:
        raise SchemaError(f"cc_attestation nonce has {len(nonce)} bytes, expected {NONCE_BYTES}")
    return CcReport(nonce=nonce, report=report, cert_chain=chain)


def check_cc_report(r: CcReport, key_id: str, seq: int, prev: str | None) -> str | None:
    """None when the report is bound to this chain position (the detail's nonce and the
    nonce of the report's SPDM request are the chain-derived one), else why not. The
    binding only; ``verify_cc_report`` checks the rest."""
    expected = cc_nonce(key_id, seq, prev)
    if r.nonce != expected:
        return f"nonce {r.nonce.hex()} is not the one derived from the chain ({expected.hex()})"
    try:
        request = spdm.parse_request(r.report[: spdm.REQUEST_BYTES])
    except spdm.SpdmError as exc:
        return f"the attestation report does not start with an SPDM GET_MEASUREMENTS request: {exc}"
    if request.nonce != expected:
        return (
            f"the report's SPDM request nonce {request.nonce.hex()} is not the one derived from the chain "
            f"({expected.hex()}): the report was made for another statement"
        )
    return None


# -- certificates ---------------------------------------------------------------------


def _split_der(data: bytes) -> list[bytes]:
    """Concatenated DER certificates, split by their outer SEQUENCE lengths."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise SchemaError(f"byte {pos} of the DER certificate chain does not start a certificate")
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if not 1 <= n <= 3 or pos + 2 + n > len(data):
                raise SchemaError(f"the DER certificate at byte {pos} has an unusable length")
            header, length = 2 + n, int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
        end = pos + header + length
        if end > len(data):
            raise SchemaError(
                f"the DER certificate at byte {pos} is truncated ({len(data) - pos} of {end - pos} bytes)"
            )
        out.append(data[pos:end])
        pos = end
    return out


def parse_cert_chain(data: bytes) -> list[x509.Certificate]:
    """Certificates from NVML's ``attestationCertChain`` (PEM, or concatenated DER), leaf
    first. Raises SchemaError."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(d) for d in _split_der(data)]
    except (ValueError, x509.InvalidVersion) as exc:
        raise SchemaError(f"the certificate chain does not parse: {exc}") from exc
    if not certs:
        raise SchemaError("the certificate chain is empty")
    if len(certs) > MAX_CHAIN_CERTS:
        raise SchemaError(f"the certificate chain has {len(certs)} certificates, more than {MAX_CHAIN_CERTS}")
    for k, cert in enumerate(certs):
        # cryptography decodes some fields only when asked: ask now, so that every later
        # use of the certificate works.
        try:
            _ = (cert.public_key(), list(cert.extensions), cert.subject, cert.issuer, cert.signature_algorithm_oid)
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
            raise SchemaError(f"certificate {k} of the chain does not parse: {exc}") from exc
        # The signature is the certificate's last field, a BIT STRING of whole octets: the
        # octet before its value counts unused bits and is 0 in DER. The parser tolerates
        # another count (and verifies the same signature), which would let one certificate
        # be carried in several encodings, with several fingerprints.
        der = cert.public_bytes(Encoding.DER)
        unused = der[-len(cert.signature) - 1]
        if unused != 0:
            raise SchemaError(f"certificate {k} of the chain is not DER: its signature declares {unused} unused bits")
    return certs


def load_cc_root(data: bytes) -> x509.Certificate:
    """One trust-anchor certificate, PEM or DER. Raises SchemaError."""
    certs = parse_cert_chain(data)
    if len(certs) != 1:
        raise SchemaError(f"a CC root file must hold one certificate, not {len(certs)}")
    return certs[0]


def nvidia_device_root() -> x509.Certificate:
    """The pinned NVIDIA Device Identity CA."""
    cert = x509.load_pem_x509_certificate(NVIDIA_DEVICE_ROOT_PEM)
    if fingerprint(cert) != NVIDIA_DEVICE_ROOT_SHA256:  # the constant and the PEM must agree
        raise SchemaError("the embedded NVIDIA Device Identity root does not match its pinned fingerprint")
    return cert


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, hex."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


@dataclass(frozen=True)
class CcProblem:
    """One reason a report does not verify: a stable ``reason`` and what a person needs to know."""

    reason: str
    message: str


def check_cert_chain(certs: list[x509.Certificate], root: x509.Certificate, at: dt.datetime) -> CcProblem | None:
    """None when ``certs`` (leaf first) lead to ``root`` and are all valid at ``at``, else
    the first problem (``cc_chain_untrusted`` before ``cc_cert_expired``)."""
    path = _path_to(certs, root)
    untrusted = _check_path(path, root)
    if untrusted is not None:
        return CcProblem("cc_chain_untrusted", untrusted)
    for cert in path:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            when = "not yet valid" if at < cert.not_valid_before_utc else "expired"
            return CcProblem(
                "cc_cert_expired",
                f"certificate {_name(cert)} is valid from {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: {when} at {at:%Y-%m-%dT%H:%M:%SZ}, "
                "the end of the statement's window",
            )
    return None


def _path_to(certs: list[x509.Certificate], root: x509.Certificate) -> list[x509.Certificate]:
    """The chain cut at the root where it includes it, with the root last."""
    root_der = root.public_bytes(Encoding.DER)
    for k, cert in enumerate(certs):
        if cert.public_bytes(Encoding.DER) == root_der:
            return [*certs[:k], root]
    return [*certs, root]


def _check_path(path: list[x509.Certificate], root: x509.Certificate) -> str | None:
    if len(path) < 2:
        return "the chain holds only the root: there is no attestation key"
    for k, cert in enumerate(path):
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            return f"certificate {k} ({_name(cert)}) does not hold an ECDSA P-384 key"
        for ext in cert.extensions:
            if ext.critical and ext.oid not in _KNOWN_EXTENSIONS:
                return f"certificate {k} ({_name(cert)}) has an unknown critical extension {ext.oid.dotted_string}"
    leaf = path[0]
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            return f"the leaf certificate ({_name(leaf)}) may not sign: its key usage lacks digitalSignature"
    except x509.ExtensionNotFound:
        pass
    for k in range(len(path) - 1):
        child, parent = path[k], path[k + 1]
        if child.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            return f"certificate {k} ({_name(child)}) is not signed with ecdsa-with-SHA384"
        if parent is root and child.issuer == child.subject:
            return (
                f"the chain ends in the root {_name(child)}, not in the trusted root {_name(root)} "
                f"(SHA-256 {fingerprint(root)})"
            )
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:  # names, algorithm, signature
            what = "the trusted root" if parent is root else "certificate"
            return (
                f"certificate {k} ({_name(child)}) is not issued by {what} {_name(parent)}: "
                f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
            )
        below = k  # CA certificates between this issuer and the leaf
        try:
            bc = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return f"issuer {_name(parent)} has no basicConstraints: it is not a CA"
        if not bc.ca:
            return f"issuer {_name(parent)} is not a CA (basicConstraints CA:FALSE)"
        if bc.path_length is not None and bc.path_length < below:
            return f"issuer {_name(parent)} allows {bc.path_length} CA(s) below it, the chain has {below}"
        try:
            if not parent.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
                return f"issuer {_name(parent)} may not sign certificates: its key usage lacks keyCertSign"
        except x509.ExtensionNotFound:
            pass
    return None


def leaf_fwid(cert: x509.Certificate) -> bytes | None:
    """The SHA-384 firmware identity in a certificate's TCG DICE TcbInfo extension, if any."""
    try:
        ext = cert.extensions.get_extension_for_oid(_TCG_DICE_TCB_INFO).value
    except x509.ExtensionNotFound:
        return None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    tail = raw[-(len(_FWID_SHA384_PREFIX) + spdm.FWID_BYTES) :]
    if len(tail) < len(_FWID_SHA384_PREFIX) + spdm.FWID_BYTES or not tail.startswith(_FWID_SHA384_PREFIX):
        return None
    return tail[len(_FWID_SHA384_PREFIX) :]


# -- the whole check --------------------------------------------------------------------


def verify_cc_report(
    r: CcReport,
    key_id: str,
    seq: int,
    prev: str | None,
    *,
    at: dt.datetime,
    root: x509.Certificate | None = None,
) -> list[CcProblem]:
    """Every reason the report does not verify (steps 1-7 of the module docstring); empty
    when it does. ``at`` is when the report was made (the statement's window end);
    ``root`` defaults to the pinned NVIDIA Device Identity CA."""
    anchor = root if root is not None else nvidia_device_root()
    problems: list[CcProblem] = []
    expected = cc_nonce(key_id, seq, prev)
    # 2. The report parses.
    report: spdm.AttestationReport | None = None
    try:
        report = spdm.parse_report(r.report)
    except spdm.SpdmError as exc:
        problems.append(CcProblem("cc_report_malformed", f"the attestation report is malformed: {exc}"))
    # 1. Bound to the chain position.
    if r.nonce != expected:
        problems.append(
            CcProblem(
                "cc_report_unbound",
                f"nonce {r.nonce.hex()} is not the one derived from the chain ({expected.hex()})",
            )
        )
    elif report is not None and report.request.nonce != expected:
        problems.append(
            CcProblem(
                "cc_report_unbound",
                f"the report's SPDM request nonce {report.request.nonce.hex()} is not the one derived from the "
                f"chain ({expected.hex()}): the report was made for another statement",
            )
        )
    # 3. A chain that parses.
    if r.cert_chain is None:
        problems.append(
            CcProblem(
                "cc_no_chain",
                "no certificate chain: the report's signature and origin cannot be checked "
                "(the agent could not read nvmlDeviceGetConfComputeGpuCertificate, or predates carrying it)",
            )
        )
        return problems
    try:
        certs = parse_cert_chain(r.cert_chain)
    except SchemaError as exc:
        problems.append(CcProblem("cc_chain_malformed", str(exc)))
        return problems
    # 4-5. Up to the root, valid when the report was made.
    chain_problem = check_cert_chain(certs, anchor, at)
    if chain_problem is not None:
        problems.append(chain_problem)
    if report is None:
        return problems
    # 6. Signed by the leaf's key (whether or not the chain is trusted: both are reported).
    leaf_key = certs[0].public_key()
    if isinstance(leaf_key, ec.EllipticCurvePublicKey) and isinstance(leaf_key.curve, ec.SECP384R1):
        try:
            spdm.verify_report_signature(report, leaf_key)
        except spdm.ReportSignatureError as exc:
            problems.append(CcProblem(exc.reason, str(exc)))
    # 7. The firmware the report names is the one the leaf certifies.
    fwid = report.fwid
    if fwid is not None:
        certified = leaf_fwid(certs[0])
        if certified != fwid:
            problems.append(
                CcProblem(
                    "cc_fwid_mismatch",
                    f"the report's firmware identity {fwid.hex()} is not the one the leaf certificate "
                    f"certifies ({certified.hex() if certified is not None else 'none'})",
                )
            )
    return problems
