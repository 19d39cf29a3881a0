"""attestation.spdm: NVIDIA GPU attestation reports (SPDM GET_MEASUREMENTS request and
response) parsed strictly, against a genuine H100 report from NVIDIA's nvtrust samples and
synthetic reports built field by field; every malformation is a SpdmError naming it."""

from __future__ import annotations

import pytest
from cc_factory import (
    GENUINE_CHAIN_PEM,
    GENUINE_REPORT,
    block,
    build_report,
    opaque_field,
    p384,
    request,
    response_body,
    sign,
)
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import spdm

NONCE = bytes(range(32))
FWID = bytes(range(100, 148))


def test_a_genuine_h100_report_parses_and_its_signature_verifies_with_its_leaf() -> None:
    r = spdm.parse_report(GENUINE_REPORT)
    assert (r.request.version, r.request.param1, r.request.param2, r.request.slot_id) == (0x11, 0x01, 0xFF, 0)
    assert r.request.nonce.hex() == "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    assert [b.index for b in r.response.blocks] == list(range(1, 65))
    assert all(len(b.value) == 48 for b in r.response.blocks)
    assert r.driver_version == "550.90.07"
    assert r.fwid is not None and r.fwid.hex().startswith("f5c384aebb579217")
    assert {f.name for f in r.response.opaque} >= {"driver_version", "vbios_version", "project", "fwid"}
    assert r.signed + r.response.signature == GENUINE_REPORT
    leaf = x509.load_pem_x509_certificates(GENUINE_CHAIN_PEM)[0]
    key = leaf.public_key()
    assert isinstance(key, spdm.ec.EllipticCurvePublicKey)
    spdm.verify_report_signature(r, key)


def test_a_genuine_report_with_one_measurement_bit_flipped_fails_its_signature() -> None:
    data = bytearray(GENUINE_REPORT)
    data[200] ^= 0x01  # inside measurement block 3's digest: the structure still parses
    r = spdm.parse_report(bytes(data))
    key = x509.load_pem_x509_certificates(GENUINE_CHAIN_PEM)[0].public_key()
    assert isinstance(key, spdm.ec.EllipticCurvePublicKey)
    with pytest.raises(spdm.ReportSignatureError) as exc:
        spdm.verify_report_signature(r, key)
    assert exc.value.reason == "cc_bad_signature"


def test_a_synthetic_report_round_trips_every_field() -> None:
    key = p384()
    blocks = [block(1, b"\x11" * 48), block(7, b"raw", value_type=0x80)]
    body = response_body(blocks=blocks, fwid=FWID)
    data = build_report(NONCE, key, body=body)
    r = spdm.parse_report(data)
    assert r.request.nonce == NONCE
    assert r.response.blocks == (
        spdm.MeasurementBlock(1, 0x01, b"\x11" * 48),
        spdm.MeasurementBlock(7, 0x80, b"raw"),
    )
    assert r.response.nonce == b"\xa5" * 32
    assert r.fwid == FWID and r.driver_version == "550.90.07"
    assert r.opaque_value(999) is None
    spdm.verify_report_signature(r, key.public_key())
    with pytest.raises(spdm.ReportSignatureError):
        spdm.verify_report_signature(r, p384().public_key())


def test_a_key_on_another_curve_is_refused() -> None:
    r = spdm.parse_report(build_report(NONCE, p384()))
    with pytest.raises(spdm.ReportSignatureError, match="not P-384"):
        spdm.verify_report_signature(r, spdm.ec.generate_private_key(spdm.ec.SECP256R1()).public_key())


def _signed(req: bytes, body: bytes) -> bytes:
    return req + body + sign(p384(), req + body)


GOOD_BODY = response_body()
# (case, report bytes, what the error must say)
MALFORMED = [
    ("empty", b"", "fewer than the 37-byte SPDM request"),
    ("request only", request(NONCE), "SPDMVersion needs 1 byte"),
    ("SPDM 1.2", _signed(request(NONCE, version=0x12), response_body(version=0x12)), "0x12 is not supported"),
    ("not GET_MEASUREMENTS", _signed(request(NONCE, code=0x81), GOOD_BODY), "not GET_MEASUREMENTS"),
    ("unsigned request", _signed(request(NONCE, param1=0x00), GOOD_BODY), "does not ask for a signature"),
    ("version differs", _signed(request(NONCE, version=0x10), GOOD_BODY), "differs from the request"),
    ("not MEASUREMENTS", _signed(request(NONCE), response_body(code=0x7F)), "not MEASUREMENTS"),
    ("no blocks", _signed(request(NONCE), response_body(blocks=[])), "NumberOfBlocks is 0"),
    ("fewer blocks than announced", _signed(request(NONCE), response_body(count=5)), "block 5 of 5 Index needs"),
    ("more blocks than announced", _signed(request(NONCE), response_body(count=3)), "after the 3 block(s)"),
    (
        "not DMTF",
        _signed(request(NONCE), response_body(blocks=[block(1, b"x" * 48, spec=0x02)])),
        "not DMTF",
    ),
    (
        "repeated index",
        _signed(request(NONCE), response_body(blocks=[block(1, b"x" * 48), block(1, b"y" * 48)])),
        "repeats index 1",
    ),
    (
        "measurement size larger than its value",
        _signed(request(NONCE), response_body(blocks=[bytes([1, 1, 52, 0, 1, 48, 0]) + b"z" * 49])),
        "fills only 51",
    ),
    (
        "value overruns its measurement",
        _signed(request(NONCE), response_body(blocks=[bytes([1, 1, 51, 0, 1, 49, 0]) + b"z" * 48])),
        "DMTFSpecMeasurementValue needs 49",
    ),
    (
        "opaque field overruns",
        _signed(request(NONCE), response_body(opaque=b"\x03\x00\x10\x00abc")),
        "Data of field 3 needs 16",
    ),
    (
        "opaque field twice",
        _signed(request(NONCE), response_body(opaque=opaque_field(3, b"1") + opaque_field(3, b"2"))),
        "field 3 (driver_version) appears twice",
    ),
    ("short fwid", _signed(request(NONCE), response_body(opaque=opaque_field(20, b"f" * 32))), "fwid field has 32"),
    ("bad msrscnt", _signed(request(NONCE), response_body(opaque=opaque_field(12, b"123"))), "not a multiple of 4"),
    ("short signature", request(NONCE) + GOOD_BODY + b"s" * 95, "95 byte(s) after OpaqueData"),
    ("trailing bytes", _signed(request(NONCE), GOOD_BODY) + b"\x00", "97 byte(s) after OpaqueData"),
    ("larger than NVML's buffer", b"\x11" * (spdm.MAX_REPORT_BYTES + 1), "more than NVML's 8192"),
]


@pytest.mark.parametrize(("data", "says"), [(d, s) for _, d, s in MALFORMED], ids=[c for c, _, _ in MALFORMED])
def test_malformed_reports_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(spdm.SpdmError) as exc:
        spdm.parse_report(data)
    assert says in str(exc.value), str(exc.value)
    assert exc.value.reason == "cc_report_malformed"


@pytest.mark.parametrize("report", [GENUINE_REPORT, build_report(NONCE, p384())], ids=["genuine", "synthetic"])
def test_every_truncation_is_a_clear_parse_error(report: bytes) -> None:
    for n in range(len(report)):
        with pytest.raises(spdm.SpdmError):
            spdm.parse_report(report[:n])


def test_a_truncated_report_names_the_field_and_offset() -> None:
    cut = GENUINE_REPORT[:100]
    with pytest.raises(spdm.SpdmError, match=r"MeasurementRecord needs 3520 byte\(s\) at offset 45, only 55 left"):
        spdm.parse_report(cut)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_spdm_error(data: bytes) -> None:
    try:
        spdm.parse_report(data)
    except spdm.SpdmError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(GENUINE_REPORT) - 1), st.integers(min_value=1, max_value=255))
def test_garbled_genuine_reports_parse_or_raise_spdm_error(pos: int, xor: int) -> None:
    data = bytearray(GENUINE_REPORT)
    data[pos] ^= xor
    try:
        r = spdm.parse_report(bytes(data))
    except spdm.SpdmError:
        return
    key = x509.load_pem_x509_certificates(GENUINE_CHAIN_PEM)[0].public_key()
    assert isinstance(key, spdm.ec.EllipticCurvePublicKey)
    with pytest.raises(spdm.ReportSignatureError):  # whatever still parses, the signature catches
        spdm.verify_report_signature(r, key)
