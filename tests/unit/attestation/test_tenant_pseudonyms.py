"""Tenant pseudonyms: derived with the operator's key, revealed only through an audited
command, and shown to vendors with a KYC summary signed by the collector's log key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from test_verify_tamper import NOW_MS, Node, Site

from attestation.verify import verify_bundle
from collector.cli import main as collector_main
from collector.export import Selection, build_bundle
from collector.pseudonyms import (
    PseudonymKeyError,
    is_pseudonym,
    key_path,
    load_or_create_key,
    pseudonym,
    with_pseudonyms,
)
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory

TENANTS = """
[[tenant]]
id = "t-17"
name = "Example Compute LLC"
ultimate_parent_country = "unknown"
beneficial_owners_disclosed = false
kyc_level = "basic"

[[tenant]]
id = "t-18"
name = "Open Research Inc"
ultimate_parent_country = "US"
beneficial_owners_disclosed = true
kyc_level = "enhanced"
"""


def test_pseudonyms_are_keyed_stable_and_shaped(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    assert os.stat(tmp_path / "k").st_mode & 0o777 == 0o600
    p = pseudonym(key, "t-17")
    assert is_pseudonym(p) and p == pseudonym(load_or_create_key(tmp_path / "k"), "t-17")
    assert p != pseudonym(load_or_create_key(tmp_path / "other"), "t-17"), "another operator key, another pseudonym"
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(PseudonymKeyError, match="0644"):
        load_or_create_key(tmp_path / "k")


def test_reveal_is_explicit_recorded_and_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    db, tenants = tmp_path / "c.db", tmp_path / "tenants.toml"
    tenants.write_text(TENANTS)
    SqliteStore(db).close()
    assert collector_main(["tenant", "pseudonym", "t-17", "--db", str(db)]) == 0
    p17 = capsys.readouterr().out.split()[1]
    assert p17 == pseudonym(load_or_create_key(key_path(db)), "t-17")

    args = ["tenant", "reveal", p17, "--db", str(db), "--tenants", str(tenants), "--reason", "export control case 42"]
    assert collector_main(args) == 0
    assert capsys.readouterr().out.strip() == "t-17"
    assert "revealed pseudonym" in caplog.text and "export control case 42" in caplog.text
    assert collector_main(["tenant", "reveal", "tp-0000000000000000", "--db", str(db), "--reason", "x"]) == 1
    with pytest.raises(SystemExit):
        collector_main(["tenant", "reveal", p17, "--db", str(db)])  # --reason is required
    with SqliteStore(db) as store:
        audit = store.reveals()
    assert [(a[1], a[2], a[4]) for a in audit] == [
        (p17, "t-17", "export control case 42"),
        ("tp-0000000000000000", None, "x"),
    ], "every reveal attempt must be in the audit table"


def test_bundle_carries_signed_kyc_summaries_per_pseudonym(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    p17 = pseudonym(key, "t-17")
    site = Site()
    node = site.enroll(Node("n1", tenant=p17))
    site.send(node, 2)
    directory = with_pseudonyms(TenantDirectory.from_toml(TENANTS), key)
    doc = build_bundle(site.store, site.log, Selection(all=True), NOW_MS, tenants=directory)
    report = verify_bundle(json.dumps(doc).encode())
    assert report.ok, [str(f) for f in report.failures]
    s = report.tenant_summaries[p17]
    assert (s["ultimate_parent_country"], s["kyc_level"]) == ("unknown", "basic")
    assert any("beneficial owners" in r for r in s["opacity_reasons"]), s
    assert "Example Compute" not in json.dumps(doc), "the bundle must not name the customer"
    assert set(report.gpus["n1-sn0"].tenants) - {"unattributed"} == {p17}, "usage is reported by pseudonym"

    forged = json.loads(base64.b64decode(doc["tenant_summaries"]["payload"]))
    forged["tenants"][p17]["kyc_level"] = "enhanced"
    doc["tenant_summaries"]["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    report = verify_bundle(json.dumps(doc).encode())
    assert report.reasons() == {"bad_tenant_summaries"}, [str(f) for f in report.failures]
