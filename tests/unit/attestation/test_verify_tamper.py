"""The offline verifier against real bundles: store -> export -> verify passes, and each
tampering makes it fail with its own reason (every failure reported, not only the first).

Bundles are built the way a collector builds them: nodes with real Ed25519 keys sign
real chains, the collector's ingest verifies and stores them (and their log leaves),
``collector.export.build_bundle`` signs a checkpoint and writes the proofs.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from attestation import dsse
from attestation.dsse import Envelope
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, GpuWindow, UsageWindow, Workload, statement_bytes
from attestation.verify import BUNDLE_MEDIA_TYPE, Report, verify_bundle
from attestation.verify_cli import main as verify_main
from collector.cli import main as collector_main
from collector.export import ExportError, Selection, build_bundle
from collector.ingest import Accepted, Ingestor
from collector.log import Log
from collector.store.sqlite import SqliteStore

NOW_MS = 1_700_000_000_000
WINDOW_MS = 60_000
FIRST_WINDOW_MS = 1_699_999_980_000
POWER_MW = 300_000
ORIGIN = "gpuaudit/test"


class Node:
    """A node agent in miniature (cf. tests/unit/collector/conftest.py's NodeChain)."""

    def __init__(self, node_id: str, gpus: int = 2, tenant: str = "tenant-a") -> None:
        self.node_id = node_id
        self.signer = Ed25519Signer.generate()
        self.gpus = gpus
        self.tenant = tenant
        self.seq = 0
        self.prev: str | None = None
        self.start_ms = FIRST_WINDOW_MS
        self.energy_mj = [1_000_000_000 * (i + 1) for i in range(gpus)]

    @property
    def key_id(self) -> str:
        return self.signer.key_id

    def window(self, **changes: Any) -> UsageWindow:
        used_mj = POWER_MW * WINDOW_MS // 1000
        gpus = tuple(
            GpuWindow(
                index=i,
                uuid=f"GPU-{self.node_id}-{i}",
                serial=f"{self.node_id}-sn{i}",
                model="NVIDIA H100 80GB HBM3",
                mem_total_bytes=80 * 1024**3,
                power_limit_mw=700_000,
                samples=60,
                energy_start_mj=self.energy_mj[i],
                energy_end_mj=self.energy_mj[i] + used_mj,
                power_mean_mw=POWER_MW,
                power_max_mw=POWER_MW,
                util_mean_permille=900,
                mem_used_max_bytes=60 * 1024**3,
                workloads=(Workload(self.tenant, "k8s_pod", "train/llm-0", 1, 60 * 1024**3, 750, WINDOW_MS),),
            )
            for i in range(self.gpus)
        )
        w = UsageWindow(
            node_id=self.node_id,
            boot_id="boot-1",
            agent_version="0.1.0",
            start_ms=self.start_ms,
            end_ms=self.start_ms + WINDOW_MS,
            sample_interval_ms=1000,
            chain=Chain(key_id=self.key_id, seq=self.seq, prev=self.prev),
            gpus=gpus,
        )
        return msgspec.structs.replace(w, **changes)

    def next(self, **changes: Any) -> Envelope:
        w = self.window(**changes)
        env = dsse.sign(statement_bytes(w), self.signer)
        self.seq, self.prev, self.start_ms = w.chain.seq + 1, env.digest(), w.end_ms
        for g in w.gpus:
            assert g.energy_end_mj is not None
            self.energy_mj[g.index] = g.energy_end_mj
        return env


class Site:
    """A collector with its store, ingest and log."""

    def __init__(self, log_signer: Ed25519Signer | None = None) -> None:
        self.store = SqliteStore(":memory:", now_ms=NOW_MS)
        self.ingestor = Ingestor(self.store, clock_ms=lambda: NOW_MS)
        self.log = Log(self.store, log_signer or Ed25519Signer.generate(), ORIGIN)

    def enroll(self, node: Node) -> Node:
        token = self.store.create_token(3600, NOW_MS)
        self.store.enroll(node.node_id, token, node.signer.public_key().spki_der, "software", NOW_MS)
        return node

    def send(self, node: Node, n: int, **changes: Any) -> None:
        results = self.ingestor.ingest_batch([(node.key_id, node.next(**changes)) for _ in range(n)])
        assert all(isinstance(r, Accepted) for r in results), results

    def bundle(self, sel: Selection | None = None, previous: str | None = None) -> dict[str, Any]:
        return build_bundle(self.store, self.log, sel or Selection(all=True), NOW_MS, previous)


def _verify(doc: dict[str, Any], previous: str | None = None) -> Report:
    return verify_bundle(json.dumps(doc).encode(), previous)


def _reasons(report: Report) -> set[str]:
    return report.reasons()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.store.close()


@pytest.fixture
def honest(site: Site) -> dict[str, Any]:
    """Two nodes, six statements each, interleaved in the log."""
    a, b = site.enroll(Node("node-a")), site.enroll(Node("node-b", tenant="tenant-b"))
    for _ in range(3):
        site.send(a, 2)
        site.send(b, 2)
    return site.bundle()


def _entries_of(doc: dict[str, Any], node_id: str) -> list[int]:
    key_id = next(n["key_id"] for n in doc["nodes"] if n["node_id"] == node_id)
    return [i for i, e in enumerate(doc["entries"]) if e["envelope"]["signatures"][0]["keyid"] == key_id]


# -- end to end ----------------------------------------------------------------------


def test_an_honest_bundle_verifies_with_usage_per_serial_and_tenant(honest: dict[str, Any]) -> None:
    assert honest["media_type"] == BUNDLE_MEDIA_TYPE
    report = _verify(honest)
    assert report.ok, "\n".join(str(f) for f in report.failures)
    assert report.entries == 12 and report.keys == 2
    assert report.checkpoint is not None and report.checkpoint.size == 12
    assert sorted(report.gpus) == ["node-a-sn0", "node-a-sn1", "node-b-sn0", "node-b-sn1"]
    gpu = report.gpus["node-a-sn0"]
    assert gpu.tenants["tenant-a"].gpu_ms == 6 * WINDOW_MS
    energy_mj = 6 * POWER_MW * WINDOW_MS // 1000
    assert gpu.tenants["tenant-a"].energy_mj == energy_mj * 750 // 1000
    assert gpu.tenants["unattributed"].energy_mj == energy_mj - energy_mj * 750 // 1000
    assert gpu.gaps() == []
    assert report.gpus["node-b-sn1"].tenants.keys() == {"tenant-b", "unattributed"}


def test_a_serial_selection_keeps_the_whole_chain_of_its_node(site: Site) -> None:
    a, b = site.enroll(Node("node-a")), site.enroll(Node("node-b"))
    site.send(a, 2)
    for _ in range(2):  # GPU 0 is missing from the next two statements
        site.send(a, 1, gpus=a.window().gpus[1:])
    site.send(a, 2)
    site.send(b, 3)
    doc = site.bundle(Selection(serials=("node-a-sn0",)))
    assert len(doc["entries"]) == 6, "statements between the first and last naming the serial are included"
    assert [n["node_id"] for n in doc["nodes"]] == ["node-a"]
    report = _verify(doc)
    assert report.ok, report.failures
    assert report.gpus["node-a-sn0"].gaps() == [(FIRST_WINDOW_MS + 2 * WINDOW_MS, FIRST_WINDOW_MS + 4 * WINDOW_MS)]
    by_tenant = site.bundle(Selection(tenant="tenant-a", since_ms=FIRST_WINDOW_MS + WINDOW_MS))
    assert len(by_tenant["entries"]) == 5 + 2


def test_consistency_with_an_earlier_checkpoint_verifies(site: Site) -> None:
    a = site.enroll(Node("node-a"))
    site.send(a, 3)
    first = site.bundle()
    site.send(a, 4)
    second = site.bundle(previous=first["log"]["checkpoint"])
    assert second["consistency"]["from_size"] == 3
    report = _verify(second, first["log"]["checkpoint"])
    assert report.ok, report.failures
    assert report.previous is not None and report.previous.size == 3


def test_cli_export_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.db"
    with SqliteStore(db, now_ms=NOW_MS) as store:
        ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
        node = Node("node-a")
        store.enroll(node.node_id, store.create_token(60, NOW_MS), node.signer.public_key().spki_der, "software", 0)
        ingestor.ingest_batch([(node.key_id, node.next()) for _ in range(4)])
    out1, out2 = tmp_path / "b1.json", tmp_path / "b2.json"
    assert collector_main(["export", "--db", str(db), "--serial", "node-a-sn1", "--out", str(out1)]) == 0
    assert "wrote 4 envelopes" in capsys.readouterr().out
    assert verify_main([str(out1)]) == 0
    text = capsys.readouterr().out
    assert "VERIFIED" in text and "node-a-sn1" in text and "tenant-a" in text
    assert collector_main(
        ["export", "--db", str(db), "--all", "--since", "2023-11-14T22:13:00Z", "--out", str(out2),
         "--previous-checkpoint", str(out1)]
    ) == 0  # fmt: skip
    capsys.readouterr()
    assert verify_main([str(out2), "--json", "--previous-checkpoint", str(out1)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert verify_main([str(tmp_path / "missing.json")]) == 3  # a missing file
    with pytest.raises(SystemExit) as exc:
        collector_main(["export", "--db", str(db), "--out", str(out2)])  # no selection
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        collector_main(["export", "--db", str(db), "--all", "--since", "yesterday", "--out", str(out2)])


# -- tampering: each case fails with its own reason ------------------------------------


def _flip_b64(value: str, at: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[at % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_flipped_byte_in_a_payload(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    env = doc["entries"][3]["envelope"]
    env["payload"] = _flip_b64(env["payload"], 200)
    report = _verify(doc)
    assert "bad_signature" in _reasons(report)
    assert any(f.reason == "bad_signature" and f.entry == 3 for f in report.failures)
    assert "not_included" in _reasons(report), "the leaf recomputed from the altered bytes is not in the log"


def test_flipped_byte_in_a_signature(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    sig = doc["entries"][5]["envelope"]["signatures"][0]
    sig["sig"] = _flip_b64(sig["sig"], 10)
    report = _verify(doc)
    assert [f.reason for f in report.failures if f.entry == 5] == ["bad_signature"]


def test_a_dropped_statement(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    idx = _entries_of(doc, "node-a")
    del doc["entries"][idx[2]]
    report = _verify(doc)
    assert _reasons(report) == {"seq_gap"}
    (f,) = report.failures
    assert f.seq == 3 and "skips 1" in f.message


def test_two_reordered_statements(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    i, j = _entries_of(doc, "node-b")[1:3]
    doc["entries"][i], doc["entries"][j] = doc["entries"][j], doc["entries"][i]
    assert _reasons(_verify(doc)) == {"out_of_order"}


def test_an_old_statement_replayed(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    doc["entries"].append(copy.deepcopy(doc["entries"][_entries_of(doc, "node-a")[1]]))
    report = _verify(doc)
    assert _reasons(report) == {"seq_replay"}


def test_a_forked_chain(site: Site) -> None:
    a = site.enroll(Node("node-a"))
    site.send(a, 3)
    # The node signs a second statement with seq 2 (same prev, other content): the
    # collector refused it, a dishonest one might splice it into a bundle.
    fork = a.window(chain=Chain(a.key_id, 2, None))
    doc = site.bundle()
    prev = json.loads(base64.b64decode(doc["entries"][2]["envelope"]["payload"]))["predicate"]["chain"]["prev"]
    forked = msgspec.structs.replace(fork, chain=Chain(a.key_id, 2, prev), start_ms=fork.start_ms - WINDOW_MS,
                                 end_ms=fork.end_ms - WINDOW_MS, boot_id="boot-2")  # fmt: skip
    env = dsse.sign(statement_bytes(forked), a.signer)
    doc["entries"].append({**doc["entries"][2], "envelope": env.to_json()})
    report = _verify(doc)
    assert "fork" in _reasons(report)
    assert "not_included" in _reasons(report), "the forked statement is not in the log either"


def test_a_statement_by_a_revoked_key(site: Site) -> None:
    a = site.enroll(Node("node-a"))
    site.send(a, 5)
    revoked_ms = FIRST_WINDOW_MS + 3 * WINDOW_MS
    assert site.store.revoke_key(a.key_id, revoked_ms)
    report = _verify(site.bundle())
    assert _reasons(report) == {"revoked_key"}
    assert sorted(f.seq for f in report.failures if f.seq is not None) == [3, 4], (
        "statements whose window ends after the revocation fail; earlier ones stand"
    )


def test_a_checkpoint_inconsistent_with_an_earlier_one() -> None:
    log_key = Ed25519Signer.generate()
    first = Site(log_signer=log_key)
    a = first.enroll(Node("node-a"))
    first.send(a, 5)
    earlier = first.bundle()["log"]["checkpoint"]  # size 5: the vendor keeps it
    # Later the same log key signs a rewritten history: node-b's statements instead of node-a's.
    rewritten = Site(log_signer=log_key)
    b = rewritten.enroll(Node("node-b"))
    rewritten.send(b, 6)
    with pytest.raises(ExportError):
        rewritten.bundle(previous=earlier)  # an honest exporter will not prove it
    doc = rewritten.bundle()
    doc["consistency"] = {
        "from_size": 5,
        "proof": [base64.b64encode(h).decode() for h in rewritten.log.consistency_proof(5, 6)],
    }
    report = _verify(doc, earlier)
    assert _reasons(report) == {"inconsistent_checkpoint"}
    assert _verify(doc).ok, "without the earlier checkpoint the rewritten log is self-consistent"
    no_proof = {**doc, "consistency": None}
    assert _reasons(_verify(no_proof, earlier)) == {"missing_consistency_proof"}
    first.store.close()
    rewritten.store.close()


def test_an_inclusion_proof_for_another_leaf(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    doc["entries"][0]["inclusion_proof"] = doc["entries"][1]["inclusion_proof"]
    doc["entries"][0]["leaf_index"] = doc["entries"][1]["leaf_index"]
    report = _verify(doc)
    assert [(f.reason, f.entry) for f in report.failures] == [("not_included", 0)]


def test_a_truncated_bundle(honest: dict[str, Any]) -> None:
    data = json.dumps(honest).encode()
    report = verify_bundle(data[: len(data) // 2])
    assert [f.reason for f in report.failures] == ["malformed_bundle"]
    assert "truncated" in report.failures[0].message


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(media_type="application/json"), "malformed_bundle"),
        (lambda d: d.pop("entries"), "malformed_bundle"),
        (lambda d: d["entries"][0].update(leaf_index="zero"), "malformed_entry"),
        (lambda d: d["entries"][0].update(envelope={"payload": 1}), "malformed_entry"),
        (lambda d: d["nodes"].pop(), "unknown_key"),
        (lambda d: d["nodes"][0].update(key_id="sha256:" + "0" * 64), "key_id_mismatch"),
        (lambda d: d["log"].update(checkpoint=d["log"]["checkpoint"].replace("\n12\n", "\n13\n")),
         "bad_checkpoint_signature"),
        (lambda d: d["log"]["public_key"].update(spki=d["nodes"][0]["spki"]), "unknown_log_key"),
    ],
)  # fmt: skip
def test_other_tampering_is_named(honest: dict[str, Any], mutate: Any, reason: str) -> None:
    doc = copy.deepcopy(honest)
    mutate(doc)
    assert reason in _reasons(_verify(doc))


def test_every_failure_is_reported_not_only_the_first(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    a, b = _entries_of(doc, "node-a"), _entries_of(doc, "node-b")
    sig = doc["entries"][a[0]]["envelope"]["signatures"][0]
    sig["sig"] = _flip_b64(sig["sig"], 3)
    doc["entries"][b[4]]["inclusion_proof"] = doc["entries"][b[3]]["inclusion_proof"]
    doc["entries"].append(copy.deepcopy(doc["entries"][b[1]]))
    report = _verify(doc)
    assert {"bad_signature", "seq_replay"} <= _reasons(report)
    assert any(f.step == "inclusion" and f.entry == b[4] for f in report.failures), report.failures
    assert verify_main_exit(doc) == 1


def verify_main_exit(doc: dict[str, Any]) -> int:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(doc, fh)
    try:
        return verify_main([fh.name])
    finally:
        Path(fh.name).unlink()


# -- JSON that parsers read differently (issue 16) ------------------------------------


def _resigned(doc: dict[str, Any], entry: int, node: Node, mutate: Any) -> dict[str, Any]:
    """``doc`` with entry ``entry``'s payload text mutated and signed again by ``node``'s key:
    what a node (or a collector holding a key) could sign and an old collector accept."""
    doc = copy.deepcopy(doc)
    env = doc["entries"][entry]["envelope"]
    text = base64.b64decode(env["payload"]).decode()
    payload = mutate(text).encode()
    assert payload != text.encode()
    doc["entries"][entry]["envelope"] = dsse.sign(payload, node.signer).to_json()
    return doc


def test_a_duplicated_tenant_signed_by_the_enrolled_key_is_reported(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16: "tenant":"t-hidden","tenant":"t-live" verified (exit 0, reading t-live)
    while other parsers read t-hidden; it is now a bad_schema failure and exit 1."""
    a = site.enroll(Node("node-a"))
    site.send(a, 3)
    doc = _resigned(site.bundle(), 1, a, lambda t: t.replace('"tenant":', '"tenant":"t-hidden","tenant":', 1))
    report = _verify(doc)
    assert [(f.step, f.reason) for f in report.failures if f.entry == 1][:1] == [("signature", "bad_schema")]
    assert any("duplicate member name 'tenant'" in f.message for f in report.failures), report.failures
    assert verify_main_exit(doc) == 1
    assert "bad_schema" in capsys.readouterr().out


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace('"boot_id":"', '"boot_id":"\\ud800', 1),
        lambda t: t.replace('"gpu_ms":', f'"future_ms":{2**53},"gpu_ms":', 1),
        lambda t: t.replace('"predicate":{', '"predicate":{"x":Infinity,', 1),
        lambda t: t.replace('"predicate":{', '"predicate":{"x":[{"y":{"a":1,"a":1}}],', 1),
    ],
    ids=["lone-surrogate", "integer-beyond-2**53", "infinity", "nested-duplicate"],
)
def test_other_payloads_parsers_read_differently_are_bad_schema(site: Site, mutate: Any) -> None:
    a = site.enroll(Node("node-a"))
    site.send(a, 2)
    report = _verify(_resigned(site.bundle(), 0, a, mutate))
    assert ("signature", "bad_schema") in [(f.step, f.reason) for f in report.failures if f.entry == 0]


@pytest.mark.parametrize("field", ["payload", "payloadType", "signatures", "sig", "keyid"])
def test_an_envelope_with_a_duplicate_name_ends_verification(honest: dict[str, Any], field: str) -> None:
    """The envelope's own JSON is held to the same rule: one "payload" shown to this
    verifier and another to someone else's is refused, as the whole bundle."""
    text = json.dumps(honest)
    needle = f'"{field}": '
    assert needle in text
    value = '"AAAA"' if field != "signatures" else "[]"
    report = verify_bundle(text.replace(needle, f"{needle}{value}, {needle}", 1).encode())
    assert [(f.step, f.reason) for f in report.failures] == [("bundle", "malformed_bundle")]
    assert "duplicate member name" in report.failures[0].message


@pytest.mark.parametrize("keyid", [None, "", "unknown"], ids=["absent", "empty", "unknown"])
def test_signatures_without_a_key_id_hint_verify_against_the_enrolled_keys(
    honest: dict[str, Any], keyid: str | None
) -> None:
    """DSSE keyid is an optional, unauthenticated hint: the verifier finds the enrolled key."""
    doc = copy.deepcopy(honest)
    for e in doc["entries"]:
        for s in e["envelope"]["signatures"]:
            if keyid is None:
                del s["keyid"]
            else:
                s["keyid"] = keyid
    report = _verify(doc)
    assert report.ok, "\n".join(str(f) for f in report.failures)
    assert report.entries == 12 and report.keys == 2
    assert verify_main_exit(doc) == 0


def test_a_signature_naming_the_wrong_enrolled_key_still_verifies(honest: dict[str, Any]) -> None:
    doc = copy.deepcopy(honest)
    keys = [n["key_id"] for n in doc["nodes"]]
    for e in doc["entries"]:
        s = e["envelope"]["signatures"][0]
        s["keyid"] = keys[1] if s["keyid"] == keys[0] else keys[0]
    report = _verify(doc)
    assert report.ok, "\n".join(str(f) for f in report.failures)
