"""Tenants v1 loader: table-driven, every error names the tenant and the key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from collector.tenants import Tenant, TenantDirectory, TenantsError
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_tenants_toml

FULL = """
[[tenant]]
id = "t-17"
name = "Example Compute LLC"
country = "ae"
registered = 2025-11-02
parent = "Holding Ltd"
parent_country = "VG"
ultimate_parent_country = "unknown"
beneficial_owners_disclosed = false
nominee_directors = true
declared_use = "inference"
kyc_level = "basic"

[[tenant]]
id = "t-18"
"""


def test_full_tenant_is_parsed_and_absent_fields_are_unknown() -> None:
    d = TenantDirectory.from_toml(FULL)
    assert len(d) == 2
    assert d.get("t-17") == Tenant(
        id="t-17",
        name="Example Compute LLC",
        country="AE",
        registered=dt.date(2025, 11, 2),
        parent="Holding Ltd",
        parent_country="VG",
        ultimate_parent_country="unknown",
        beneficial_owners_disclosed=False,
        nominee_directors=True,
        declared_use="inference",
        kyc_level="basic",
    )
    assert d.get("t-18") == Tenant(id="t-18")
    assert d.get("t-404") is None
    assert "t-17" in d and "t-404" not in d


def test_registered_accepts_an_iso_date_string() -> None:
    d = TenantDirectory.from_toml('[[tenant]]\nid = "a"\nregistered = "2020-01-31"\n')
    t = d.get("a")
    assert t is not None and t.registered == dt.date(2020, 1, 31)


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('id = "t-1"\ncolour = "red"', ("t-1", "colour")),
        ('id = "t-1"\nnominee_directors = "yes"', ("t-1", "nominee_directors")),
        ('id = "t-1"\nbeneficial_owners_disclosed = 1', ("t-1", "beneficial_owners_disclosed")),
        ('id = "t-1"\nname = 5', ("t-1", "name")),
        ('id = "t-1"\nkyc_level = "gold"', ("t-1", "kyc_level")),
        ('id = "t-1"\nregistered = 2020-01-01T00:00:00Z', ("t-1", "registered")),
        ('id = "t-1"\nregistered = "last year"', ("t-1", "registered")),
        ('id = "t-1"\ncountry = "USA"', ("t-1", "country")),
        ('id = "t-1"\nultimate_parent_country = "nowhere"', ("t-1", "ultimate_parent_country")),
        ('name = "no id"', ("id",)),
        ("id = 7", ("id",)),
    ],
)
def test_bad_tenant_names_tenant_and_key(body: str, needles: tuple[str, ...]) -> None:
    with pytest.raises(TenantsError) as exc:
        TenantDirectory.from_toml("[[tenant]]\n" + body + "\n")
    for n in needles:
        assert n in str(exc.value), f"error {exc.value!r} should name {n!r}"


def test_duplicate_ids_and_unknown_top_level_keys_are_errors() -> None:
    with pytest.raises(TenantsError, match="duplicate"):
        TenantDirectory.from_toml('[[tenant]]\nid = "a"\n[[tenant]]\nid = "a"\n')
    with pytest.raises(TenantsError, match="tenants"):
        TenantDirectory.from_toml('tenants = 1\n[[tenant]]\nid = "a"\n')
    with pytest.raises(TenantsError, match="TOML"):
        TenantDirectory.from_toml("[[tenant]\n")


def test_load_reads_a_file_and_reports_a_missing_one(tmp_path: Path) -> None:
    p = tmp_path / "tenants.toml"
    p.write_text(FULL, encoding="utf-8")
    assert len(TenantDirectory.load(p)) == 2
    with pytest.raises(TenantsError, match="cannot read"):
        TenantDirectory.load(tmp_path / "absent.toml")


def test_demo_tenants_file_parses() -> None:
    d = TenantDirectory.from_toml(demo_tenants_toml())
    t = d.get(DEMO_OPAQUE_TENANT)
    assert t is not None and t.nominee_directors is True and t.beneficial_owners_disclosed is False
    assert len(d) >= 5
