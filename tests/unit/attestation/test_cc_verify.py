"""attestation.cc.verify_cc_report: a GPU attestation report verifies offline only when it is
bound to its statement's chain position, parses, and is signed by a leaf certified up to
the trusted root, valid when the report was made. Each failure has its own reason, in the
function, in a bundle, and at the gpuaudit-verify command line."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cc_factory import GENUINE_CHAIN_PEM, GENUINE_REPORT, NOT_AFTER, Pki, build_report, cert, p384, response_body
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from test_verify_tamper import FIRST_WINDOW_MS, WINDOW_MS, Node, Site

from agent.signing import ChainSigner
from agent.sources.cc import CcEvidence
from agent.spool import Spool
from attestation import dsse
from attestation.cc import (
    CC_EVENT,
    NVIDIA_DEVICE_ROOT_PEM,
    NVIDIA_DEVICE_ROOT_SHA256,
    CcProblem,
    CcReport,
    cc_nonce,
    check_cert_chain,
    load_cc_root,
    nvidia_device_root,
    parse_cc_detail,
    parse_cert_chain,
    verify_cc_report,
)
from attestation.errors import SchemaError
from attestation.keys import Ed25519Signer
from attestation.statement import Event, parse_statement
from attestation.verify import Report, verify_bundle
from attestation.verify_cli import main as verify_main

KEY_ID, SEQ, PREV = "ed25519:test", 7, "sha256:prev"
NONCE = cc_nonce(KEY_ID, SEQ, PREV)
AT = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _check(r: CcReport, root: x509.Certificate | None, at: dt.datetime = AT) -> list[CcProblem]:
    return verify_cc_report(r, KEY_ID, SEQ, PREV, at=at, root=root)


def _reasons(problems: list[CcProblem]) -> list[str]:
    return [p.reason for p in problems]


# -- the pinned root ----------------------------------------------------------------------


def test_the_pinned_root_is_nvidias_device_identity_ca() -> None:
    root = nvidia_device_root()
    der = root.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == NVIDIA_DEVICE_ROOT_SHA256
    assert NVIDIA_DEVICE_ROOT_SHA256 == "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    assert root.subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"
    assert root.subject == root.issuer
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    root.verify_directly_issued_by(root)
    assert load_cc_root(NVIDIA_DEVICE_ROOT_PEM) == root
    assert load_cc_root(der) == root


def test_a_genuine_h100_chain_leads_to_the_pinned_root() -> None:
    certs = parse_cert_chain(GENUINE_CHAIN_PEM)
    assert len(certs) == 5
    assert check_cert_chain(certs, nvidia_device_root(), AT) is None
    # The same chain as concatenated DER, and without the root, verifies the same.
    der = b"".join(c.public_bytes(Encoding.DER) for c in certs)
    assert check_cert_chain(parse_cert_chain(der), nvidia_device_root(), AT) is None
    assert check_cert_chain(certs[:-1], nvidia_device_root(), AT) is None


def test_a_genuine_h100_report_verifies_except_for_a_binding_it_never_had() -> None:
    """NVIDIA's sample report was made over its own nonce, not over one of our chain positions:
    its signature, chain and firmware identity all verify; only the binding fails."""
    r = CcReport(nonce=NONCE, report=GENUINE_REPORT, cert_chain=GENUINE_CHAIN_PEM)
    problems = _check(r, None)
    assert _reasons(problems) == ["cc_report_unbound"], problems
    assert "SPDM request nonce 931d8dd0" in problems[0].message


# -- each failure its own reason ------------------------------------------------------------


def test_a_bound_report_certified_to_the_root_verifies(pki: Pki) -> None:
    r = CcReport(NONCE, pki.report(NONCE), pki.chain_pem())
    assert _check(r, pki.root) == []
    # the chain without the root, and as DER, verify the same
    assert _check(dataclasses.replace(r, cert_chain=pki.chain_pem(pki.leaf, pki.inter)), pki.root) == []
    der = b"".join(c.public_bytes(Encoding.DER) for c in (pki.leaf, pki.inter))
    assert _check(dataclasses.replace(r, cert_chain=der), pki.root) == []


def test_bad_signature(pki: Pki) -> None:
    data = bytearray(pki.report(NONCE))
    data[60] ^= 0x40  # a measurement digest byte
    problems = _check(CcReport(NONCE, bytes(data), pki.chain_pem()), pki.root)
    assert _reasons(problems) == ["cc_bad_signature"], problems


def test_signed_by_another_device(pki: Pki) -> None:
    other = build_report(NONCE, p384(), fwid=pki.fwid)
    assert _reasons(_check(CcReport(NONCE, other, pki.chain_pem()), pki.root)) == ["cc_bad_signature"]


def test_chain_not_to_the_root(pki: Pki) -> None:
    problems = _check(CcReport(NONCE, pki.report(NONCE), pki.chain_pem()), Pki().root)
    assert _reasons(problems) == ["cc_chain_untrusted"], problems
    assert "not in the trusted root" in problems[0].message


def test_a_synthetic_chain_is_not_trusted_by_default(pki: Pki) -> None:
    problems = _check(CcReport(NONCE, pki.report(NONCE), pki.chain_pem()), None)
    assert _reasons(problems) == ["cc_chain_untrusted"]
    assert "NVIDIA Device Identity CA" in problems[0].message


def test_expired_at_the_time_of_the_report(pki: Pki) -> None:
    short = Pki(leaf_not_after=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    r = CcReport(NONCE, short.report(NONCE), short.chain_pem())
    assert _check(r, short.root, at=dt.datetime(2023, 12, 1, tzinfo=dt.UTC)) == []
    problems = _check(r, short.root, at=dt.datetime(2024, 2, 1, tzinfo=dt.UTC))
    assert _reasons(problems) == ["cc_cert_expired"], problems
    assert "expired at 2024-02-01T00:00:00Z" in problems[0].message
    early = _check(r, short.root, at=dt.datetime(2019, 1, 1, tzinfo=dt.UTC))
    assert _reasons(early) == ["cc_cert_expired"] and "not yet valid" in early[0].message


def test_nonce_mismatch_a_genuine_report_for_another_statement(pki: Pki) -> None:
    stale = cc_nonce(KEY_ID, SEQ - 1, None)
    problems = _check(CcReport(NONCE, pki.report(stale), pki.chain_pem()), pki.root)
    assert _reasons(problems) == ["cc_report_unbound"], problems
    moved = _check(CcReport(stale, pki.report(stale), pki.chain_pem()), pki.root)
    assert _reasons(moved) == ["cc_report_unbound"], moved


def test_malformed_report(pki: Pki) -> None:
    problems = _check(CcReport(NONCE, pki.report(NONCE)[:-1], pki.chain_pem()), pki.root)
    assert _reasons(problems) == ["cc_report_malformed"], problems
    assert "95 byte(s) after OpaqueData" in problems[0].message


def test_missing_chain_in_a_detail_written_before_chains_were_carried(pki: Pki) -> None:
    old = json.dumps({"nonce_hex": NONCE.hex(), "report_b64": base64.b64encode(pki.report(NONCE)).decode()})
    r = parse_cc_detail(old)
    assert r.cert_chain is None
    problems = _check(r, pki.root)
    assert _reasons(problems) == ["cc_no_chain"], problems
    assert "no certificate chain" in problems[0].message


def test_garbled_chain(pki: Pki) -> None:
    for garbage in (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", b"\x30\x82\xff", b"x"):
        problems = _check(CcReport(NONCE, pki.report(NONCE), garbage), pki.root)
        assert _reasons(problems) == ["cc_chain_malformed"], (garbage, problems)


def test_firmware_identity_not_the_certified_one(pki: Pki) -> None:
    report = build_report(NONCE, pki.leaf_key, fwid=bytes(48))
    problems = _check(CcReport(NONCE, report, pki.chain_pem()), pki.root)
    assert _reasons(problems) == ["cc_fwid_mismatch"], problems


def _chain_with(pki: Pki, inter: x509.Certificate, leaf: x509.Certificate) -> bytes:
    return pki.chain_pem(leaf, inter, pki.root)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("intermediate not a CA", "is not a CA"),
        ("intermediate without basicConstraints", "has no basicConstraints"),
        ("path length exceeded", "allows 0 CA(s) below it, the chain has 1"),
        ("intermediate left out", "is not issued by the trusted root"),
        ("leaf on P-256", "does not hold an ECDSA P-384 key"),
        ("signed with SHA-256", "is not signed with ecdsa-with-SHA384"),
        ("only the root", "holds only the root"),
    ],
)
def test_chains_that_break_the_rules_are_untrusted(pki: Pki, case: str, says: str) -> None:
    leaf_key = pki.leaf_key
    if case == "intermediate not a CA":
        inter = cert("Test GPU Identity", pki.inter_key, pki.root, pki.root_key, ca=False)
        chain = _chain_with(pki, inter, pki.leaf)
    elif case == "intermediate without basicConstraints":
        inter = cert("Test GPU Identity", pki.inter_key, pki.root, pki.root_key, ca=None)
        chain = _chain_with(pki, inter, pki.leaf)
    elif case == "path length exceeded":
        k2 = p384()
        inter2 = cert("Test GPU sub-CA", k2, pki.inter, pki.inter_key, ca=True)
        leaf = cert("Test GPU attestation", leaf_key, inter2, k2, ca=None, fwid=pki.fwid)
        chain = pki.chain_pem(leaf, inter2, pki.inter, pki.root)
    elif case == "intermediate left out":
        chain = pki.chain_pem(pki.leaf, pki.root)
    elif case == "leaf on P-256":
        k256 = ec.generate_private_key(ec.SECP256R1())
        leaf = cert("Test GPU attestation", k256, pki.inter, pki.inter_key, ca=None, fwid=pki.fwid)
        chain = _chain_with(pki, pki.inter, leaf)
    elif case == "signed with SHA-256":
        leaf = cert(
            "Test GPU attestation", leaf_key, pki.inter, pki.inter_key, ca=None, fwid=pki.fwid,
            hash_alg=hashes.SHA256(),
        )  # fmt: skip
        chain = _chain_with(pki, pki.inter, leaf)
    else:
        chain = pki.chain_pem(pki.root)
    problems = _check(CcReport(NONCE, pki.report(NONCE), chain), pki.root)
    assert "cc_chain_untrusted" in _reasons(problems), problems
    untrusted = next(p for p in problems if p.reason == "cc_chain_untrusted")
    assert says in untrusted.message, untrusted.message


def test_a_signature_with_unused_bits_is_not_der(pki: Pki) -> None:
    """A certificate whose signature BIT STRING declares an unused bit (its padding bit zero)
    parses, the same signature in another encoding: the chain is refused as not DER."""
    leaf = bytearray(pki.leaf.public_bytes(Encoding.DER))
    count = len(leaf) - len(pki.leaf.signature) - 1
    assert leaf[count] == 0
    leaf[count] = 1
    leaf[-1] &= 0xFE  # the padding bit must be zero, or the parser itself refuses it
    chain = bytes(leaf) + pki.inter.public_bytes(Encoding.DER)
    problems = _check(CcReport(NONCE, pki.report(NONCE), chain), pki.root)
    assert _reasons(problems) == ["cc_chain_malformed"], problems
    message = problems[0].message
    assert "certificate 0 of the chain is not DER: its signature declares 1 unused bits" in message, message


def test_a_root_file_must_hold_one_certificate(pki: Pki) -> None:
    with pytest.raises(SchemaError, match="one certificate, not 2"):
        load_cc_root(pki.chain_pem(pki.inter, pki.root))
    with pytest.raises(SchemaError, match="does not parse"):
        load_cc_root(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["report", "chain"]), st.data())
def test_garbled_evidence_never_raises(pki: Pki, part: str, data: st.DataObject) -> None:
    report = pki.report(NONCE)
    chain = b"".join(c.public_bytes(Encoding.DER) for c in (pki.leaf, pki.inter))  # DER: no encoding slack
    target = bytearray(report if part == "report" else chain)
    pos = data.draw(st.integers(0, len(target) - 1))
    target[pos] ^= data.draw(st.integers(1, 255))
    if part == "report":
        r = CcReport(NONCE, bytes(target), chain)
    else:
        r = CcReport(NONCE, report, bytes(target))
    problems = _check(r, pki.root)  # never raises; a flipped byte is always noticed
    assert problems, f"flipping byte {pos} of the {part} went unnoticed"


# -- in bundles and at the command line -------------------------------------------------------


def _with_cc(node: Node, detail: str) -> Any:
    w = node.window()
    g0 = msgspec.structs.replace(w.gpus[0], events=(Event(CC_EVENT, detail),))
    return (g0, *w.gpus[1:])


def _bundle_with(pki: Pki, make: Any) -> dict[str, Any]:
    site = Site()
    a = site.enroll(Node("a"))
    site.send(a, 1)
    site.send(a, 1, gpus=_with_cc(a, make(cc_nonce(a.key_id, a.seq, a.prev)).detail()))
    return site.bundle()


def _verify(doc: dict[str, Any], root: x509.Certificate | None) -> Report:
    return verify_bundle(json.dumps(doc).encode(), cc_root=root)


def test_in_a_bundle_each_failure_is_reported_with_its_reason(pki: Pki) -> None:
    good = _bundle_with(pki, lambda n: CcReport(n, pki.report(n), pki.chain_pem()))
    report = _verify(good, pki.root)
    assert report.ok, [str(f) for f in report.failures]
    assert _verify(good, None).reasons() == {"cc_chain_untrusted"}
    no_chain = _bundle_with(pki, lambda n: CcReport(n, pki.report(n)))
    assert _verify(no_chain, pki.root).reasons() == {"cc_no_chain"}
    garbled = _bundle_with(pki, lambda n: CcReport(n, pki.report(n)[:50], pki.chain_pem()))
    assert _verify(garbled, pki.root).reasons() == {"cc_report_malformed"}
    (f,) = _verify(garbled, pki.root).failures
    assert f.step == "cc_attestation" and f.seq == 1 and "GPU GPU-a-0" in f.message


def test_in_a_bundle_certificates_are_checked_at_the_windows_end() -> None:
    window_end = dt.datetime.fromtimestamp((FIRST_WINDOW_MS + 2 * WINDOW_MS) / 1000, tz=dt.UTC)
    lasting = Pki(leaf_not_after=window_end + dt.timedelta(minutes=5))
    ok = _bundle_with(lasting, lambda n: CcReport(n, lasting.report(n), lasting.chain_pem()))
    assert _verify(ok, lasting.root).ok, "valid when the report was made, though expired now"
    lapsed = Pki(leaf_not_after=window_end - dt.timedelta(minutes=5))
    late = _bundle_with(lapsed, lambda n: CcReport(n, lapsed.report(n), lapsed.chain_pem()))
    assert _verify(late, lapsed.root).reasons() == {"cc_cert_expired"}


def test_a_detail_that_is_not_json_is_a_malformed_report() -> None:
    site = Site()
    a = site.enroll(Node("a"))
    site.send(a, 1, gpus=_with_cc(a, "{not json"))
    assert _verify(site.bundle(), None).reasons() == {"cc_report_malformed"}


def test_cli_cc_root(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(_bundle_with(pki, lambda n: CcReport(n, pki.report(n), pki.chain_pem()))))
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.public_bytes(Encoding.PEM))
    assert verify_main([str(bundle), "--cc-root", str(root)]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    assert verify_main([str(bundle)]) == 1, "the pinned NVIDIA root does not certify a test chain"
    assert "cc_chain_untrusted" in capsys.readouterr().out
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert verify_main([str(bundle), "--cc-root", str(bad)]) == 2
    assert "is not a certificate" in capsys.readouterr().err
    assert verify_main([str(bundle), "--cc-root", str(tmp_path / "missing.pem")]) == 3  # a missing file


# -- from the agent's signer to the verifier ------------------------------------------------


def test_the_signer_carries_the_chain_and_its_reports_verify(pki: Pki, tmp_path: Path) -> None:
    def attest(nonce: bytes) -> CcEvidence:
        return CcEvidence(
            reports={0: pki.report(nonce), 1: pki.report(nonce)},
            chains={0: pki.chain_pem()},
            chain_unavailable={1: "NVML_ERROR_NOT_SUPPORTED"},
        )

    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    cs = ChainSigner(signer, spool, cc=attest)
    node = Node("a", gpus=2)
    node.signer = signer
    s = parse_statement(dsse.verify(cs.sign(node.window())[1], signer.public_key()))
    spool.close()
    at = dt.datetime.fromtimestamp(s.end_ms / 1000, tz=dt.UTC)
    (e0,) = [e for e in s.gpus[0].events if e.kind == CC_EVENT]
    r0 = parse_cc_detail(e0.detail)
    assert r0.cert_chain == pki.chain_pem()
    assert verify_cc_report(r0, s.chain.key_id, s.chain.seq, s.chain.prev, at=at, root=pki.root) == []
    (e1,) = [e for e in s.gpus[1].events if e.kind == CC_EVENT]
    r1 = parse_cc_detail(e1.detail)
    assert r1.cert_chain is None
    assert s.gpus[1].unavailable["cc_cert_chain"] == "NVML_ERROR_NOT_SUPPORTED"
    problems = verify_cc_report(r1, s.chain.key_id, s.chain.seq, s.chain.prev, at=at, root=pki.root)
    assert _reasons(problems) == ["cc_no_chain"]


def test_response_body_defaults_are_what_the_tests_assume() -> None:
    """Guards the factory: the default body parses with four blocks and the driver version."""
    from attestation import spdm

    r = spdm.parse_report(build_report(NONCE, p384(), body=response_body()))
    assert len(r.response.blocks) == 4 and r.driver_version == "550.90.07" and r.fwid is None
    assert NOT_AFTER.year == 2099
