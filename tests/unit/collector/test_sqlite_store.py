"""SQLite's own side of the store: its migrations, the file's durability settings, and how
it fails to open. The contract both backends keep is tests/unit/collector/test_store_contract.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.errors import MigrationError, SchemaVersionError, StoreError
from collector.store.sqlite import MIGRATIONS, SqliteStore, migrate, schema_version, split_script

NOW_MS = 1_700_000_000_000


# -- migrations and the file ------------------------------------------------


def test_migrations_apply_to_a_new_database(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "c.db", now_ms=NOW_MS) as store:
        assert store.schema_version() == len(MIGRATIONS)
    conn = sqlite3.connect(tmp_path / "c.db")
    versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1)), "every migration must be recorded once, in order"
    assert {"join_tokens", "node_keys", "chain_heads", "statements", "conflicts", "refusals", "findings"} <= tables


def test_file_store_is_wal_with_full_sync(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "c.db") as store:
        conn = store._c()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # 2 = FULL: a commit, and so an ack, survives power loss.
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError) as info:
        SqliteStore(path)
    assert info.value.reason == "schema_too_new"
    assert "newer gpuaudit-collector" in info.value.diagnostics()
    conn = sqlite3.connect(path)
    assert schema_version(conn) == len(MIGRATIONS) + 1
    conn.close()


def test_failed_migration_rolls_back_to_the_previous_version() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrations = ("CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER); CREATE TABLE broken (;")
    with pytest.raises(MigrationError) as info:
        migrate(conn, migrations, NOW_MS)
    assert "version 2" in str(info.value)
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "a" in tables and "b" not in tables, "a failed migration must leave no half-applied schema"
    assert schema_version(conn) == 1


def test_split_script_keeps_semicolons_inside_literals_and_comments() -> None:
    script = "CREATE TABLE t (x TEXT DEFAULT ';'); -- a; comment\nINSERT INTO t VALUES ('a;b');\n"
    assert split_script(script) == [
        "CREATE TABLE t (x TEXT DEFAULT ';');",
        "-- a; comment\nINSERT INTO t VALUES ('a;b');",
    ]


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(tmp_path / "nope" / "c.db")


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        SqliteStore(path)
