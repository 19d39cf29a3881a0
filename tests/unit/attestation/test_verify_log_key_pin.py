"""``gpuaudit-verify --log-key``: the vendor pins the collector's log key instead of trusting
the one inside the bundle, directly or through an earlier bundle given as
``--previous-checkpoint``. A bundle re-signed under another log key passes trust on first
use but fails a pinned verification with ``log_key_mismatch``."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from test_verify_tamper import NOW_MS, Node

from attestation.checkpoint import Checkpoint, parse_checkpoint_body, parse_note, sign_checkpoint
from attestation.keys import Ed25519Signer
from attestation.verify import PinnedLogKey, verify_bundle
from attestation.verify_cli import main as verify_main
from attestation.verify_cli import read_log_key
from collector.cli import main as collector_main
from collector.ingest import Ingestor
from collector.store.sqlite import SqliteStore


def _collector(tmp_path: Path, statements: int = 3) -> Path:
    db = tmp_path / "collector.db"
    with SqliteStore(db, now_ms=NOW_MS) as store:
        node = Node("node-a")
        store.enroll(node.node_id, store.create_token(60, NOW_MS), node.signer.public_key().spki_der, "software", 0)
        Ingestor(store, clock_ms=lambda: NOW_MS).ingest_batch([(node.key_id, node.next()) for _ in range(statements)])
    return db


def _export(db: Path, out: Path) -> dict[str, Any]:
    assert collector_main(["export", "--db", str(db), "--all", "--out", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_bytes())
    return doc


def _public_key_file(db: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    capsys.readouterr()
    assert collector_main(["log", "public-key", "--db", str(db)]) == 0
    out.write_text(capsys.readouterr().out)
    return out


def _resigned(doc: dict[str, Any], signer: Ed25519Signer) -> dict[str, Any]:
    """The same bundle with its checkpoint re-signed, and its log key replaced, by ``signer``:
    what someone holding another key (not the collector's) can produce."""
    log = doc["log"]
    cp = parse_checkpoint_body(parse_note(log["checkpoint"])[0])
    note = sign_checkpoint(Checkpoint(cp.origin, cp.size, cp.root), log["origin"], signer).note
    spki = base64.b64encode(signer.public_key().spki_der).decode("ascii")
    return {**doc, "log": {**log, "checkpoint": note, "public_key": {"algorithm": "ed25519", "spki": spki}}}


def _verify_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = verify_main([*args, "--json"])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, report


def test_a_bundle_verifies_against_the_pinned_log_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _collector(tmp_path)
    _export(db, tmp_path / "b.json")  # the collector's log key exists once it has signed a checkpoint
    key = _public_key_file(db, tmp_path / "log.pub", capsys)
    assert key.read_text().startswith("-----BEGIN PUBLIC KEY-----"), key.read_text()
    capsys.readouterr()
    assert verify_main([str(tmp_path / "b.json"), "--log-key", str(key)]) == 0
    out = capsys.readouterr().out
    assert f"log key pinned by --log-key {key}" in out, out
    assert "trusted on first use" not in out
    # Without a pin the report says the key was trusted on first use.
    assert verify_main([str(tmp_path / "b.json")]) == 0
    assert "trusted on first use" in capsys.readouterr().out


def test_a_bundle_resigned_under_another_log_key_fails_only_when_pinned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _collector(tmp_path)
    honest = _export(db, tmp_path / "b.json")
    key = _public_key_file(db, tmp_path / "log.pub", capsys)
    forged = _resigned(honest, Ed25519Signer.generate())
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    code, report = _verify_json([str(path)], capsys)
    assert code == 0, "trust on first use cannot tell the forged key from the collector's (why pinning exists)"
    code, report = _verify_json([str(path), "--log-key", str(key)], capsys)
    assert code == 1
    reasons = {f["reason"] for f in report["failures"]}
    assert "log_key_mismatch" in reasons, report["failures"]
    assert "unknown_log_key" in reasons, "the checkpoint must be checked with the pinned key, not the bundle's"
    assert report["log_key_pinned_by"] == [f"--log-key {key}"]


def test_an_earlier_bundle_pins_the_log_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _collector(tmp_path)
    first = _export(db, tmp_path / "first.json")
    later = _resigned(first, Ed25519Signer.generate())
    (tmp_path / "later.json").write_text(json.dumps(later))
    earlier = ["--previous-checkpoint", str(tmp_path / "first.json")]
    code, report = _verify_json([str(tmp_path / "later.json"), *earlier], capsys)
    assert code == 1
    mismatch = [f for f in report["failures"] if f["reason"] == "log_key_mismatch"]
    assert mismatch and "the earlier bundle" in mismatch[0]["message"], report["failures"]
    # The honest next bundle from the same collector passes with the same pin.
    code, report = _verify_json([str(tmp_path / "first.json"), *earlier], capsys)
    assert code == 0, report["failures"]
    assert report["log_key_pinned_by"] == [f"the earlier bundle {tmp_path / 'first.json'}"]


def test_the_pin_may_be_a_bundle_you_confirmed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _collector(tmp_path)
    _export(db, tmp_path / "confirmed.json")
    pinned = read_log_key(tmp_path / "confirmed.json")
    report = verify_bundle((tmp_path / "confirmed.json").read_bytes(), pinned_log_keys=(PinnedLogKey(pinned, "x"),))
    assert report.ok and report.log_key_pinned_by == ["x"], [str(f) for f in report.failures]
    other = Ed25519Signer.generate().public_key()
    report = verify_bundle((tmp_path / "confirmed.json").read_bytes(), pinned_log_keys=(PinnedLogKey(other, "y"),))
    assert "log_key_mismatch" in report.reasons()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the log key"),
        (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n", "private key"),
        (b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n", "not a usable PEM public key"),
        (b"ssh-ed25519 AAAA", "neither a PEM public key"),
        (b'{"log": {}}', "not a bundle with log.public_key.spki"),
    ],
)
def test_an_unusable_log_key_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    db = _collector(tmp_path)
    _export(db, tmp_path / "b.json")
    key = tmp_path / "log.pub"
    if content is not None:
        key.write_bytes(content)
    capsys.readouterr()
    # A file that is not there is the environment's problem (3); one that is not a log key, usage (2).
    assert verify_main([str(tmp_path / "b.json"), "--log-key", str(key)]) == (3 if content is None else 2)
    assert message in capsys.readouterr().err


def test_public_key_refuses_a_collector_without_a_log_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _collector(tmp_path)
    assert not (tmp_path / "collector.db.log-key.pem").exists()
    capsys.readouterr()
    assert collector_main(["log", "public-key", "--db", str(db)]) == 3  # a missing file
    assert "no log key" in capsys.readouterr().err
