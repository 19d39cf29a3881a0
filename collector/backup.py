"""Backup and restore of the collector's state: the store and the keys beside it.

What a backup holds (one folder):

- the store: SQLite through the online backup API (a consistent copy while the collector
  writes), or PostgreSQL through ``pg_dump --format=custom`` of a snapshot exported by a
  repeatable-read transaction, so that what the manifest says of the log is exactly what
  the dump holds;
- the log signing key (``log_key``, ``<db>.log-key.pem``) and the tenant pseudonym key
  (``<db>.pseudonym-key``), mode 0600: without the first, a restored collector cannot sign
  checkpoints that vendors pinning its key accept; without the second, pseudonyms can no
  longer be derived or revealed;
- ``manifest.json``: each file's SHA-256 and size, and the log as the copy holds it (size,
  latest signed checkpoint, statement count, schema version).

Restore checks every file against the manifest, refuses to overwrite a store or a
different key, puts the store and keys in place, then checks the restored log: the log key
verifies the latest checkpoint under the configured origin (``Log.check_identity``), every
stored tile root and the checkpoint's root are recomputed from the leaves (``Log.audit``),
and the checkpoint, log size and statement count are the manifest's.

The backup folder holds the log's private key: keep it where the collector's state is kept
(0700, encrypted at rest) and never hand it to a vendor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from collector.config import CollectorConfig
from collector.errors import CollectorError
from collector.pseudonyms import key_path as pseudonym_key_path

_logger = logging.getLogger(__name__)

FORMAT = "gpuaudit-backup"
VERSION = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "collector.db"
PG_DUMP_FILE = "collector.pgdump"
LOG_KEY_FILE = "log-key.pem"
PSEUDONYM_KEY_FILE = "pseudonym-key"
_PAGES_PER_STEP = 4096  # SQLite backup step: the collector's writes interleave between steps


class BackupError(CollectorError):
    """A backup could not be taken or restored, or a restored store does not check out."""

    reason = "backup"

    def diagnostics(self) -> str:
        return f"{self.reason}: {self}"


@dataclass(frozen=True)
class LogState:
    """The log as one copy of the store holds it."""

    statements: int
    log_size: int
    checkpoint_size: int | None
    checkpoint_note: str | None
    schema_version: int

    def as_json(self) -> dict[str, Any]:
        return {
            "statements": self.statements,
            "log_size": self.log_size,
            "checkpoint_size": self.checkpoint_size,
            "checkpoint_note": self.checkpoint_note,
            "schema_version": self.schema_version,
        }


@dataclass(frozen=True)
class RestoreReport:
    state: LogState
    leaves_audited: int
    files: tuple[str, ...]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state(query: Any) -> LogState:
    """The log state read with ``query(sql) -> first row`` (one connection, one snapshot)."""
    statements = int(query("SELECT COUNT(*) FROM statements")[0])
    log_size = int(query("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM log_leaves")[0])
    version = int(query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0])
    row = query("SELECT tree_size, note FROM checkpoints ORDER BY id DESC LIMIT 1")
    size, note = (int(row[0]), str(row[1])) if row else (None, None)
    return LogState(statements, log_size, size, note, version)


def _key_files(cfg: CollectorConfig) -> dict[str, Path]:
    return {LOG_KEY_FILE: cfg.log_key_path(), PSEUDONYM_KEY_FILE: pseudonym_key_path(cfg.db)}


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"--out {out} exists and is not an empty folder: give a new folder for each backup")
    if not out.parent.is_dir():
        raise BackupError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    out.mkdir(mode=0o700, exist_ok=True)
    os.chmod(out, 0o700)


def _copy_private(src: Path, dst: Path) -> None:
    """``src`` to ``dst`` (0600, fsynced), never through a file others could read."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, src.open("rb") as fh:
        shutil.copyfileobj(fh, out)
        out.flush()
        os.fsync(out.fileno())


# -- backup ------------------------------------------------------------------------


def backup(cfg: CollectorConfig, out: Path, *, now_ms: int | None = None) -> dict[str, Any]:
    """Write a backup of ``cfg``'s store and keys into the new folder ``out``; return the manifest."""
    _prepare_out(out)
    if cfg.db_url is not None:
        store_file, state = _backup_postgres(cfg.db_url, out / PG_DUMP_FILE)
        backend = "postgresql"
    else:
        store_file, state = _backup_sqlite(Path(cfg.db), out / SQLITE_FILE)
        backend = "sqlite"
    files = [store_file]
    for name, path in _key_files(cfg).items():
        if path.exists():
            _copy_private(path, out / name)
            files.append(out / name)
        else:
            _logger.warning("no %s at %s: not in the backup", name, path)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created_ms": now_ms if now_ms is not None else time.time_ns() // 1_000_000,
        "backend": backend,
        "files": {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in files},
        "log": state.as_json(),
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def _backup_sqlite(db: Path, dst: Path) -> tuple[Path, LogState]:
    if not db.exists():
        raise BackupError(f"no store at {db}: give the collector's --db (or --config)")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(dst, isolation_level=None)
        try:
            src.backup(out, pages=_PAGES_PER_STEP)
            # One self-contained file: no -wal beside it.
            out.execute("PRAGMA journal_mode = DELETE")
            state = _state(lambda sql: out.execute(sql).fetchone())
            (check,) = out.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"the copy of {db} fails SQLite's quick_check: {check}")
        finally:
            out.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {db}: {exc}") from exc
    finally:
        src.close()
    os.chmod(dst, 0o600)
    return dst, state


def _search_path(url: str) -> str | None:
    """The schema a store URL selects with ``options=-csearch_path=NAME``, if any."""
    for opt in parse_qs(urlsplit(url).query).get("options", []):
        for part in unquote(opt).split():
            if part.startswith(("-csearch_path=", "search_path=")):
                return part.split("=", 1)[1].split(",")[0].strip('"')
    return None


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not installed: install the PostgreSQL client of the server's major version "
            "(Debian: apt-get install postgresql-client)"
        )
    return path


def _backup_postgres(url: str, dst: Path) -> tuple[Path, LogState]:
    import psycopg

    from collector.store.postgres import redact

    pg_dump = _pg_tool("pg_dump")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # A repeatable-read snapshot, exported: pg_dump dumps exactly what is read here.
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
            state = _state(lambda sql: conn.execute(sql).fetchone())
            cmd = [pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}"]
            schema = _search_path(url)
            if schema:
                cmd.append(f"--schema={schema}")
            cmd += ["--file", str(dst), "--dbname", url]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            conn.execute("ROLLBACK")
    except psycopg.Error as exc:
        raise BackupError(f"cannot back up {redact(url)}: {exc}") from exc
    if p.returncode != 0:
        raise BackupError(f"pg_dump of {redact(url)} failed: {p.stderr.strip()[-2000:]}")
    os.chmod(dst, 0o600)
    return dst, state


# -- restore -----------------------------------------------------------------------


def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of the backup in ``src``, every file checked against it."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise BackupError(f"{src} holds no {MANIFEST}: not a gpuaudit backup folder") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src / MANIFEST} cannot be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BackupError(f"{src / MANIFEST} is not a {FORMAT} v{VERSION} manifest")
    for name, meta in manifest["files"].items():
        path = src / name
        if not path.is_file():
            raise BackupError(f"the backup lacks {name}, which its manifest lists")
        if _sha256(path) != meta["sha256"]:
            raise BackupError(f"{path} is not the file the backup wrote (SHA-256 differs): the backup is damaged")
    return manifest


def restore(cfg: CollectorConfig, src: Path) -> RestoreReport:
    """Restore the backup in ``src`` to ``cfg``'s store (which must not exist yet, or be an
    empty PostgreSQL database or schema) and key paths, then check the restored log."""
    manifest = read_manifest(src)
    backend = manifest["backend"]
    if (backend == "postgresql") != (cfg.db_url is not None):
        raise BackupError(f"the backup is of a {backend} store; the configured store is not")
    keys = {name: path for name, path in _key_files(cfg).items() if name in manifest["files"]}
    for name, path in keys.items():  # before anything is written
        if path.exists() and _sha256(path) != manifest["files"][name]["sha256"]:
            raise BackupError(f"{path} exists and is not the backup's {name}: move it away first")
    # The restored log is checked with the log key it will be signed with: the one already at
    # the target (the same as the backup's, checked above), or the backup's.
    log_key = cfg.log_key_path()
    if not log_key.exists() and LOG_KEY_FILE in manifest["files"]:
        log_key = src / LOG_KEY_FILE
    if cfg.db_url is not None:
        _restore_postgres(src / PG_DUMP_FILE, cfg.db_url)
        try:
            state, leaves = check_restored(dataclasses.replace(cfg, log_key=log_key), manifest["log"])
        except BackupError as exc:
            raise BackupError(f"{exc}; the restored database is left for inspection: drop it before retrying") from exc
    else:
        db = Path(cfg.db)
        tmp = _restore_sqlite(src / SQLITE_FILE, db)
        try:
            state, leaves = check_restored(dataclasses.replace(cfg, db=tmp, log_key=log_key), manifest["log"])
        except BaseException:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                leftover.unlink(missing_ok=True)
            raise
        os.replace(tmp, db)
    for name, path in keys.items():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy_private(src / name, path)
    return RestoreReport(state, leaves, tuple(sorted(manifest["files"])))


def _restore_sqlite(backup_file: Path, db: Path) -> Path:
    """The backup's store copied next to ``db`` under a temporary name (returned); the caller
    checks it and renames it into place."""
    if db.exists():
        raise BackupError(f"a store exists at {db}: restore into a new path (or move that store away first)")
    if not db.parent.is_dir():
        raise BackupError(f"the folder of the store {db} does not exist; create it first")
    tmp = db.with_name(f".{db.name}.restoring")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(out)
            (check,) = out.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"the backup's store fails SQLite's quick_check: {check}")
        finally:
            out.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot restore {backup_file}: {exc}") from exc
    finally:
        src.close()
    os.chmod(tmp, 0o600)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    return tmp


def _restore_postgres(dump: Path, url: str) -> None:
    import psycopg

    from collector.store.postgres import redact

    pg_restore = _pg_tool("pg_restore")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    except psycopg.Error as exc:
        raise BackupError(f"cannot reach {redact(url)}: {exc}") from exc
    if row and row[0]:
        raise BackupError(f"{redact(url)} already holds a store: restore into an empty database")
    cmd = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    p = subprocess.run([*cmd, "--dbname", url, str(dump)], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BackupError(f"pg_restore into {redact(url)} failed: {p.stderr.strip()[-2000:]}")


def _open(cfg: CollectorConfig) -> Any:
    if cfg.db_url is not None:
        from collector.store.postgres import PostgresStore

        return PostgresStore(cfg.db_url)
    from collector.store.sqlite import SqliteStore

    return SqliteStore(cfg.db)


def _store_state(store: Any) -> LogState:
    latest = store.latest_checkpoint()
    return LogState(
        statements=store.statement_count(),
        log_size=store.log_size(),
        checkpoint_size=latest.tree_size if latest is not None else None,
        checkpoint_note=latest.note if latest is not None else None,
        schema_version=store.schema_version(),
    )


def check_restored(cfg: CollectorConfig, expected: dict[str, Any]) -> tuple[LogState, int]:
    """The restored store's log state and the number of leaves audited. The state must be
    ``expected`` (the manifest's); the latest checkpoint must be signed by the configured log
    key under the configured origin; every stored tile root and the checkpoint's root must be
    what the leaves hash to."""
    from attestation.keys import Ed25519Signer
    from collector.log import Log, LogError

    store = _open(cfg)
    try:
        state = _store_state(store)
        if state.as_json() != expected:
            raise BackupError(f"the restored store is not the backup's: restored {state.as_json()}, backup {expected}")
        try:
            if cfg.log_key_path().exists():
                Log.open(cfg, store).check_identity()
            elif state.checkpoint_note is not None:
                raise BackupError(f"no log key at {cfg.log_key_path()}, and the backup held none: restore the key too")
            # The audit reads leaves, tile roots and the checkpoint's body; it signs nothing.
            audit = Log(store, Ed25519Signer.generate(), "audit").audit()
        except LogError as exc:
            raise BackupError(f"the restored log does not check out: {exc}") from exc
    finally:
        store.close()
    if not audit.ok:
        raise BackupError(
            f"the restored log's leaves do not hash to its stored roots: bad tiles {list(audit.bad_tiles)}, "
            f"latest checkpoint's root {'matches' if audit.checkpoint_ok else 'does not match'}"
        )
    return state, audit.leaves
