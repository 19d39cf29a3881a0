"""Confidential-computing evidence: binding a node's chain to its GPUs' hardware.

Where a GPU runs in confidential-computing (CC) mode, the agent asks it for an SPDM
attestation report (NVML ``nvmlDeviceGetConfComputeGpuAttestationReport``) over a
32-byte nonce derived from the chain position of the statement that will carry it::

    nonce = SHA-256("gpuaudit-cc-nonce-v1\\n" || key_id || "\\n" || seq || "\\n" || prev)

so a report cannot be made before the chain reached that point, nor moved to another
chain. The report travels in the statement, as a GPU event of kind ``cc_attestation``
whose detail is the JSON ``{"nonce_hex": ..., "report_b64": ...}``. Statements without a
report say why in the node-level ``unavailable["cc_attestation"]`` (``cc_mode_off``, an
NVML error name, ``no_nvml``, or ``see_seq_<n>`` for the statement that carried the last
one).

The verifier checks that the nonce is the one derived from the statement's own chain and
that the report echoes it (the SPDM request, with its nonce, is the report's first part).
Checking the report's signature up to NVIDIA's root certificate needs NVIDIA's
certificate chain and is not done offline here (docs/vendor-guide.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from attestation.errors import SchemaError

CC_EVENT = "cc_attestation"
CC_UNAVAILABLE_FIELD = "cc_attestation"
NONCE_BYTES = 32


def cc_nonce(key_id: str, seq: int, prev: str | None) -> bytes:
    """The 32-byte nonce for the statement (key_id, seq, prev)."""
    text = f"gpuaudit-cc-nonce-v1\n{key_id}\n{seq}\n{prev or ''}"
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True)
class CcReport:
    nonce: bytes
    report: bytes

    def detail(self) -> str:
        return json.dumps(
            {"nonce_hex": self.nonce.hex(), "report_b64": base64.b64encode(self.report).decode("ascii")},
            separators=(",", ":"),
            sort_keys=True,
        )


def parse_cc_detail(detail: str) -> CcReport:
    """The report of a ``cc_attestation`` event. Raises SchemaError."""
    try:
        doc = json.loads(detail)
        nonce = bytes.fromhex(doc["nonce_hex"])
        report = base64.b64decode(doc["report_b64"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SchemaError(f"cc_attestation event detail is not {{nonce_hex, report_b64}}: {exc}") from exc
    if len(nonce) != NONCE_BYTES:
        raise SchemaError(f"cc_attestation nonce has {len(nonce)} bytes, expected {NONCE_BYTES}")
    return CcReport(nonce=nonce, report=report)


def check_cc_report(r: CcReport, key_id: str, seq: int, prev: str | None) -> str | None:
    """None when the report is bound to this chain position, else why not."""
    expected = cc_nonce(key_id, seq, prev)
    if r.nonce != expected:
        return f"nonce {r.nonce.hex()} is not the one derived from the chain ({expected.hex()})"
    if expected not in r.report:
        return "the attestation report does not contain the chain's nonce"
    return None
