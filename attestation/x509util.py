"""Small X.509 helpers shared by the agent and the collector (cryptography only)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509


def not_after(cert_pem: bytes) -> dt.datetime:
    """When a PEM certificate expires (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
