"""Tenants v1.1: parents and beneficial owners, backward compatible with v1 files."""

from __future__ import annotations

import pytest

from collector.pseudonyms import with_pseudonyms
from collector.report import tenant_facts
from collector.tenants import BeneficialOwner, Parent, Tenant, TenantDirectory, TenantsError
from core.sim.scenarios import demo_tenants_toml

V11 = """
version = "1.1"

[[tenant]]
id = "t-17"
name = "Example Compute Sdn Bhd"
country = "MY"
parents = [
  { name = "Example Holdings Ltd", country = "VG" },
  { name = "Example Group Pte Ltd", country = "SG" },
]
beneficial_owners = [
  { name = "Jane Roe", country = "SG", share = 0.6 },
  { name = "Richard Roe", country = "unknown" },
]
kyc_level = "enhanced"
"""

V1 = """
[[tenant]]
id = "t-9"
name = "Old Style LLC"
country = "de"
parent = "Old Holding"
parent_country = "DE"
ultimate_parent_country = "unknown"
beneficial_owners_disclosed = false
"""


def test_v11_chain_and_owners_are_parsed_and_fill_the_v1_fields() -> None:
    t = TenantDirectory.from_toml(V11).get("t-17")
    assert t is not None
    assert t.parents == (Parent("Example Holdings Ltd", "VG"), Parent("Example Group Pte Ltd", "SG"))
    assert t.beneficial_owners == (BeneficialOwner("Jane Roe", "SG", 0.6), BeneficialOwner("Richard Roe", "unknown"))
    assert (t.parent, t.parent_country, t.ultimate_parent_country) == ("Example Holdings Ltd", "VG", "SG")
    assert t.beneficial_owners_disclosed is True, "a list of owners is a disclosure"


def test_v1_files_read_exactly_as_before() -> None:
    t = TenantDirectory.from_toml(V1).get("t-9")
    assert t == Tenant(
        id="t-9",
        name="Old Style LLC",
        country="DE",
        parent="Old Holding",
        parent_country="DE",
        ultimate_parent_country="unknown",
        beneficial_owners_disclosed=False,
    )
    assert t.parents == () and t.beneficial_owners == ()
    demo = TenantDirectory.from_toml(demo_tenants_toml())
    assert len(demo) > 0 and all(x.parents == () for x in demo)
    assert TenantDirectory.from_toml('version = "1"\n' + V1).get("t-9") == t


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('version = "2"\n[[tenant]]\nid = "a"\n', ["version '2'", "1.1"]),
        ('version = "1"\n[[tenant]]\nid = "a"\nparents = [{ name = "P" }]\n', ["'a'", "parents", '"1.1"']),
        ('[[tenant]]\nid = "a"\nparents = "P"\n', ["'a'", "parents must be an array"]),
        ('[[tenant]]\nid = "a"\nparents = [{ country = "VG" }]\n', ["parents[0]", "name is required"]),
        ('[[tenant]]\nid = "a"\nparents = [{ name = "P", country = "Virgin" }]\n', ["parents[0]", "alpha-2"]),
        ('[[tenant]]\nid = "a"\nparents = [{ name = "P", owner = "x" }]\n', ["parents[0]", "'owner'"]),
        (
            '[[tenant]]\nid = "a"\nparent = "Q"\nparents = [{ name = "P" }]\n',
            ["'a'", "parent 'Q' disagrees with parents ('P')"],
        ),
        (
            '[[tenant]]\nid = "a"\nultimate_parent_country = "CN"\nparents = [{ name = "P", country = "SG" }]\n',
            ["ultimate_parent_country 'CN' disagrees"],
        ),
        ('[[tenant]]\nid = "a"\nbeneficial_owners = [{ name = "J", share = 25 }]\n', ["share", "25% is 0.25"]),
        ('[[tenant]]\nid = "a"\nbeneficial_owners = [{ name = "J", share = true }]\n', ["share"]),
        (
            '[[tenant]]\nid = "a"\nbeneficial_owners = [{ name = "J", share = 0.7 }, { name = "K", share = 0.5 }]\n',
            ["add up to 1.2"],
        ),
        (
            '[[tenant]]\nid = "a"\nbeneficial_owners_disclosed = false\nbeneficial_owners = [{ name = "J" }]\n',
            ["beneficial_owners_disclosed = false beside"],
        ),
    ],
)
def test_v11_errors_name_the_tenant_and_the_key(body: str, needles: list[str]) -> None:
    with pytest.raises(TenantsError) as exc:
        TenantDirectory.from_toml(body)
    for n in needles:
        assert n in str(exc.value), f"error {exc.value!s} should mention {n!r}"


def test_chain_agreeing_with_the_v1_fields_is_accepted() -> None:
    body = '[[tenant]]\nid = "a"\nparent = "P"\nparent_country = "VG"\nparents = [{ name = "P", country = "VG" }]\n'
    t = TenantDirectory.from_toml(body).get("a")
    assert t is not None and t.ultimate_parent_country == "VG"


def test_pseudonym_aliases_keep_the_chain_and_the_owners() -> None:
    d = with_pseudonyms(TenantDirectory.from_toml(V11), b"k" * 32)
    aliases = [t for t in d if t.id != "t-17"]
    assert len(aliases) == 1 and aliases[0].parents == d.get("t-17").parents  # type: ignore[union-attr]
    assert aliases[0].beneficial_owners == d.get("t-17").beneficial_owners  # type: ignore[union-attr]


def test_report_facts_show_the_chain_and_owners_readably() -> None:
    facts = tenant_facts(TenantDirectory.from_toml(V11))["t-17"]
    assert facts["parents"] == "Example Holdings Ltd (VG); Example Group Pte Ltd (SG)"
    assert facts["beneficial owners"] == "Jane Roe (SG, 60%); Richard Roe (unknown)"
    assert "parents" not in tenant_facts(TenantDirectory.from_toml(V1))["t-9"], "an empty list is not a fact"
