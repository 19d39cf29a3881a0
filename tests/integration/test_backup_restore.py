"""Backup and restore of the collector's state (collector/backup.py), through the CLI, on
SQLite and on PostgreSQL: a store filled by real ingest and checkpointed by its log is backed
up, restored into a fresh location, and then

- the restored log's heads are the original's (root, latest checkpoint, committed heads);
- an export from the restored store verifies with gpuaudit-verify pinned to the ORIGINAL log
  key (so the key came back too), and its new checkpoint extends the backed-up one;
- a damaged backup, or a key at the target that is not the backup's, is refused before
  anything is written.

PostgreSQL: skips when no server is reachable or pg_dump/pg_restore are absent.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.signing import ChainSigner
from agent.spool import Spool
from attestation import verify_cli
from attestation.keys import Ed25519Signer
from collector import cli
from collector.config import load_collector_config
from collector.ingest import Ingestor
from collector.log import Log
from collector.pseudonyms import key_path, load_or_create_key
from core.pipeline import windows_from_records
from core.sim.scenarios import demo_site
from core.trace import parse_lines

NODES, WINDOWS = 3, 8


def _fill(cfg: Any) -> None:
    """NODES nodes' first WINDOWS statements, ingested; a checkpoint after each minute."""
    from collector.backup import _open

    records = demo_site(seed=5, hours=WINDOWS / 60 + 0.05, sample_interval_s=10, training_nodes=NODES,
                        inference_nodes=0, slurm_nodes=0)  # fmt: skip
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    by_node: dict[str, list[Any]] = {}
    for w in windows_from_records(parse_lines(lines)):
        by_node.setdefault(w.node_id, []).append(w)
    load_or_create_key(key_path(cfg.db))  # as `serve` does
    store = _open(cfg)
    try:
        now = time.time_ns() // 1_000_000
        spool = Spool(":memory:")
        chains = {}
        for node in by_node:
            signer = Ed25519Signer.generate()
            store.enroll(node, store.create_token(60, now), signer.public_key().spki_der, "software", now)
            chains[node] = ChainSigner(signer, spool)
        ingestor = Ingestor(store)
        log = Log.open(cfg, store)
        for i in range(WINDOWS):
            batch = [(chains[n].signer.key_id, chains[n].sign(ws[i])[1]) for n, ws in by_node.items()]
            assert all(r.accepted for r in ingestor.ingest_batch(batch))
            log.checkpoint(now + i)
    finally:
        store.close()


def _heads(cfg: Any) -> dict[str, Any]:
    from collector.backup import _open

    store = _open(cfg)
    try:
        latest = store.latest_checkpoint()
        log = Log.open(cfg, store)
        log.sync()
        size, heads = store.committed_heads()
        return {
            "root": log.root(),
            "log_size": store.log_size(),
            "checkpoint": latest.note,
            "committed_heads": (size, sorted(heads, key=lambda h: h.key_id)),
            "statements": store.statement_count(),
        }
    finally:
        store.close()


def _cli(*args: str) -> int:
    return cli.main(["-q", *args])


class Site:
    """One collector's state: a config file naming the store and the key paths."""

    def __init__(self, root: Path, db_url: str | None) -> None:
        root.mkdir()
        self.root = root
        self.config = root / "collector.toml"
        lines = [f'db = "{root / "collector.db"}"', 'collector_id = "site-1"', 'log_origin = "log.test/gpuaudit"']
        if db_url:
            lines.append(f'db_url = "{db_url}"')
        self.config.write_text("\n".join(lines) + "\n")
        self.cfg, _ = load_collector_config(self.config, {})


def _postgres_server() -> str:
    import os

    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'gpuaudit[postgres]')")
    url = os.environ.get("GPUAUDIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL server reachable at {url} (set GPUAUDIT_TEST_POSTGRES_URL): {exc}")
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} absent (Debian: apt-get install postgresql-client)")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def sites(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Site, Site]]:
    """(original, restored): two collectors' state, the second's store not there yet. On
    PostgreSQL the original is a fresh schema and the target a fresh database (a dump keeps
    its schema's name, so it is restored into another database under the same name)."""
    if request.param == "sqlite":
        yield Site(tmp_path / "a", None), Site(tmp_path / "b", None)
        return
    import psycopg

    server = _postgres_server()
    schema, database = f"gpuaudit_bk_{secrets.token_hex(5)}", f"gpuaudit_restore_{secrets.token_hex(5)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE DATABASE {database}")
    option = f"?options=-csearch_path%3D{schema}"
    target = server.rsplit("/", 1)[0] + f"/{database}"
    try:
        yield Site(tmp_path / "a", server + option), Site(tmp_path / "b", target + option)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_a_restored_store_exports_what_verifies_under_the_original_log_key(
    sites: tuple[Site, Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original, restored = sites
    _fill(original.cfg)
    assert _cli("log", "public-key", "--config", str(original.config)) == 0
    pinned = tmp_path / "log-key.pub.pem"
    pinned.write_text(capsys.readouterr().out)
    before = _heads(original.cfg)
    assert before["statements"] == NODES * WINDOWS and before["checkpoint"] is not None

    backup = tmp_path / "backup"
    assert _cli("backup", "--config", str(original.config), "--out", str(backup)) == 0
    manifest = json.loads((backup / "manifest.json").read_text())
    assert set(manifest["files"]) == {"collector.db" if original.cfg.db_url is None else "collector.pgdump",
                                      "log-key.pem", "pseudonym-key"}  # fmt: skip
    assert manifest["log"]["log_size"] == NODES * WINDOWS
    assert manifest["log"]["checkpoint_note"] == before["checkpoint"]
    assert (backup / "log-key.pem").stat().st_mode & 0o077 == 0, "the backup's copy of the private key is 0600"

    assert _cli("restore", "--config", str(restored.config), "--from", str(backup)) == 0
    assert "leaves audited" in capsys.readouterr().out
    assert restored.cfg.log_key_path().read_bytes() == original.cfg.log_key_path().read_bytes()
    assert _heads(restored.cfg) == before, "the restored log's root, checkpoint and committed heads are the original's"

    # What a vendor gets from the restored collector verifies under the key pinned before.
    bundle = tmp_path / "bundle.json"
    assert _cli("export", "--config", str(restored.config), "--all", "--out", str(bundle)) == 0
    capsys.readouterr()
    cp = tmp_path / "backed-up-checkpoint.txt"
    cp.write_text(before["checkpoint"])
    code = verify_cli.main([str(bundle), "--log-key", str(pinned), "--previous-checkpoint", str(cp)])
    out = capsys.readouterr().out
    assert code == 0, f"gpuaudit-verify refused the restored store's export:\n{out}"
    assert f"{NODES * WINDOWS} envelopes, {NODES} enrolled keys" in out and "VERIFIED" in out, out
    assert "pinned" in out or "--log-key" in out, out


def test_a_damaged_backup_or_a_foreign_key_is_refused_before_anything_is_written(
    sites: tuple[Site, Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original, restored = sites
    _fill(original.cfg)
    backup = tmp_path / "backup"
    assert _cli("backup", "--config", str(original.config), "--out", str(backup)) == 0
    store_file = next(backup / n for n in ("collector.db", "collector.pgdump") if (backup / n).exists())

    # A key at the target that is not the backup's: nothing is restored.
    restored.cfg.log_key_path().write_text("not the backup's key\n")
    assert _cli("restore", "--config", str(restored.config), "--from", str(backup)) == 1
    assert "move it away first" in capsys.readouterr().err
    restored.cfg.log_key_path().unlink()

    # One byte of the store changed: the manifest's SHA-256 catches it.
    pristine = store_file.read_bytes()
    data = bytearray(pristine)
    data[len(data) // 2] ^= 0xFF
    store_file.write_bytes(bytes(data))
    assert _cli("restore", "--config", str(restored.config), "--from", str(backup)) == 1
    assert "damaged" in capsys.readouterr().err
    assert not Path(restored.cfg.db).exists() and not restored.cfg.log_key_path().exists()

    # A leaf edited in the backup, its manifest rewritten to match: the audit of the restored
    # log finds it (its tile no longer hashes to the latest checkpoint's root).
    if original.cfg.db_url is None:
        import hashlib
        import sqlite3

        store_file.write_bytes(pristine)
        conn = sqlite3.connect(store_file)
        conn.execute("UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 5", (b"\x00" * 32,))
        conn.commit()
        conn.close()
        manifest = json.loads((backup / "manifest.json").read_text())
        manifest["files"]["collector.db"]["sha256"] = hashlib.sha256(store_file.read_bytes()).hexdigest()
        (backup / "manifest.json").write_text(json.dumps(manifest))
        assert _cli("restore", "--config", str(restored.config), "--from", str(backup)) == 1
        err = capsys.readouterr().err
        assert "do not hash to its stored roots" in err and "does not match" in err, err
        assert not Path(restored.cfg.db).exists(), "a store that fails its checks is not left in place"
        assert not list(Path(restored.cfg.db).parent.glob(".collector.db.restoring*"))

    # And a backup never overwrites one already there.
    assert _cli("backup", "--config", str(original.config), "--out", str(backup)) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_backup_of_a_missing_store_and_restore_from_a_missing_folder_are_environment_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("backup", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "bk")) == 3
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "bk").exists(), "nothing is created for a backup that cannot be taken"
    assert _cli("restore", "--db", str(tmp_path / "new.db"), "--from", str(tmp_path / "absent")) == 3
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()
