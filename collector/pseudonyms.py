"""Pseudonymous tenants: what a chip vendor sees instead of customer names.

Design (docs/vendor-guide.md, "Tenant pseudonyms"): statements are signed on the nodes,
so a pseudonym must already be in the signed bytes; rewriting tenant ids at export would
break every signature. The operator therefore derives each tenant's pseudonym with a key
only the collector holds,

    pseudonym(tenant) = "tp-" + first 16 hex digits of HMAC-SHA256(key, tenant id)

and writes pseudonyms, not customer ids, into the agents' tenant rules
(``gpuaudit-collector tenant pseudonym ID...`` prints them). Agents carry and sign only
pseudonyms; the collector keeps the mapping (the key file ``<db>.pseudonym-key``, 0600,
and the tenants file); revealing a pseudonym is an explicit operator action, recorded in
the store's ``reveal_audit`` table and logged (``tenant reveal PSEUDONYM --reason``).

A vendor bundle carries, for each pseudonym in it, a KYC summary (ultimate parent
country, KYC level, opacity reasons) signed by the collector's log key as a DSSE envelope
of type ``application/vnd.gpuaudit.tenant-summaries.v1+json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from attestation import dsse
from attestation.keys import Signer
from collector.detect.opacity import OpacityConfig, opacity
from collector.errors import CollectorError
from collector.tenants import Tenant, TenantDirectory

_logger = logging.getLogger(__name__)

PREFIX = "tp-"
PSEUDONYM_RE = re.compile(r"^tp-[0-9a-f]{16}$")
SUMMARIES_PAYLOAD_TYPE = "application/vnd.gpuaudit.tenant-summaries.v1+json"
_KEY_BYTES = 32


class PseudonymKeyError(CollectorError):
    reason = "pseudonym_key"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\nThe pseudonym key is <db>.pseudonym-key, mode 0600, created by the "
            "collector on first use. Restore it from the backup: without it, pseudonyms cannot be revealed "
            "and new ones would not match the agents' configuration."
        )


def key_path(db: Path) -> Path:
    return db.with_name(db.name + ".pseudonym-key")


def load_or_create_key(path: Path) -> bytes:
    """The operator's pseudonym key (64 hex digits in a 0600 file), created on first use."""
    if not path.exists():
        # Published atomically (written under a temporary name, then link()ed): a collector
        # started beside this one either creates the key or reads a whole one, never a file
        # that exists but is still empty.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(_KEY_BYTES) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # created concurrently: read that one below
            else:
                _logger.info("created the tenant pseudonym key %s", path)
        finally:
            tmp.unlink(missing_ok=True)
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PseudonymKeyError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; group/others must have no access")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError as exc:
        raise PseudonymKeyError(f"{path} does not hold a hex key") from exc
    if len(key) != _KEY_BYTES:
        raise PseudonymKeyError(f"{path} holds {len(key)} bytes, expected {_KEY_BYTES}")
    return key


def pseudonym(key: bytes, tenant_id: str) -> str:
    """``tp-`` + the first 16 hex digits of HMAC-SHA256(key, tenant id)."""
    return PREFIX + hmac.new(key, tenant_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def is_pseudonym(text: str) -> bool:
    return PSEUDONYM_RE.fullmatch(text) is not None


def reveal(key: bytes, wanted: str, candidates: Iterable[str]) -> str | None:
    """The tenant id among ``candidates`` whose pseudonym is ``wanted``; None if none is."""
    for tenant_id in candidates:
        if hmac.compare_digest(pseudonym(key, tenant_id), wanted):
            return tenant_id
    return None


def with_pseudonyms(directory: TenantDirectory, key: bytes) -> TenantDirectory:
    """The directory with every tenant also listed under its pseudonym (statements name
    tenants by pseudonym; the detector still finds their KYC record)."""
    tenants = list(directory)
    known = {t.id for t in tenants}
    aliases = [replace(t, id=p) for t in tenants if (p := pseudonym(key, t.id)) not in known]
    return TenantDirectory([*tenants, *aliases])


def kyc_summary(tenant: Tenant | None, today: dt.date, config: OpacityConfig | None = None) -> dict[str, Any]:
    """What a vendor may see about a tenant: no name, no registration details."""
    op = opacity(tenant, False, today, config or OpacityConfig())
    return {
        "ultimate_parent_country": tenant.ultimate_parent_country if tenant else None,
        "kyc_level": tenant.kyc_level if tenant else None,
        "opacity_score": round(op.score, 3),
        "opacity_reasons": list(op.reasons),
    }


def signed_summaries(
    pseudonyms: Iterable[str], directory: TenantDirectory, signer: Signer, now_ms: int
) -> dict[str, Any]:
    """A DSSE envelope (JSON form) by the log key over {pseudonym: KYC summary}."""
    today = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).date()
    doc = {
        "created_ms": now_ms,
        "tenants": {p: kyc_summary(directory.get(p), today) for p in sorted(set(pseudonyms))},
    }
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return dsse.sign(payload, signer, SUMMARIES_PAYLOAD_TYPE).to_json()
