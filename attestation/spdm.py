"""NVIDIA GPU attestation reports: SPDM GET_MEASUREMENTS request and response, parsed strictly.

What NVML ``nvmlDeviceGetConfComputeGpuAttestationReport`` returns is the SPDM 1.1 (DMTF
DSP0274) GET_MEASUREMENTS request the driver sent to the GPU, followed by the GPU's
MEASUREMENTS response, signed by the GPU's attestation key (the leaf of the chain from
``nvmlDeviceGetConfComputeGpuCertificate``). Integers are little-endian::

    request (37 bytes)
      0   SPDMVersion                1   0x11 (SPDM 1.1)
      1   RequestResponseCode        1   0xE0 GET_MEASUREMENTS
      2   Param1                     1   bit 0: a signature is requested (must be set)
      3   Param2                     1   measurement operation (0xFF: all blocks)
      4   Nonce                      32  the requester's nonce (attestation.cc's chain-derived nonce)
      36  SlotIDParam                1   the certificate slot
    response
      0   SPDMVersion                1   same as the request's
      1   RequestResponseCode        1   0x60 MEASUREMENTS
      2   Param1, Param2             2
      4   NumberOfBlocks             1
      5   MeasurementRecordLength    3   L1
      8   MeasurementRecord          L1  NumberOfBlocks blocks:
                                           Index 1, MeasurementSpecification 1 (0x01, DMTF),
                                           MeasurementSize 2, then the DMTF measurement:
                                           ValueType 1, ValueSize 2, Value
      8+L1   Nonce                   32  the responder's nonce
      40+L1  OpaqueLength            2   L2
      42+L1  OpaqueData              L2  NVIDIA fields: DataType 2, DataSize 2, Data, repeated
      42+L1+L2 Signature             96  ECDSA P-384, r || s (48 bytes each, big-endian)

The signature covers SHA-384 of request || response up to the signature (SPDM 1.1's
L1/L2 transcript for a single GET_MEASUREMENTS exchange). This is the layout NVIDIA's own
verifier parses (nvtrust, ``guest_tools/gpu_verifiers/local_gpu_verifier``:
``spdm_msrt_req_msg.py``, ``spdm_msrt_resp_msg.py``); the opaque field identifiers are
NVIDIA's (``OPAQUE_FIELD_ID_*`` there).

Parsing is strict: every length is checked against the bytes that are there, nothing may
follow the signature, and each problem raises ``SpdmError`` naming the field and offset.
SPDM 1.2 and later sign a different transcript (a version-specific prefix) and are refused
rather than checked against the wrong bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import SchemaError, VerificationError

REQUEST_BYTES = 37
NONCE_BYTES = 32
SIGNATURE_BYTES = 96  # ECDSA P-384: r || s
MAX_REPORT_BYTES = 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE

GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
SUPPORTED_VERSIONS = (0x10, 0x11)  # SPDM 1.0 and 1.1 sign request || response as is
DMTF_MEASUREMENT_SPECIFICATION = 0x01
PARAM1_SIGNATURE_REQUESTED = 0x01

# NVIDIA's opaque data field identifiers (nvtrust OpaqueData.OPAQUE_DATA_TYPES).
OPAQUE_FIELD_NAMES = {
    1: "cert_issuer_name",
    2: "cert_authority_key_identifier",
    3: "driver_version",
    4: "gpu_info",
    5: "sku",
    6: "vbios_version",
    7: "manufacturer_id",
    8: "tamper_detection",
    9: "smc",
    10: "vpr",
    11: "nvdec0_status",
    12: "msrscnt",
    13: "cprinfo",
    14: "board_id",
    15: "chip_sku",
    16: "chip_sku_mod",
    17: "project",
    18: "project_sku",
    19: "project_sku_mod",
    20: "fwid",
    21: "protected_pcie_status",
    22: "switch_pdi",
    23: "floorswept_ports",
    24: "position_id",
    25: "lock_switch_status",
    32: "gpu_link_conn",
    255: "invalid",
}
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_MSRSCNT = 12
OPAQUE_FWID = 20
FWID_BYTES = 48  # SHA-384


class SpdmError(SchemaError):
    """An attestation report is not a well-formed SPDM GET_MEASUREMENTS request and response."""

    reason = "cc_report_malformed"


class ReportSignatureError(VerificationError):
    """An attestation report's signature does not verify with the attestation key."""

    reason = "cc_bad_signature"


@dataclass(frozen=True)
class MeasurementRequest:
    version: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block: its index, the DMTF value type, and the value (a digest
    or raw bitstream, as the type says)."""

    index: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class OpaqueField:
    field_id: int
    value: bytes

    @property
    def name(self) -> str:
        return OPAQUE_FIELD_NAMES.get(self.field_id, f"field_{self.field_id}")


@dataclass(frozen=True)
class MeasurementsResponse:
    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    nonce: bytes
    opaque: tuple[OpaqueField, ...]
    signature: bytes


@dataclass(frozen=True)
class AttestationReport:
    """A parsed report; ``signed`` is the exact byte string the signature covers."""

    request: MeasurementRequest
    response: MeasurementsResponse
    signed: bytes

    def opaque_value(self, field_id: int) -> bytes | None:
        return next((f.value for f in self.response.opaque if f.field_id == field_id), None)

    @property
    def driver_version(self) -> str | None:
        v = self.opaque_value(OPAQUE_DRIVER_VERSION)
        return None if v is None else v.rstrip(b"\0").decode("ascii", errors="replace")

    @property
    def fwid(self) -> bytes | None:
        """The firmware identity (SHA-384) the GPU reports, where it reports one."""
        return self.opaque_value(OPAQUE_FWID)


class _Reader:
    def __init__(self, data: bytes, base: int, part: str) -> None:
        self.data = data
        self.pos = 0
        self.base = base  # offset of ``data`` in the whole report, for messages
        self.part = part

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise SpdmError(
                f"{self.part}: {what} needs {n} byte(s) at offset {self.base + self.pos}, "
                f"only {self.left} left: the report is truncated or a length field is wrong"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def le(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "little")


def parse_request(data: bytes) -> MeasurementRequest:
    """The 37-byte GET_MEASUREMENTS request at the start of a report. Raises SpdmError."""
    r = _Reader(data, 0, "SPDM request")
    version = r.u8("SPDMVersion")
    if version not in SUPPORTED_VERSIONS:
        raise SpdmError(
            f"SPDM request: version 0x{version:02x} is not supported (expected SPDM 1.1, 0x11; "
            "SPDM 1.2 and later sign a different transcript)"
        )
    code = r.u8("RequestResponseCode")
    if code != GET_MEASUREMENTS:
        raise SpdmError(f"SPDM request: code 0x{code:02x} is not GET_MEASUREMENTS (0x{GET_MEASUREMENTS:02x})")
    param1 = r.u8("Param1")
    if not param1 & PARAM1_SIGNATURE_REQUESTED:
        raise SpdmError(f"SPDM request: Param1 0x{param1:02x} does not ask for a signature: the report is unsigned")
    param2 = r.u8("Param2")
    nonce = r.take(NONCE_BYTES, "Nonce")
    slot_id = r.u8("SlotIDParam")
    if r.left:
        raise SpdmError(f"SPDM request: {r.left} byte(s) after SlotIDParam, expected {REQUEST_BYTES} bytes in all")
    return MeasurementRequest(version, param1, param2, nonce, slot_id)


def _parse_blocks(record: bytes, count: int, base: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record, base, "MeasurementRecord")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for k in range(count):
        what = f"block {k + 1} of {count}"
        index = r.u8(f"{what} Index")
        if index in seen:
            raise SpdmError(f"MeasurementRecord: {what} repeats index {index}")
        seen.add(index)
        spec = r.u8(f"{what} MeasurementSpecification")
        if spec != DMTF_MEASUREMENT_SPECIFICATION:
            raise SpdmError(
                f"MeasurementRecord: {what} (index {index}) has MeasurementSpecification 0x{spec:02x}, "
                f"not DMTF (0x{DMTF_MEASUREMENT_SPECIFICATION:02x})"
            )
        size = r.le(2, f"{what} MeasurementSize")
        m = _Reader(r.take(size, f"{what} Measurement"), base + r.pos - size, f"MeasurementRecord {what}")
        value_type = m.u8("DMTFSpecMeasurementValueType")
        value_size = m.le(2, "DMTFSpecMeasurementValueSize")
        value = m.take(value_size, "DMTFSpecMeasurementValue")
        if m.left:
            raise SpdmError(
                f"MeasurementRecord: {what} (index {index}) has MeasurementSize {size} but its DMTF value "
                f"of {value_size} byte(s) fills only {size - m.left}"
            )
        blocks.append(MeasurementBlock(index, value_type, value))
    if r.left:
        raise SpdmError(f"MeasurementRecord: {r.left} byte(s) after the {count} block(s) its length announces")
    return tuple(blocks)


def _parse_opaque(data: bytes, base: int) -> tuple[OpaqueField, ...]:
    r = _Reader(data, base, "OpaqueData")
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while r.left:
        field_id = r.le(2, "DataType")
        size = r.le(2, f"DataSize of field {field_id}")
        value = r.take(size, f"Data of field {field_id}")
        if field_id in seen:
            raise SpdmError(f"OpaqueData: field {field_id} ({OPAQUE_FIELD_NAMES.get(field_id, '?')}) appears twice")
        seen.add(field_id)
        if field_id == OPAQUE_FWID and size != FWID_BYTES:
            raise SpdmError(f"OpaqueData: the fwid field has {size} byte(s), expected {FWID_BYTES} (SHA-384)")
        if field_id == OPAQUE_MSRSCNT and size % 4:
            raise SpdmError(f"OpaqueData: the msrscnt field has {size} byte(s), not a multiple of 4")
        fields.append(OpaqueField(field_id, value))
    return tuple(fields)


def parse_report(data: bytes) -> AttestationReport:
    """Parse a whole report (request || response). Raises SpdmError with the reason."""
    if len(data) > MAX_REPORT_BYTES:
        raise SpdmError(f"the report has {len(data)} bytes, more than NVML's {MAX_REPORT_BYTES}")
    if len(data) < REQUEST_BYTES:
        raise SpdmError(f"the report has {len(data)} bytes, fewer than the {REQUEST_BYTES}-byte SPDM request")
    request = parse_request(data[:REQUEST_BYTES])
    r = _Reader(data[REQUEST_BYTES:], REQUEST_BYTES, "SPDM response")
    version = r.u8("SPDMVersion")
    if version != request.version:
        raise SpdmError(f"SPDM response: version 0x{version:02x} differs from the request's 0x{request.version:02x}")
    code = r.u8("RequestResponseCode")
    if code != MEASUREMENTS:
        raise SpdmError(f"SPDM response: code 0x{code:02x} is not MEASUREMENTS (0x{MEASUREMENTS:02x})")
    param1 = r.u8("Param1")
    param2 = r.u8("Param2")
    count = r.u8("NumberOfBlocks")
    if count == 0:
        raise SpdmError("SPDM response: NumberOfBlocks is 0: the report measures nothing")
    record_len = r.le(3, "MeasurementRecordLength")
    record_base = REQUEST_BYTES + r.pos
    blocks = _parse_blocks(r.take(record_len, "MeasurementRecord"), count, record_base)
    nonce = r.take(NONCE_BYTES, "Nonce")
    opaque_len = r.le(2, "OpaqueLength")
    opaque_base = REQUEST_BYTES + r.pos
    opaque = _parse_opaque(r.take(opaque_len, "OpaqueData"), opaque_base)
    if r.left != SIGNATURE_BYTES:
        raise SpdmError(
            f"SPDM response: {r.left} byte(s) after OpaqueData, expected exactly the {SIGNATURE_BYTES}-byte "
            "ECDSA P-384 signature"
        )
    signature = r.take(SIGNATURE_BYTES, "Signature")
    response = MeasurementsResponse(version, param1, param2, blocks, nonce, opaque, signature)
    return AttestationReport(request, response, data[: len(data) - SIGNATURE_BYTES])


def verify_report_signature(report: AttestationReport, key: ec.EllipticCurvePublicKey) -> None:
    """The report's signature verifies with ``key`` (ECDSA P-384, SHA-384). Raises
    ReportSignatureError."""
    if not isinstance(key.curve, ec.SECP384R1):
        raise ReportSignatureError(f"the attestation key is on {key.curve.name}, not P-384 (secp384r1)")
    sig = report.response.signature
    r = int.from_bytes(sig[:48], "big")
    s = int.from_bytes(sig[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ReportSignatureError(
            "the report's ECDSA P-384 signature does not verify with the attestation key of the certificate "
            "chain's leaf: the report was altered or made by another device"
        ) from None
