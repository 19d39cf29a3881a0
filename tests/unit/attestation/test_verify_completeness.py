"""What a bundle proves about completeness (docs/vendor-guide.md, "Completeness"): the
checkpoint commits every key's head, so a tail or a whole node left out of a bundle
fails; gaps inside the period are reported with their length and cause; requested
serials with no statement are listed; a bundle from before heads still verifies, with a
note that completeness is not proven."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from test_verify_tamper import FIRST_WINDOW_MS, NOW_MS, WINDOW_MS, Node, Site

from attestation.checkpoint import parse_checkpoint_body, parse_note
from attestation.heads import HEADS_EXTENSION, KeyHead, heads_root, parse_heads_extension
from attestation.keys import PublicKey
from attestation.statement import Dropped
from attestation.verify import NO_HEADS_NOTE, Report, verify_bundle, verify_bundle_file
from attestation.verify_cli import main as verify_main
from collector.export import Selection, build_bundle

LATER_MS = NOW_MS + 3_600_000  # a checkpoint signed after the windows the tests make
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bundle"


def _verify(doc: dict[str, Any]) -> Report:
    return verify_bundle(json.dumps(doc).encode())


def _key(doc: dict[str, Any], node_id: str) -> str:
    return next(str(n["key_id"]) for n in doc["nodes"] if n["node_id"] == node_id)


def _entries_of(doc: dict[str, Any], node_id: str) -> list[int]:
    key_id = _key(doc, node_id)
    return [i for i, e in enumerate(doc["entries"]) if e["envelope"]["signatures"][0]["keyid"] == key_id]


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.store.close()


@pytest.fixture
def two_nodes(site: Site) -> tuple[Site, Node, Node]:
    a, b = site.enroll(Node("node-a")), site.enroll(Node("node-b", tenant="tenant-b"))
    for _ in range(3):
        site.send(a, 2)
        site.send(b, 2)
    return site, a, b


# -- the heads the checkpoint commits ------------------------------------------------


def test_the_checkpoint_commits_every_keys_head_and_the_bundle_carries_them(two_nodes: tuple[Site, Node, Node]) -> None:
    site, a, b = two_nodes
    doc = site.bundle()
    cp = parse_checkpoint_body(parse_note(doc["log"]["checkpoint"])[0])
    commitment = parse_heads_extension(cp.extensions)
    assert commitment is not None, f"no {HEADS_EXTENSION} line in {cp.extensions}"
    heads = [KeyHead(**{**h, "serials": tuple(h["serials"])}) for h in doc["heads"]]
    assert commitment.count == 2 and heads_root(heads) == commitment.root
    assert {h.node_id: h.seq for h in heads} == {"node-a": 5, "node-b": 5}
    report = _verify(doc)
    assert report.ok, [str(f) for f in report.failures]
    assert report.heads is not None and report.heads.count == 2
    assert all(n.coverage is not None and n.coverage.end_proven for n in report.nodes.values())


def test_a_dropped_tail_fails_with_tail_missing(two_nodes: tuple[Site, Node, Node]) -> None:
    site, _, _ = two_nodes
    doc = site.bundle()
    for i in reversed(_entries_of(doc, "node-a")[-2:]):  # seq 4 and 5: the chain stays unbroken
        del doc["entries"][i]
    report = _verify(doc)
    assert report.reasons() == {"tail_missing"}, [str(f) for f in report.failures]
    (f,) = report.failures
    assert f.step == "completeness" and f.seq == 3 and "4..5" in f.message, f.message
    assert not report.serials["node-a-sn0"].coverage or not report.serials["node-a-sn0"].coverage.end_proven


def test_a_dropped_tail_exits_1_from_the_cli(
    two_nodes: tuple[Site, Node, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, _, _ = two_nodes
    doc = site.bundle()
    del doc["entries"][_entries_of(doc, "node-b")[-1]]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    assert verify_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "tail_missing" in out, out


def test_a_whole_node_left_out_fails_with_missing_key(two_nodes: tuple[Site, Node, Node]) -> None:
    site, _, _ = two_nodes
    doc = site.bundle()
    key_b = _key(doc, "node-b")
    doc["entries"] = [e for e in doc["entries"] if e["envelope"]["signatures"][0]["keyid"] != key_b]
    doc["nodes"] = [n for n in doc["nodes"] if n["key_id"] != key_b]
    report = _verify(doc)
    assert report.reasons() == {"missing_key"}, [str(f) for f in report.failures]
    assert report.failures[0].key_id == key_b and "node-b" in report.failures[0].message


def test_a_serial_bundle_without_the_node_that_had_the_serial(two_nodes: tuple[Site, Node, Node]) -> None:
    site, _, _ = two_nodes
    doc = site.bundle(Selection(serials=("node-a-sn0", "node-b-sn1")))
    key_b = _key(doc, "node-b")
    doc["entries"] = [e for e in doc["entries"] if e["envelope"]["signatures"][0]["keyid"] != key_b]
    report = _verify(doc)
    assert report.reasons() == {"missing_key"}, [str(f) for f in report.failures]
    assert report.missing_serials == ["node-b-sn1"]


def test_a_requested_serial_with_no_statement_is_reported(
    two_nodes: tuple[Site, Node, Node], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site, _, _ = two_nodes
    doc = site.bundle(Selection(serials=("node-a-sn0", "sn-never-seen")))
    report = _verify(doc)
    assert report.ok, [str(f) for f in report.failures]
    assert report.missing_serials == ["sn-never-seen"]
    cov = report.serials["sn-never-seen"].coverage
    assert cov is not None and cov.covered_ms == 0 and [g.position for g in cov.gaps] == ["all"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    assert verify_main([str(path)]) == 0
    assert "requested serials with no statement at all (1): sn-never-seen" in capsys.readouterr().out
    assert verify_main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completeness"]["missing_serials"] == ["sn-never-seen"]


def test_gaps_in_the_period_are_reported_with_length_and_cause(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = site.enroll(Node("node-a"))
    site.send(a, 2)
    # The agent is down for five windows: the chain is unbroken, the time is not covered.
    silent_from = a.start_ms
    site.send(a, 1, start_ms=a.start_ms + 5 * WINDOW_MS, end_ms=a.start_ms + 6 * WINDOW_MS)
    # The agent's spool dropped three statements and says so in the next one.
    dropped_from = a.start_ms
    first = a.seq
    for _ in range(3):
        a.next()  # signed, never sent
    site.send(a, 1, dropped=Dropped(first, first + 2, 3, "spool_size", a.prev or ""))
    site.send(a, 2)
    until = a.start_ms
    sel = Selection(serials=("node-a-sn0",), since_ms=FIRST_WINDOW_MS, until_ms=until)
    doc = build_bundle(site.store, site.log, sel, until + WINDOW_MS)  # signed after the period
    report = _verify(doc)
    assert report.ok, [str(f) for f in report.failures]
    cov = report.serials["node-a-sn0"].coverage
    assert cov is not None
    gaps = [(g.cause, g.start_ms, g.duration_ms) for g in cov.gaps]
    assert gaps == [
        ("silent", silent_from, 5 * WINDOW_MS),
        ("dropped", dropped_from, 3 * WINDOW_MS),
    ], gaps
    period = until - FIRST_WINDOW_MS
    assert cov.covered_ms == period - 8 * WINDOW_MS and cov.start_proven and cov.end_proven
    assert report.nodes["node-a"].coverage is not None and len(report.nodes["node-a"].coverage.gaps) == 2
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    assert verify_main([str(path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("node-a-sn0"))
    assert "(5m00s, silent)" in line and "(3m00s, dropped)" in line, line
    assert f"{cov.fraction * 100:.1f}"[:3] in line


def test_a_period_in_the_middle_has_its_anchor_and_successor(site: Site) -> None:
    a = site.enroll(Node("node-a"))
    site.send(a, 10)
    since, until = FIRST_WINDOW_MS + 3 * WINDOW_MS + 30_000, FIRST_WINDOW_MS + 6 * WINDOW_MS + 30_000
    doc = build_bundle(site.store, site.log, Selection(all=True, since_ms=since, until_ms=until), LATER_MS)
    seqs = [json.loads(base64.b64decode(e["envelope"]["payload"]))["predicate"]["chain"]["seq"] for e in doc["entries"]]
    assert seqs == [3, 4, 5, 6, 7], "the windows overlapping the period and the first one after it"
    report = _verify(doc)
    assert report.ok, [str(f) for f in report.failures]
    cov = report.nodes["node-a"].coverage
    assert cov is not None and cov.start_proven and cov.end_proven and cov.gaps == []
    # Left out: the successor. Nothing shows the chain ends in the period: the tail fails.
    trimmed = copy.deepcopy(doc)
    del trimmed["entries"][-1]
    assert _verify(trimmed).reasons() == {"tail_missing"}


def test_a_node_silent_the_whole_period_is_listed_not_failed(site: Site) -> None:
    a, b = site.enroll(Node("node-a")), site.enroll(Node("node-b"))
    site.send(b, 1)
    site.send(a, 5)
    since = FIRST_WINDOW_MS + 2 * WINDOW_MS
    doc = build_bundle(
        site.store, site.log, Selection(all=True, since_ms=since, until_ms=since + 3 * WINDOW_MS), LATER_MS
    )
    report = _verify(doc)
    assert report.ok, [str(f) for f in report.failures]
    assert report.nodes["node-b"].in_bundle is False
    cov = report.nodes["node-b"].coverage
    assert cov is not None and cov.covered_ms == 0 and cov.gaps[0].proven


def test_altered_heads_fail(two_nodes: tuple[Site, Node, Node]) -> None:
    site, _, _ = two_nodes
    doc = site.bundle()
    lower = copy.deepcopy(doc)
    lower["heads"][0]["seq"] -= 1
    assert _verify(lower).reasons() == {"bad_heads"}
    gone = copy.deepcopy(doc)
    del gone["heads"]
    assert _verify(gone).reasons() == {"missing_heads"}
    one = copy.deepcopy(doc)
    one["heads"] = one["heads"][:1]
    assert _verify(one).reasons() == {"bad_heads"}


def test_a_bundle_from_before_heads_verifies_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (FIXTURES / "small-before-heads.json").read_bytes()
    assert b'"heads"' not in data
    report = verify_bundle(data)
    assert report.ok, [str(f) for f in report.failures]
    assert report.heads is None and NO_HEADS_NOTE in report.completeness_notes
    assert verify_main([str(FIXTURES / "small-before-heads.json")]) == 0
    assert "completeness not proven: no committed heads" in capsys.readouterr().out


# -- what a person reads ---------------------------------------------------------------


def test_the_text_report_leads_with_a_summary(
    two_nodes: tuple[Site, Node, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, _, _ = two_nodes
    path = tmp_path / "b.json"
    path.write_text(json.dumps(site.bundle()))
    assert verify_main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"bundle {path}"
    assert out[2].startswith("log key trusted on first use") and "fingerprint sha256:" in out[2]
    assert out[3].startswith("period ")
    header = next(i for i, ln in enumerate(out) if ln.startswith("tenant "))
    assert out[header].split() == ["tenant", "GPU-h", "kWh", "serials", "nodes", "coverage", "problems"]
    assert {out[header + 1].split()[0], out[header + 2].split()[0]} == {"tenant-a", "tenant-b"}
    assert not any(ln.startswith("GPU ") for ln in out), "per-GPU blocks only with --details"
    assert len(out) < 30
    assert verify_main([str(path), "--details"]) == 0
    detailed = capsys.readouterr().out
    assert detailed.count("\nGPU ") == 4 and "node node-a: 100.0%" in detailed


def test_the_json_report_has_trust_period_coverage_and_summaries(
    two_nodes: tuple[Site, Node, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, _, _ = two_nodes
    doc = site.bundle()
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    assert verify_main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    fingerprint = PublicKey.from_spki(base64.b64decode(doc["log"]["public_key"]["spki"])).key_id
    assert out["log_key"] == {"fingerprint": fingerprint, "trust": "trust_on_first_use", "pinned_by": []}
    assert out["period"]["end_ms"] > out["period"]["start_ms"]
    assert out["completeness"]["heads"] == {"count": 2, "signed_ms": NOW_MS}
    assert [t["tenant"] for t in out["tenants"]] == ["tenant-a", "tenant-b", "unattributed"]
    assert {"gpu_hours", "energy_kwh", "serials", "nodes", "coverage_of_its_serials", "problems"} <= set(
        out["tenants"][0]
    )
    serial = out["serials"][0]
    assert {"serial", "nodes", "gpu_hours", "energy_kwh", "coverage", "problems"} <= set(serial)
    assert {"covered", "gaps", "start_proven", "end_proven", "first_ms", "last_ms"} <= set(serial["coverage"])
    assert [n["node_id"] for n in out["nodes"]] == ["node-a", "node-b"]
    pem = tmp_path / "log.pub"
    spki = base64.b64decode(doc["log"]["public_key"]["spki"])
    pem.write_bytes(
        serialization.load_der_public_key(spki).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert verify_main([str(path), "--json", "--log-key", str(pem)]) == 0
    pinned = json.loads(capsys.readouterr().out)["log_key"]
    assert pinned["trust"] == "pinned" and pinned["fingerprint"] == fingerprint
    assert pinned["pinned_by"] == [f"--log-key {pem}"]


def test_reading_a_file_is_the_same_as_reading_bytes(two_nodes: tuple[Site, Node, Node], tmp_path: Path) -> None:
    site, _, _ = two_nodes
    data = json.dumps(site.bundle(), indent=1).encode()  # any JSON layout
    path = tmp_path / "b.json"
    path.write_bytes(data)
    assert verify_bundle_file(path).to_json() == verify_bundle(data).to_json()
    assert verify_bundle_file(path).ok


def test_a_node_that_started_after_the_period_is_not_taken_for_one_left_out(site: Site) -> None:
    a, b = site.enroll(Node("node-a")), site.enroll(Node("node-b"))
    site.send(a, 6)
    b.start_ms = FIRST_WINDOW_MS + 4 * WINDOW_MS
    site.send(b, 2)
    sel = Selection(all=True, since_ms=FIRST_WINDOW_MS, until_ms=FIRST_WINDOW_MS + 3 * WINDOW_MS)
    report = _verify(build_bundle(site.store, site.log, sel, LATER_MS))
    assert report.ok, [str(f) for f in report.failures]
    cov = report.nodes["node-b"].coverage
    assert cov is not None and cov.covered_ms == 0 and cov.start_proven and cov.end_proven
