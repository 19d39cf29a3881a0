"""Offline verification of a vendor bundle (docs/formats.md, "Vendor bundle v1").

A chip vendor runs this without trusting the data center: every envelope is checked
against its node's enrolled key, every chain is re-walked with the same rules the
collector applies (``attestation.chain.check_next``), every envelope's leaf is
recomputed from its bytes and proven to be in the log's signed checkpoint, and the
checkpoint is proven consistent with one the vendor kept from an earlier bundle.

Like keylime's verifier, ``verify_bundle`` does not stop at the first problem: it
collects every ``Failure`` with the step it belongs to and a stable reason, and returns
a ``Report`` (``Report.raise_for_failures`` raises for callers that prefer that). Only a
bundle that cannot be read at all (not JSON, truncated, wrong media type, missing
sections) ends verification early, with one "malformed_bundle" failure.

Completeness (step 9): the checkpoint commits every key's latest statement
(``attestation.heads``); a bundle whose chains stop short of them inside the period
(``tail_missing``) or that leaves out a key its selection covers (``missing_key``) fails,
and the coverage of the exported period is reported per serial and per node, every gap
with its length and cause (``attestation.coverage``). A bundle whose checkpoint commits no
heads (an older collector) verifies with a note that completeness is not proven.

Memory: ``verify_bundle_file`` maps the file and reads it a piece at a time
(``attestation.bundlereader``); of each statement only a slimmed window is kept.

Needs nothing outside the ``attestation`` package (protobuf, cryptography, msgspec).

The package, by step (numbered as in ``steps``, where they run in order):

- ``steps``: ``verify_bundle`` and ``verify_bundle_file``, the steps in order;
- ``bundle`` (0): reading the bundle and the shape checks of what is read;
- ``log`` (1, 6, 6b, 7): the log key, its checkpoint, inclusion and consistency proofs;
- ``signatures`` (2, 3): enrolled keys, each envelope's signature, what is kept of it;
- ``chains`` (4, 5): chains re-walked, key rotations;
- ``confidential`` (6c): confidential-computing reports;
- ``tenants`` (7b): the tenants' summaries signed by the log key;
- ``usage`` (8): usage per GPU serial and tenant;
- ``completeness`` (9): committed heads, coverage per serial, node and tenant;
- ``report``: ``Report``, ``Failure`` and the summaries;
- ``text``: the report for a person (gpuaudit-verify without ``--json``; the command line
  is attestation.verify_cli).
"""

from __future__ import annotations

from attestation.verify.bundle import BUNDLE_MEDIA_TYPE, BundleError
from attestation.verify.completeness import NO_HEADS_NOTE
from attestation.verify.log import PinnedLogKey
from attestation.verify.report import (
    MJ_PER_KWH,
    MS_PER_HOUR,
    STEPS,
    TRUST_ON_FIRST_USE,
    TRUST_PINNED,
    Failure,
    GpuUsage,
    NodeSummary,
    Report,
    SerialSummary,
    TenantSummary,
    TenantUsage,
)
from attestation.verify.steps import verify_bundle, verify_bundle_file
from attestation.verify.tenants import TENANT_SUMMARIES_PAYLOAD_TYPE

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "MJ_PER_KWH",
    "MS_PER_HOUR",
    "NO_HEADS_NOTE",
    "STEPS",
    "TENANT_SUMMARIES_PAYLOAD_TYPE",
    "TRUST_ON_FIRST_USE",
    "TRUST_PINNED",
    "BundleError",
    "Failure",
    "GpuUsage",
    "NodeSummary",
    "PinnedLogKey",
    "Report",
    "SerialSummary",
    "TenantSummary",
    "TenantUsage",
    "verify_bundle",
    "verify_bundle_file",
]
