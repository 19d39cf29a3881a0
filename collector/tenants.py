"""Tenants v1: what the operator's KYC file says about each tenant.

Format (TOML, one ``[[tenant]]`` table per tenant; README "Formats")::

    [[tenant]]
    id = "t-17"                          # required, unique; the id telemetry uses
    name = "Example Compute LLC"
    country = "AE"                       # ISO 3166 alpha-2 of registration
    registered = 2025-11-02              # TOML date (an ISO "YYYY-MM-DD" string is accepted)
    parent = "Holding Ltd"
    parent_country = "VG"                # alpha-2 or "unknown"
    ultimate_parent_country = "unknown"  # alpha-2 or "unknown"
    beneficial_owners_disclosed = false
    nominee_directors = true
    declared_use = "inference for chat products"
    kyc_level = "basic"                  # "none" | "basic" | "enhanced"

A field left out is unknown (``None``), never a default that sounds like an answer. Unknown
keys, wrong types and duplicate ids are errors that name the tenant and the key. A tenant
seen in telemetry but absent from the file is fully opaque (``collector.detect.opacity``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

# Allowed values of ``kyc_level``, from least to most diligence.
KYC_LEVELS = ("none", "basic", "enhanced")
# The spelling of a country nobody could establish.
UNKNOWN_COUNTRY = "unknown"
_ALPHA2 = re.compile(r"^[A-Z]{2}$")
_STRING_KEYS = ("name", "parent", "declared_use")
_BOOL_KEYS = ("beneficial_owners_disclosed", "nominee_directors")
_COUNTRY_KEYS = ("country", "parent_country", "ultimate_parent_country")
_KNOWN_KEYS = frozenset(("id", "registered", "kyc_level", *_STRING_KEYS, *_BOOL_KEYS, *_COUNTRY_KEYS))


class TenantsError(Exception):
    """The tenants file cannot be used. ``diagnostics()`` says what to fix."""

    def diagnostics(self) -> str:
        return f"tenants file: {self}\nFix the file (format: Tenants v1, see README) and restart."


@dataclass(frozen=True)
class Tenant:
    """One tenant as the KYC file describes it. ``None``: the file does not say."""

    id: str
    name: str | None = None
    country: str | None = None
    registered: dt.date | None = None
    parent: str | None = None
    parent_country: str | None = None
    ultimate_parent_country: str | None = None
    beneficial_owners_disclosed: bool | None = None
    nominee_directors: bool | None = None
    declared_use: str | None = None
    kyc_level: str | None = None


class TenantDirectory:
    """Tenants by id. Immutable once built."""

    def __init__(self, tenants: Iterable[Tenant] = ()) -> None:
        by_id: dict[str, Tenant] = {}
        for t in tenants:
            if t.id in by_id:
                raise TenantsError(f"tenant {t.id!r}: duplicate id")
            by_id[t.id] = t
        self._by_id = by_id

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._by_id.values())

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._by_id

    @classmethod
    def from_toml(cls, text: str) -> TenantDirectory:
        """Parse Tenants v1 text. Raises TenantsError naming the tenant and the key."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TenantsError(f"not valid TOML: {exc}") from exc
        extra = sorted(k for k in doc if k != "tenant")
        if extra:
            raise TenantsError(f"unknown top-level key(s) {', '.join(map(repr, extra))}; expected [[tenant]] tables")
        tables = doc.get("tenant", [])
        if not isinstance(tables, list):
            raise TenantsError("'tenant' must be an array of tables ([[tenant]])")
        return cls(_parse_tenant(i, t) for i, t in enumerate(tables))

    @classmethod
    def load(cls, path: str | Path) -> TenantDirectory:
        """Read a Tenants v1 file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise TenantsError(f"cannot read {p}: {exc.strerror or exc}") from exc
        directory = cls.from_toml(text)
        _logger.info("loaded %d tenants from %s", len(directory), p)
        return directory


def _parse_tenant(i: int, t: Any) -> Tenant:
    if not isinstance(t, dict):
        raise TenantsError(f"tenant #{i + 1}: expected a table")
    tid = t.get("id")
    if not isinstance(tid, str) or not tid:
        raise TenantsError(f"tenant #{i + 1}: 'id' is required and must be a non-empty string")
    who = f"tenant {tid!r}"
    unknown = sorted(k for k in t if k not in _KNOWN_KEYS)
    if unknown:
        raise TenantsError(f"{who}: unknown key(s) {', '.join(map(repr, unknown))}")
    fields: dict[str, Any] = {"id": tid}
    for key in _STRING_KEYS:
        if key in t:
            fields[key] = _expect(who, key, t[key], str, "a string")
    for key in _BOOL_KEYS:
        if key in t:
            fields[key] = _expect(who, key, t[key], bool, "true or false")
    for key in _COUNTRY_KEYS:
        if key in t:
            fields[key] = _country(who, key, t[key])
    if "registered" in t:
        fields["registered"] = _date(who, t["registered"])
    if "kyc_level" in t:
        level = _expect(who, "kyc_level", t["kyc_level"], str, "a string")
        if level not in KYC_LEVELS:
            raise TenantsError(f"{who}: kyc_level {level!r} is not one of {', '.join(KYC_LEVELS)}")
        fields["kyc_level"] = level
    return Tenant(**fields)


def _expect(who: str, key: str, value: Any, typ: type, what: str) -> Any:
    if type(value) is not typ:
        raise TenantsError(f"{who}: {key} must be {what}, got {type(value).__name__} ({value!r})")
    return value


def _country(who: str, key: str, value: Any) -> str:
    s: str = _expect(who, key, value, str, 'an ISO 3166 alpha-2 code or "unknown"')
    if s.lower() == UNKNOWN_COUNTRY:
        return UNKNOWN_COUNTRY
    if key == "country" or _ALPHA2.match(s.upper()):
        code = s.upper()
        if not _ALPHA2.match(code):
            raise TenantsError(f"{who}: {key} {s!r} is not an ISO 3166 alpha-2 code")
        return code
    raise TenantsError(f'{who}: {key} {s!r} is not an ISO 3166 alpha-2 code or "unknown"')


def _date(who: str, value: Any) -> dt.date:
    # A TOML datetime is a date subclass: only a plain date (or an ISO date string) is a date.
    if type(value) is dt.date:
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise TenantsError(f"{who}: registered must be a date (2025-11-02), got {value!r}")
