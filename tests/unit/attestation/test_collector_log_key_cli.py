"""``gpuaudit-collector log ...`` and ``key ...`` against a real store file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from test_verify_tamper import NOW_MS, Node

from attestation.checkpoint import parse_checkpoint_body, parse_note
from attestation.merkle import verify_consistency, verify_inclusion
from collector.cli import main as collector_main
from collector.ingest import Ingestor, Refused
from collector.store.sqlite import SqliteStore


def _db_with_statements(tmp_path: Path, n: int) -> tuple[Path, Node]:
    db = tmp_path / "c.db"
    with SqliteStore(db, now_ms=NOW_MS) as store:
        node = Node("node-a")
        store.enroll(node.node_id, store.create_token(60, NOW_MS), node.signer.public_key().spki_der, "software", 0)
        Ingestor(store, clock_ms=lambda: NOW_MS).ingest_batch([(node.key_id, node.next()) for _ in range(n)])
    return db, node


def _hashes(doc: dict[str, object], key: str) -> list[bytes]:
    value = doc[key]
    assert isinstance(value, list)
    return [base64.b64decode(h) for h in value]


def test_log_checkpoint_inclusion_and_consistency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, node = _db_with_statements(tmp_path, 5)
    assert collector_main(["log", "checkpoint", "--db", str(db)]) == 0
    note = capsys.readouterr().out
    cp = parse_checkpoint_body(parse_note(note)[0])
    assert cp.size == 5, f"the first checkpoint must cover the 5 stored statements:\n{note}"

    assert collector_main(["log", "inclusion", "--db", str(db), "--key", node.key_id, "--seq", "3"]) == 0
    inc = json.loads(capsys.readouterr().out)
    assert (inc["leaf_index"], inc["tree_size"]) == (3, 5)
    verify_inclusion(base64.b64decode(inc["leaf_hash"]), 3, 5, _hashes(inc, "proof"), cp.root)

    assert collector_main(["log", "inclusion", "--db", str(db), "--leaf-index", "7"]) == 1
    assert "not in a signed tree" in capsys.readouterr().err

    # More statements, a new checkpoint, and a consistency proof from the old one.
    with SqliteStore(db, now_ms=NOW_MS) as store:
        Ingestor(store, clock_ms=lambda: NOW_MS).ingest_batch([(node.key_id, node.next()) for _ in range(3)])
    assert collector_main(["log", "checkpoint", "--db", str(db), "--sign"]) == 0
    cp8 = parse_checkpoint_body(parse_note(capsys.readouterr().out)[0])
    assert cp8.size == 8
    assert collector_main(["log", "consistency", "--db", str(db), "--from", "5"]) == 0
    con = json.loads(capsys.readouterr().out)
    assert (con["from_size"], con["to_size"]) == (5, 8)
    verify_consistency(5, 8, _hashes(con, "proof"), cp.root, cp8.root)


def test_key_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, node = _db_with_statements(tmp_path, 1)
    assert collector_main(["key", "list", "--db", str(db), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["key_id"] == node.key_id and listed["revoked_ms"] is None and listed["assurance"] == "software"

    assert collector_main(["key", "revoke", node.key_id, "--db", str(db), "--reason", "node decommissioned"]) == 0
    assert "revoked key" in capsys.readouterr().out
    assert collector_main(["key", "revoke", node.key_id, "--db", str(db)]) == 0
    assert "already revoked" in capsys.readouterr().out
    assert collector_main(["key", "revoke", "sha256:" + "0" * 64, "--db", str(db)]) == 1
    assert "not enrolled" in capsys.readouterr().err

    assert collector_main(["key", "list", "--db", str(db)]) == 0
    assert "revoked at" in capsys.readouterr().out
    # The collector refuses what the revoked key signs from now on.
    with SqliteStore(db, now_ms=NOW_MS) as store:
        (res,) = Ingestor(store, clock_ms=lambda: NOW_MS).ingest_batch([(node.key_id, node.next())])
    assert isinstance(res, Refused) and res.reason == "revoked_key", res
