"""Step 7b: the tenants' KYC summaries, signed by the log key (DSSE)."""

from __future__ import annotations

from typing import Any

from attestation import dsse, strictjson
from attestation.errors import Error
from attestation.keys import PublicKey
from attestation.verify.bundle import BundleError, as_envelope, as_obj, one_line
from attestation.verify.report import Report

TENANT_SUMMARIES_PAYLOAD_TYPE = "application/vnd.gpuaudit.tenant-summaries.v1+json"


def verify_tenant_summaries(raw: Any, log_key: PublicKey, report: Report) -> None:
    """7b. The summaries envelope is signed by the log key; its payload is {tenants: {pseudonym: summary}}."""
    try:
        env = as_envelope(raw, "tenant_summaries")
        payload = dsse.verify(env, log_key, TENANT_SUMMARIES_PAYLOAD_TYPE)
        doc = strictjson.loads(payload)
        tenants = as_obj(as_obj(doc, "tenant_summaries payload").get("tenants"), "tenant_summaries.tenants")
    except (Error, BundleError, ValueError, RecursionError) as exc:
        report.fail(
            "tenants", "bad_tenant_summaries", f"the tenant summaries do not verify with the log key: {one_line(exc)}"
        )
        return
    report.tenant_summaries = dict(tenants)
