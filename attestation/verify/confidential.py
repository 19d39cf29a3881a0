"""Step 6c: the confidential-computing attestation reports statements carry
(attestation.cc), each bound to its statement's chain position.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from attestation.cc import CC_EVENT, parse_cc_detail, verify_cc_report
from attestation.errors import SchemaError
from attestation.verify.report import Report
from attestation.verify.signatures import VerifiedStatement


def verify_cc(s: VerifiedStatement, report: Report, cc_root: x509.Certificate | None) -> None:
    """6c. Each cc_attestation report is bound to its statement's chain position, parses, and
    is signed by a GPU attestation key certified up to the root (attestation.cc.verify_cc_report;
    certificates checked at the window's end, when the report was made)."""
    w = s.window
    at = dt.datetime.fromtimestamp(w.end_ms / 1000, tz=dt.UTC)
    for g in w.gpus:
        for e in g.events:
            if e.kind != CC_EVENT:
                continue
            try:
                evidence = parse_cc_detail(e.detail)
            except SchemaError as exc:
                problems = [("cc_report_malformed", str(exc))]
            else:
                found = verify_cc_report(evidence, w.chain.key_id, w.chain.seq, w.chain.prev, at=at, root=cc_root)
                problems = [(p.reason, p.message) for p in found]
            for reason, message in problems:
                report.fail(
                    "cc_attestation",
                    reason,
                    f"GPU {g.uuid}: {message}",
                    entry=s.entry,
                    key_id=s.key_id,
                    seq=w.chain.seq,
                )
