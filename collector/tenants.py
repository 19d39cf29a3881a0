"""Tenants v1.1: what the operator's KYC file says about each tenant.

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

Version 1.1 (minor: every v1 file is a v1.1 file) adds an optional top-level
``version = "1.1"`` and, per tenant, the chain of parents and the beneficial owners::

    parents = [                          # immediate parent first, ultimate parent last
      { name = "Holding Ltd", country = "VG" },
      { name = "Example Group", country = "SG" },
    ]
    beneficial_owners = [                # share: a fraction of ownership, 0 < share <= 1
      { name = "Jane Roe", country = "SG", share = 0.6 },
      { name = "Richard Roe", country = "unknown" },
    ]

``parents`` fills ``parent``, ``parent_country`` and ``ultimate_parent_country`` where the
file leaves them out, and must agree with them where it gives them. A non-empty
``beneficial_owners`` means ``beneficial_owners_disclosed = true`` unless the file says so
itself; ``false`` beside a list is an error. A ``version`` other than "1", "1.0" or "1.1"
is refused, and a file that says ``version = "1"`` may not use the 1.1 keys.

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
from typing import TYPE_CHECKING, Any

from collector.errors import CollectorError

if TYPE_CHECKING:
    from collector.screening import ScreeningSource

_logger = logging.getLogger(__name__)

# Allowed values of ``kyc_level``, from least to most diligence.
KYC_LEVELS = ("none", "basic", "enhanced")
# The spelling of a country nobody could establish.
UNKNOWN_COUNTRY = "unknown"
_ALPHA2 = re.compile(r"^[A-Z]{2}$")
_STRING_KEYS = ("name", "parent", "declared_use")
_BOOL_KEYS = ("beneficial_owners_disclosed", "nominee_directors")
_COUNTRY_KEYS = ("country", "parent_country", "ultimate_parent_country")
_V11_KEYS = ("parents", "beneficial_owners")
_KNOWN_KEYS = frozenset(("id", "registered", "kyc_level", *_STRING_KEYS, *_BOOL_KEYS, *_COUNTRY_KEYS, *_V11_KEYS))
# Versions this reader knows; a file without ``version`` is read as the newest.
VERSIONS = ("1", "1.0", "1.1")


class TenantsError(CollectorError):
    """The tenants file cannot be used. ``diagnostics()`` says what to fix."""

    reason = "bad_tenants"

    def diagnostics(self) -> str:
        return f"tenants file: {self}\nFix the file (format: Tenants v1.1, docs/formats.md) and restart."


@dataclass(frozen=True)
class Parent:
    """One link of a tenant's ownership chain (Tenants v1.1). ``country``: alpha-2, "unknown" or None."""

    name: str
    country: str | None = None


@dataclass(frozen=True)
class BeneficialOwner:
    """A beneficial owner (Tenants v1.1): a person or company; ``share`` a fraction in (0, 1]."""

    name: str
    country: str | None = None
    share: float | None = None


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
    parents: tuple[Parent, ...] = ()
    """Immediate parent first, ultimate parent last (v1.1); empty: the file does not list them."""
    beneficial_owners: tuple[BeneficialOwner, ...] = ()
    """v1.1; empty: the file names none (``beneficial_owners_disclosed`` says whether any exist)."""


class TenantDirectory:
    """Tenants by id. Immutable once built.

    ``screening``: the restricted-party list the tenants are screened against
    (``collector.screening``), attached by the command line; None when none is configured.
    """

    def __init__(self, tenants: Iterable[Tenant] = (), *, screening: ScreeningSource | None = None) -> None:
        by_id: dict[str, Tenant] = {}
        for t in tenants:
            if t.id in by_id:
                raise TenantsError(f"tenant {t.id!r}: duplicate id")
            by_id[t.id] = t
        self._by_id = by_id
        self.screening = screening

    def with_screening(self, screening: ScreeningSource | None) -> TenantDirectory:
        """The same tenants, screened against ``screening``."""
        return TenantDirectory(self._by_id.values(), screening=screening)

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
        extra = sorted(k for k in doc if k not in ("tenant", "version"))
        if extra:
            raise TenantsError(f"unknown top-level key(s) {', '.join(map(repr, extra))}; expected [[tenant]] tables")
        version = doc.get("version", VERSIONS[-1])
        if not isinstance(version, str) or version not in VERSIONS:
            raise TenantsError(f"version {version!r} is not one this collector reads ({', '.join(VERSIONS)})")
        tables = doc.get("tenant", [])
        if not isinstance(tables, list):
            raise TenantsError("'tenant' must be an array of tables ([[tenant]])")
        return cls(_parse_tenant(i, t, version) for i, t in enumerate(tables))

    @classmethod
    def load(cls, path: str | Path) -> TenantDirectory:
        """Read a Tenants v1 or v1.1 file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise TenantsError(f"cannot read {p}: {exc.strerror or exc}") from exc
        directory = cls.from_toml(text)
        _logger.info("loaded %d tenants from %s", len(directory), p)
        return directory


def _parse_tenant(i: int, t: Any, version: str = VERSIONS[-1]) -> Tenant:
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
    newer = [k for k in _V11_KEYS if k in t]
    if newer and version in ("1", "1.0"):
        raise TenantsError(f'{who}: {", ".join(newer)} need(s) version "1.1" (the file says {version!r})')
    if "parents" in t:
        _apply_parents(who, fields, _parents(who, t["parents"]))
    if "beneficial_owners" in t:
        owners = _owners(who, t["beneficial_owners"])
        fields["beneficial_owners"] = owners
        if owners:
            disclosed = fields.get("beneficial_owners_disclosed")
            if disclosed is False:
                raise TenantsError(f"{who}: beneficial_owners_disclosed = false beside a list of beneficial_owners")
            fields["beneficial_owners_disclosed"] = True
    return Tenant(**fields)


def _entries(who: str, key: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(value, list):
        raise TenantsError(f"{who}: {key} must be an array of tables ({key} = [{{ name = ..., country = ... }}])")
    out = []
    for n, item in enumerate(value):
        where = f"{who}: {key}[{n}]"
        if not isinstance(item, dict):
            raise TenantsError(f"{where}: expected a table with name and country")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TenantsError(f"{where}: name is required and must be a non-empty string")
        out.append((where, item))
    return out


def _parents(who: str, value: Any) -> tuple[Parent, ...]:
    chain = []
    for where, item in _entries(who, "parents", value):
        unknown = sorted(k for k in item if k not in ("name", "country"))
        if unknown:
            raise TenantsError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        country = _country(where, "country", item["country"]) if "country" in item else None
        chain.append(Parent(item["name"].strip(), country))
    return tuple(chain)


def _apply_parents(who: str, fields: dict[str, Any], chain: tuple[Parent, ...]) -> None:
    fields["parents"] = chain
    if not chain:
        return
    derived = {
        "parent": chain[0].name,
        "parent_country": chain[0].country,
        "ultimate_parent_country": chain[-1].country,
    }
    for key, value in derived.items():
        if value is None:
            continue
        given = fields.get(key)
        if given is None:
            fields[key] = value
        elif given != value:
            raise TenantsError(
                f"{who}: {key} {given!r} disagrees with parents ({value!r}); give one or make them agree"
            )


def _owners(who: str, value: Any) -> tuple[BeneficialOwner, ...]:
    owners = []
    total = 0.0
    for where, item in _entries(who, "beneficial_owners", value):
        unknown = sorted(k for k in item if k not in ("name", "country", "share"))
        if unknown:
            raise TenantsError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        country = _country(where, "country", item["country"]) if "country" in item else None
        share = None
        if "share" in item:
            v = item["share"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise TenantsError(f"{where}: share must be a fraction in (0, 1] (25% is 0.25), got {v!r}")
            share = float(v)
            total += share
        owners.append(BeneficialOwner(item["name"].strip(), country, share))
    if total > 1.0 + 1e-9:
        raise TenantsError(f"{who}: beneficial_owners' shares add up to {total:g}, more than 1")
    return tuple(owners)


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
